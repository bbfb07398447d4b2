"""The local stack: `fraudsys local up | replay | localstack-deploy` and `fraudsys demo`."""

import shutil
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fraudsys_cli.common import (
    ApiWorkers,
    PublishMode,
    PublishModeOption,
    RunDir,
    app,
    console,
    sigterm_as_interrupt,
    stack_config,
    step,
)

local_app = typer.Typer(no_args_is_help=True, help="The local stack on 127.0.0.1 (no Docker, no cloud).")
app.add_typer(local_app, name="local")


@local_app.command("up")
def local_up(
    run_dir: RunDir = Path("data/local"),
    api_port: int = 8080,
    redis_port: int = 6380,
    kafka_port: int = 19092,
    s3_port: int = 5055,
    mlflow_port: int = 5050,
    mlflow: Annotated[bool, typer.Option(help="also start the MLflow server")] = True,
    api_workers: ApiWorkers = 1,
    publish_mode: PublishModeOption = PublishMode.background,
    champion: Annotated[
        bool,
        typer.Option(
            help="serve a champion from the first request: the local S3's, else --models-from's, "
            "else the stack MLflow's, else a quick one trained now"
        ),
    ] = True,
    models_from: Annotated[
        list[Path] | None,
        typer.Option(help="local model store(s) to take the champion from (default: data/model_store)"),
    ] = None,
    deadline_ms: Annotated[
        float,
        typer.Option(
            min=1,
            help="each request's deadline from its arrival at the API: a request that cannot be "
            "answered by then is answered 503 with Retry-After at once, or dropped unscored",
        ),
    ] = 250.0,
    max_queue: Annotated[
        int, typer.Option(min=1, help="requests each API process queues at most; beyond, a 503")
    ] = 128,
    broker_roll_records: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="restart the in-memory broker (a new, empty log) once it holds this many records, "
            "sending it again what is not yet consumed (the producer journal): bounds its memory; "
            "0: never (it grows while the stack is up); default: the stack's, 100,000",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Start redis, the Kafka broker, S3 (moto), MLflow, the local API, the updater's poller and
    the archiver's (the event lake)."""
    from local_stack.demo import serve_forever
    from local_stack.services import ServiceError
    from local_stack.stack import LocalStack

    sigterm_as_interrupt()
    cfg = stack_config(
        run_dir,
        api_port,
        redis_port,
        kafka_port,
        s3_port,
        mlflow_port,
        mlflow,
        api_workers,
        publish_mode.value,
        champion=champion,
        champion_model_stores=tuple(models_from or [Path("data/model_store")]),
        request_deadline_ms=deadline_ms,
        api_max_queue=max_queue,
        # None: StackConfig's default (the CLI does not import the stack: the training image lacks it)
        **({} if broker_roll_records is None else {"broker_roll_records": broker_roll_records or None}),
    )
    stack = LocalStack(cfg, on_step=step)
    try:
        with console.status("starting the local stack"):
            stack.up()
    except ServiceError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    try:
        for name, url in stack.endpoints().items():
            console.print(f"{name:>7}: {url}")
        if stack.champion_report is not None:
            console.print(f" model: {stack.champion_report.message}", soft_wrap=True)
        console.print(f" store: {stack.store_report}", soft_wrap=True)
        console.print(
            "models: `uv run fraudsys pipeline --local` trains, registers and publishes a new one "
            "to this stack (no credentials needed); Ctrl-C stops everything",
            soft_wrap=True,
        )
        serve_forever(stack)
    finally:
        with console.status("stopping"):
            stack.down()


@local_app.command("replay")
def local_replay(
    input_csv: Annotated[
        Path | None, typer.Option("--input", help="CSV in the Kaggle schema (default: simulate)")
    ] = None,
    bootstrap: Annotated[str, typer.Option(help="Kafka bootstrap servers")] = "127.0.0.1:19092",
    rate: Annotated[float, typer.Option(help="transactions per second")] = 1000.0,
    label_delay: Annotated[int, typer.Option(help="seconds from a fraud to its label")] = 7 * 86400,
    limit: Annotated[int | None, typer.Option(help="send at most this many transactions")] = None,
    seed: int = 42,
    follow: Annotated[
        bool,
        typer.Option(
            help="stay within a day (event time) of what the updater (consumer group "
            "fraudsys-updater) has applied, so that no partition's events fall behind their keys' "
            "retention; --no-follow when no updater consumes the broker"
        ),
    ] = True,
    run_dir: Annotated[
        Path, typer.Option(help="the local stack's folder: its producer journal is <run-dir>/journal")
    ] = Path("data/local"),
    journal: Annotated[
        bool,
        typer.Option(
            help="journal every record in <run-dir>/journal before sending it (when the stack made "
            "that folder: `durable_broker`), so that the stack's relay sends again what a broker lost"
        ),
    ] = True,
) -> None:
    """Produce a transaction stream (and delayed labels) into the broker at a given rate."""
    from rich.progress import Progress

    from handlers.bootstrap import kafka_publisher
    from local_stack.replay import replay
    from local_stack.stack import updater_progress

    if input_csv is not None:
        from training.data.kaggle import read_transactions_csv

        frame = read_transactions_csv(input_csv)
    else:
        from training.data.simulator import SimulatorConfig
        from training.data.simulator import simulate as run

        frame = run(SimulatorConfig(seed=seed))
    if limit is not None:
        frame = frame.sort_values(["event_time", "trans_num"]).head(limit)
    journal_dir = run_dir / "journal"
    if journal and not journal_dir.is_dir():
        console.print(f"no journal: {journal_dir} does not exist (a broker killed can lose this replay)")
    publisher = kafka_publisher(bootstrap, journal_dir if journal and journal_dir.is_dir() else None)
    applied = updater_progress(bootstrap) if follow else None
    try:
        with Progress(console=console) as progress:
            task = progress.add_task("replaying", total=len(frame))
            stats = replay(
                frame,
                lambda events: publisher.publish(events, timeout=10),
                rate,
                label_delay,
                on_progress=lambda tx, _labels: progress.update(task, completed=tx),
                applied=applied,
            )
    except TimeoutError as exc:
        console.print(f"[red]{exc}[/red] (is `fraudsys local up` running? --no-follow replays without it)")
        raise typer.Exit(1) from exc
    finally:
        publisher.close()
        if applied is not None:
            applied.close()
    console.print(
        f"{stats.transactions:,} transactions and {stats.labels:,} labels in {stats.seconds:.1f} s "
        f"({stats.rate:,.0f}/s; {stats.held_seconds:.1f} s waiting for the updater)"
    )


@local_app.command("localstack-deploy")
def local_localstack_deploy(
    endpoint: Annotated[
        str | None, typer.Option(help="LocalStack URL (default: $LOCALSTACK_ENDPOINT, else localhost:4566)")
    ] = None,
    model_store: Annotated[
        Path | None,
        typer.Option(help="local model store root whose champion is published to the models bucket"),
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(help="Redis as the functions see it (default: the localstack stage's, in cdk.json)"),
    ] = None,
    bundle_layers: Annotated[
        bool,
        typer.Option(help="layers inside the code too: LocalStack's Lambda containers (Docker) skip layers"),
    ] = False,
    destroy: Annotated[bool, typer.Option("--destroy", help="remove the deployed stacks instead")] = False,
) -> None:
    """Deploy cdk.json's localstack stage (the CDK app) into LocalStack with cdklocal."""
    from botocore.exceptions import BotoCoreError, ClientError

    from local_stack import localstack

    where = endpoint or localstack.default_endpoint()
    try:
        if destroy:
            localstack.destroy(where)
            console.print(f"removed {localstack.STACKS}")
            return
        deployment = localstack.deploy(where, redis_url, bundle_layers=bundle_layers, step=step)
        version = localstack.publish_champion(deployment, model_store) if model_store else None
    except (localstack.LocalStackError, BotoCoreError, ClientError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    table = Table(title=f"FraudSys (stage {localstack.STAGE}) on {where}")
    table.add_column("resource")
    table.add_column("value")
    for role, name in sorted(deployment.functions.items()):
        table.add_row(f"function {role}", name)
    table.add_row("stream", deployment.stream_name)
    for kind, bucket in sorted(deployment.buckets.items()):
        table.add_row(f"bucket {kind}", bucket)
    table.add_row("champion", version or "(none published: --model-store)")
    console.print(table)
    console.print(f"invoke URL: {deployment.url('predict')}  (header x-api-key: {deployment.api_key})")
    console.print(f"health:     {deployment.url('health')}")


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(help="where data, MLflow and reports go")] = Path("data/demo"),
    requests: Annotated[int, typer.Option(help="live POST /predict requests to send")] = 3000,
    replay_rate: Annotated[float, typer.Option(help="history replay rate, transactions/s")] = 5000.0,
    keep_running: Annotated[bool, typer.Option(help="leave the API running after the summary")] = False,
    api_port: int = 8080,
    redis_port: int = 6380,
    kafka_port: int = 19092,
    s3_port: int = 5055,
    mlflow_port: int = 5050,
    api_workers: ApiWorkers = 1,
    retrain: Annotated[
        bool, typer.Option(help="close the loop: chargebacks via POST /labels, retrain from the lake, gate")
    ] = True,
) -> None:
    """The whole system end to end: simulate, train, promote, serve, stream, score, report
    chargebacks, retrain from the event log, let the gate decide, serve the new champion."""
    from local_stack.demo import run_demo
    from local_stack.services import ServiceError

    sigterm_as_interrupt()
    # every run tells the same story from an empty stack: the previous run's lake, registry and
    # champion (kept in the local S3 snapshot and MLflow's database) would change the gate's decisions
    shutil.rmtree(data_dir / "local", ignore_errors=True)
    cfg = stack_config(
        data_dir / "local", api_port, redis_port, kafka_port, s3_port, mlflow_port, True, api_workers
    )
    try:
        summary = run_demo(data_dir, cfg, requests, replay_rate, keep_running, step=step, retrain=retrain)
    except (ServiceError, TimeoutError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    table = Table(title=f"live scoring through the local API (model {summary.model_version})")
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [
        ("requests", f"{summary.requests:,}"),
        ("errors", f"{summary.errors:,}" + (f" ({summary.retried:,} sent again)" if summary.retried else "")),
        ("flagged as fraud", f"{summary.flagged:,}"),
        ("frauds among requests", f"{summary.frauds:,}"),
        ("frauds caught", f"{summary.caught:,}"),
        ("precision / recall", f"{summary.precision:.2f} / {summary.recall:.2f}"),
        ("degraded answers", f"{summary.degraded:,}"),
        (
            "HTTP latency p50 / p99 / max",
            f"{summary.p50_ms:.2f} / {summary.p99_ms:.2f} / {summary.max_ms:.2f} ms",
        ),
        (
            "history replayed",
            f"{summary.replayed:,} tx in {summary.replay_seconds:.1f} s "
            f"({summary.replay_held_seconds:.1f} s waiting for the updater)",
        ),
        (
            "dead letters",
            ", ".join(f"{n:,} {reason}" for reason, n in summary.dead_letters.items()) or "0",
        ),
    ]
    loop = summary.retrain
    if loop is not None:
        champion = (
            f"v{loop.champion_version} {loop.champion_score:.4f}"
            if loop.champion_score is not None
            else "none"
        )
        rows += [
            ("chargebacks via POST /labels", f"{loop.labels_accepted:,} of {loop.labels_posted:,} accepted"),
            ("retrained from the lake", f"v{loop.version} on {loop.rows:,} transactions"),
            ("gate (validation AP)", f"candidate {loop.candidate_score:.4f} vs champion {champion}"),
            ("gate decision", "promoted" if loop.promoted else f"kept the champion: {loop.reason}"),
            (
                "then served",
                f"v{loop.serving_version}: {loop.after_requests:,} requests, {loop.after_errors} errors",
            ),
        ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if summary.errors or summary.dead_letters or (loop is not None and loop.after_errors):
        raise typer.Exit(1)
