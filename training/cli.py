"""``fraudsys``: the command line of the offline pipeline (and of the local stack)."""

import enum
import json
import logging
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from training.config import PipelineConfig, load_config

if TYPE_CHECKING:
    from local_stack.stack import StackConfig

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="FraudSys: real-time card fraud detection."
)
console = Console()
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"

ConfigOption = Annotated[
    list[Path] | None, typer.Option("--config", "-c", help="YAML config(s), merged in order", exists=True)
]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="override, e.g. --set tuning.n_trials=3")]
TrainUntilOption = Annotated[
    datetime | None,
    typer.Option(
        "--train-until",
        formats=["%Y-%m-%d"],
        help="as-of training: transactions and labels known before this day (00:00 UTC); "
        "validation/test by whole days, then a refit (split.train_until)",
    ),
]


def _as_of(set_: list[str] | None, train_until: datetime | None) -> list[str] | None:
    if train_until is None:
        return set_
    return [f"split.train_until={train_until.date().isoformat()}", *(set_ or [])]


def _overrides(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise typer.BadParameter(f"expected key=value, got {pair!r}", param_hint="--set")
        key, raw = pair.split("=", 1)
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return out


def _config(paths: list[Path] | None, pairs: list[str] | None) -> PipelineConfig:
    from pydantic import ValidationError

    try:
        return load_config(*(paths or [DEFAULT_CONFIG]), overrides=_overrides(pairs), env=os.environ)
    except ValidationError as exc:
        console.print(f"[red]invalid configuration:[/red]\n{exc}")
        raise typer.Exit(2) from exc


def _step(message: str) -> None:
    console.log(message)


def metrics_table(metrics: dict[str, float], title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    for split in ("validation", "test", "baseline_test"):
        table.add_column(split.replace("_", " "), justify="right")
    names = [
        "roc_auc",
        "average_precision",
        "recall_at_1pct_fpr",
        "card_precision_at_100",
        "threshold",
        "precision_at_threshold",
        "recall_at_threshold",
        "n",
        "n_fraud",
    ]
    for name in names:
        cells = []
        for split in ("validation", "test", "baseline_test"):
            value = metrics.get(f"{split}_{name}")
            cells.append(
                "" if value is None else (f"{value:,.0f}" if name in ("n", "n_fraud") else f"{value:.4f}")
            )
        table.add_row(name, *cells)
    return table


@app.command()
def simulate(
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV in the Kaggle schema")] = Path(
        "data/simulated/transactions.csv"
    ),
    seed: int = 42,
    scale: Annotated[str, typer.Option(help="demo or kaggle")] = "demo",
    n_cards: int | None = None,
    n_days: int | None = None,
) -> None:
    """Simulate transactions (Kaggle fraudTrain.csv schema)."""
    from training.data.kaggle import write_transactions_csv
    from training.data.simulator import SimulatorConfig, kaggle_scale
    from training.data.simulator import simulate as run

    base = kaggle_scale() if scale == "kaggle" else SimulatorConfig()
    updates = {k: v for k, v in {"seed": seed, "n_cards": n_cards, "n_days": n_days}.items() if v is not None}
    with console.status("simulating"):
        frame = run(base.model_copy(update=updates))
    output.parent.mkdir(parents=True, exist_ok=True)
    write_transactions_csv(frame, output)
    console.print(f"{len(frame):,} transactions ({int(frame['is_fraud'].sum()):,} frauds) -> {output}")


@app.command()
def ingest(
    csv: Annotated[Path, typer.Argument(exists=True, help="fraudTrain.csv / fraudTest.csv")],
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("data/kaggle/parquet"),
) -> None:
    """Stream a Kaggle-schema CSV into monthly Parquet partitions."""
    from training.data.kaggle import ingest_csv_to_parquet
    from training.data.schema import DataFormatError

    try:
        with console.status(f"ingesting {csv}"):
            report = ingest_csv_to_parquet(csv, output)
    except DataFormatError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(report.model_dump_json(indent=2))


@app.command()
def features(
    config: ConfigOption = None,
    set_: SetOption = None,
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("data/features.parquet"),
) -> None:
    """Point-in-time feature rows for the configured source, written as Parquet."""
    import time

    from training.dataset import build_features
    from training.pipeline import load_transactions

    cfg = _config(config, set_)
    frame = load_transactions(cfg)
    started = time.perf_counter()
    with console.status(f"features for {len(frame):,} rows"):
        rows = build_features(frame, cfg.label_delay_seconds)
    output.parent.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(output, index=False)
    console.print(
        f"{len(rows):,} rows x {rows.shape[1]} columns in {time.perf_counter() - started:.1f} s -> {output}"
    )


def _run(config: list[Path] | None, set_: list[str] | None, auto_promote: bool) -> None:
    from training.pipeline import run_pipeline

    cfg = _config(config, set_)
    result = run_pipeline(cfg, auto_promote=auto_promote, step=_step)
    console.print(metrics_table(result.metrics, f"model version {result.version}"))
    state = "[green]champion[/green]" if result.promoted else "[yellow]not promoted[/yellow]"
    console.print(f"version {result.version}: {state} ({result.decision.reason})")
    console.print(f"published: {result.published_to}")
    console.print(f"metrics JSON: {result.report}")
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    console.print(f"{result.rows:,} transactions, {result.frauds:,} frauds; {timings}")


LocalOption = Annotated[
    bool,
    typer.Option(
        "--local",
        help="to the running local stack (`fraudsys local up` defaults): its MLflow and local S3 model "
        "store, with its dummy credentials and region",
    ),
]


def _local_stack_overrides() -> list[str]:
    """The local stack's settings (environment and config) for a training command."""
    from local_stack.stack import StackConfig

    _use_local_stack()
    stack = StackConfig()
    return [
        f"model_store_uri={stack.model_store_uri}",
        f"label_delay_seconds={stack.label_delay_seconds}",
        f"registry.tracking_uri=http://127.0.0.1:{stack.mlflow_port}",
    ]


@app.command()
def pipeline(
    config: ConfigOption = None,
    set_: SetOption = None,
    train_until: TrainUntilOption = None,
    local: LocalOption = False,
) -> None:
    """The whole job: data -> features -> tuning -> training -> evaluation -> registry -> champion gate."""
    overrides = [*(_local_stack_overrides() if local else []), *(_as_of(set_, train_until) or [])]
    _run(config, overrides, auto_promote=True)


@app.command()
def retrain(
    config: ConfigOption = None, set_: SetOption = None, train_until: TrainUntilOption = None
) -> None:
    """The retraining loop on the running local stack (``fraudsys local up``): train on the events
    its updater archived (the local lake, real label arrivals), register, let the champion gate
    decide, publish; the scorer picks a new champion up within its pointer TTL. On AWS the
    training task does the same on its schedule (TRAINING_SOURCE=lake)."""
    from local_stack.stack import StackConfig

    local = ["source.kind=lake", f"source.uri={StackConfig().lake_uri}", *_local_stack_overrides()]
    try:
        _run(config, [*local, *(_as_of(set_, train_until) or [])], auto_promote=True)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red] (send traffic first: POST /predict, or `fraudsys local replay`)")
        raise typer.Exit(2) from exc


@app.command()
def train(config: ConfigOption = None, set_: SetOption = None, train_until: TrainUntilOption = None) -> None:
    """Train, evaluate and register a candidate (published, but the champion does not move)."""
    _run(config, _as_of(set_, train_until), auto_promote=False)


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="registered model version")],
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Make a registered version the champion (MLflow alias + model store pointer)."""
    from training.pipeline import publish_registered
    from training.registry import Registry

    cfg = _config(config, set_)
    registry = Registry(cfg.tracking_uri(), cfg.registry.experiment, cfg.registry.model_name)
    try:
        where = publish_registered(cfg, registry, version, champion=True)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    registry.promote(version)
    console.print(f"version {version} is the champion; published {where}")


@app.command()
def evaluate(
    version: Annotated[str | None, typer.Argument(help="registered version (default: the champion)")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Evaluate a registered version on the test split of the configured source."""
    import mlflow

    from training.dataset import build_features
    from training.evaluate import evaluate as run_eval
    from training.pipeline import load_source, make_splits
    from training.registry import Registry
    from training.train import predict

    cfg = _config(config, set_)
    registry = Registry(cfg.tracking_uri(), cfg.registry.experiment, cfg.registry.model_name)
    uri = (
        f"models:/{cfg.registry.model_name}/{version}"
        if version
        else f"models:/{cfg.registry.model_name}@champion"
    )
    booster = mlflow.xgboost.load_model(uri)
    mv = (
        registry.client.get_model_version(cfg.registry.model_name, version)
        if version
        else registry.client.get_model_version_by_alias(cfg.registry.model_name, "champion")
    )
    source = load_source(cfg)
    rows = build_features(source.transactions, cfg.label_delay_seconds, labels=source.labels)
    test = make_splits(cfg, rows).test
    p = predict(booster, test, list(booster.feature_names or []))
    metrics = run_eval(test, p, float(mv.tags.get("threshold", 0.5))).as_dict("test_")
    console.print(metrics_table(metrics, f"model version {mv.version} on the test split"))
    console.print_json(json.dumps(metrics))


@app.command()
def score(
    input_path: Annotated[
        Path,
        typer.Argument(exists=True, help="a Kaggle-schema CSV, or a Parquet folder from `fraudsys ingest`"),
    ],
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("data/scores.csv"),
    from_day: Annotated[
        datetime | None, typer.Option("--from", formats=["%Y-%m-%d"], help="first day scored (00:00 UTC)")
    ] = None,
    until_day: Annotated[
        datetime | None,
        typer.Option("--until", formats=["%Y-%m-%d"], help="score transactions before this day (00:00 UTC)"),
    ] = None,
    block_days: Annotated[
        int, typer.Option(min=1, help="days scored together (memory: history + block)")
    ] = 7,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Batch scoring / backtest with the published champion, streamed by day (memory does not grow
    with the file): trans_num, predicted_fraud, fraud_probability, model_version."""
    import itertools

    from fraud_adapters.model_store import ModelNotFoundError
    from training.asof import day_start
    from training.data.schema import DataFormatError
    from training.scoring import SCORE_COLUMNS, csv_chunks, load_champion, parquet_chunks, score_stream

    cfg = _config(config, set_)
    start = day_start(from_day.date()) if from_day else None
    end = day_start(until_day.date()) if until_day else None
    chunks = parquet_chunks(input_path, start, end) if input_path.is_dir() else csv_chunks(input_path)
    try:
        first = list(itertools.islice(chunks, 1))  # a malformed file is reported before the model
        model = load_champion(cfg.store_uri, cfg.registry.model_name)
    except (DataFormatError, ModelNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    output.parent.mkdir(parents=True, exist_ok=True)
    scored = flagged = 0
    chunks = itertools.chain(first, chunks)
    try:
        with output.open("w", newline="") as sink, console.status(f"scoring {input_path}") as status:
            sink.write(",".join(SCORE_COLUMNS) + "\n")
            for part in score_stream(chunks, model, start, end, block_days):
                part.to_csv(sink, header=False, index=False)
                scored += len(part)
                flagged += int(part["predicted_fraud"].sum())
                status.update(f"scoring {input_path}: {scored:,} transactions")
    except (DataFormatError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"{scored:,} scored by model v{model.version}, {flagged:,} flagged -> {output}")


@app.command()
def backtest(
    config: ConfigOption = None,
    set_: SetOption = None,
    periods: Annotated[int, typer.Option(min=1, help="test weeks, slid one after the other")] = 4,
    train_days: Annotated[int, typer.Option(min=1, help="days of each training window")] = 56,
    test_days: Annotated[int, typer.Option(min=1, help="days of each test period")] = 7,
    top_k: Annotated[int, typer.Option(min=1, help="k of card precision top-k")] = 100,
    rounds: Annotated[int, typer.Option(min=1, help="boosting rounds of every period's model")] = 150,
    keep_detected_cards: Annotated[
        bool, typer.Option(help="keep cards already found compromised in the next days' top k")
    ] = False,
    output_dir: Annotated[Path | None, typer.Option(help="default: <data_dir>/backtest")] = None,
) -> None:
    """Prequential backtest (Fraud Detection Handbook): train on a window, skip the label delay,
    test a week, slide, repeat; per period AUC, AP, recall at 1% FPR, CP@k (and per fraud
    scenario for simulated data); a CSV/markdown table, a plot, an MLflow run."""
    from training.backtest import BacktestConfig, log_to_mlflow, run_backtest, write_report
    from training.config import SimulatedSource
    from training.pipeline import load_source

    cfg = _config(config, set_)
    if isinstance(cfg.source, SimulatedSource):  # the simulator knows each row's scenario
        from training.data.simulator import SimulatorConfig, kaggle_scale, run_simulation
        from training.dataset import label_events_at_delay

        base = kaggle_scale() if cfg.source.scale == "kaggle" else SimulatorConfig()
        fields = cfg.source.model_dump()
        updates = {k: v for k, v in fields.items() if k in SimulatorConfig.model_fields and v is not None}
        simulation = run_simulation(base.model_copy(update=updates))
        transactions = simulation.transactions.assign(scenario=simulation.scenario.to_numpy())
        labels = label_events_at_delay(transactions, cfg.label_delay_seconds)
    else:
        source = load_source(cfg)
        transactions, labels = source.transactions, source.labels
    settings = BacktestConfig(
        periods=periods,
        train_days=train_days,
        test_days=test_days,
        top_k=top_k,
        rounds=rounds,
        remove_detected_cards=not keep_detected_cards,
        nthread=cfg.tuning.nthread,
        seed=cfg.tuning.seed,
    )
    try:
        table = run_backtest(
            transactions,
            labels,
            cfg.label_delay_seconds,
            settings,
            on_period=lambda r: _step(
                f"period {r['period']} ({r['test_start']}..{r['test_end']}): AP {r['average_precision']:.4f}"
            ),
        )
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    files = write_report(table, output_dir or cfg.data_dir / "backtest", top_k)
    run_id = log_to_mlflow(
        table, files, cfg.tracking_uri(), cfg.registry.experiment, {"source": cfg.source.kind}
    )
    shown = Table(title=f"prequential backtest, {periods} periods of {test_days} days")
    columns = ["period", "test_start", "test_frauds", "roc_auc", "average_precision", "recall_at_1pct_fpr"]
    columns.append(f"card_precision_at_{top_k}")
    for name in columns:
        shown.add_column(name, justify="right")
    for values in table.to_dict("records"):
        shown.add_row(
            *(f"{values[c]:.4f}" if isinstance(values[c], float) else str(values[c]) for c in columns)
        )
    console.print(shown)
    console.print(f"report: {', '.join(str(f) for f in files)}; MLflow run {run_id}")


local_app = typer.Typer(no_args_is_help=True, help="The local stack on 127.0.0.1 (no Docker, no cloud).")
app.add_typer(local_app, name="local")


def _stack_config(
    run_dir: Path,
    api_port: int,
    redis_port: int,
    kafka_port: int,
    s3_port: int,
    mlflow_port: int,
    mlflow: bool,
    api_workers: int = 1,
    publish_mode: str = "sync",
    **more: Any,
) -> "StackConfig":
    from local_stack.stack import StackConfig

    return StackConfig(
        **more,
        run_dir=run_dir,
        api_port=api_port,
        redis_port=redis_port,
        kafka_port=kafka_port,
        s3_port=s3_port,
        mlflow_port=mlflow_port,
        with_mlflow=mlflow,
        api_workers=api_workers,
        publish_mode=publish_mode,
    )


def _sigterm_as_interrupt() -> None:
    import signal

    def raise_interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, raise_interrupt)


RunDir = Annotated[Path, typer.Option(help="logs and local state")]
ApiWorkers = Annotated[
    int,
    typer.Option(
        min=1,
        help="scorer processes behind the API port, like concurrent Lambda instances (one core each)",
    ),
]


class PublishMode(enum.StrEnum):
    sync = "sync"
    background = "background"


PublishModeOption = Annotated[
    PublishMode,
    typer.Option(help="sync: answers wait for the broker's ack (as deployed); background: they do not"),
]


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
    publish_mode: PublishModeOption = PublishMode.sync,
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
) -> None:
    """Start redis, the Kafka broker, S3 (moto), MLflow, the local API, the updater's poller and
    the archiver's (the event lake)."""
    from local_stack.demo import serve_forever
    from local_stack.services import ServiceError
    from local_stack.stack import LocalStack

    _sigterm_as_interrupt()
    cfg = _stack_config(
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
    )
    stack = LocalStack(cfg, on_step=_step)
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
) -> None:
    """Produce a transaction stream (and delayed labels) into the broker at a given rate."""
    from rich.progress import Progress

    from handlers.bootstrap import kafka_publisher
    from local_stack.replay import replay

    if input_csv is not None:
        from training.data.kaggle import read_transactions_csv

        frame = read_transactions_csv(input_csv)
    else:
        from training.data.simulator import SimulatorConfig
        from training.data.simulator import simulate as run

        frame = run(SimulatorConfig(seed=seed))
    if limit is not None:
        frame = frame.sort_values(["event_time", "trans_num"]).head(limit)
    publisher = kafka_publisher(bootstrap)
    with Progress(console=console) as progress:
        task = progress.add_task("replaying", total=len(frame))
        stats = replay(
            frame,
            lambda events: publisher.publish(events, timeout=10),
            rate,
            label_delay,
            on_progress=lambda tx, _labels: progress.update(task, completed=tx),
        )
    publisher.close()
    console.print(
        f"{stats.transactions:,} transactions and {stats.labels:,} labels in {stats.seconds:.1f} s "
        f"({stats.rate:,.0f}/s)"
    )


@local_app.command("localstack-deploy")
def local_localstack_deploy(
    endpoint: Annotated[
        str | None,
        typer.Option(
            help="LocalStack URL (default: $LOCALSTACK_ENDPOINT, $AWS_ENDPOINT_URL, localhost:4566)"
        ),
    ] = None,
    model_store: Annotated[
        Path | None,
        typer.Option(help="local model store root whose champion is published to the models bucket"),
    ] = None,
    layer_zip: Annotated[
        Path | None, typer.Option(help="prebuilt layer zip (default: build it with layers/build.py)")
    ] = None,
    redis_url: Annotated[str, typer.Option(help="Redis as the Lambdas see it")] = "redis://redis:6379/0",
    destroy: Annotated[bool, typer.Option("--destroy", help="remove the deployed resources instead")] = False,
) -> None:
    """Deploy buckets, Kinesis, layer, both Lambdas, the REST API and the event source into LocalStack."""
    from botocore.exceptions import BotoCoreError, ClientError

    from local_stack.localstack import LocalStackConfig, LocalStackDeployer, LocalStackError, default_endpoint

    cfg = LocalStackConfig(
        endpoint=endpoint or default_endpoint(),
        layer_zip=layer_zip,
        model_store=model_store,
        redis_url=redis_url,
    )
    deployer = LocalStackDeployer(cfg, step=_step)
    try:
        if destroy:
            for removed in deployer.destroy():
                console.print(f"removed {removed}")
            return
        deployment = deployer.deploy()
    except (LocalStackError, BotoCoreError, ClientError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    table = Table(title=f"FraudSys on {cfg.endpoint}")
    table.add_column("resource")
    table.add_column("value")
    for name, value in deployment.resources().items():
        table.add_row(name, value)
    console.print(table)
    console.print(f"invoke URL: {deployment.invoke_url}")
    console.print(f"health:     {deployment.health_url}")


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

    _sigterm_as_interrupt()
    # every run tells the same story from an empty stack: the previous run's lake, registry and
    # champion (kept in the local S3 snapshot and MLflow's database) would change the gate's decisions
    shutil.rmtree(data_dir / "local", ignore_errors=True)
    cfg = _stack_config(
        data_dir / "local", api_port, redis_port, kafka_port, s3_port, mlflow_port, True, api_workers
    )
    try:
        summary = run_demo(data_dir, cfg, requests, replay_rate, keep_running, step=_step, retrain=retrain)
    except (ServiceError, TimeoutError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    table = Table(title=f"live scoring through the local API (model {summary.model_version})")
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [
        ("requests", f"{summary.requests:,}"),
        ("errors", f"{summary.errors:,}"),
        ("flagged as fraud", f"{summary.flagged:,}"),
        ("frauds among requests", f"{summary.frauds:,}"),
        ("frauds caught", f"{summary.caught:,}"),
        ("precision / recall", f"{summary.precision:.2f} / {summary.recall:.2f}"),
        ("degraded answers", f"{summary.degraded:,}"),
        (
            "HTTP latency p50 / p99 / max",
            f"{summary.p50_ms:.2f} / {summary.p99_ms:.2f} / {summary.max_ms:.2f} ms",
        ),
        ("history replayed", f"{summary.replayed:,} tx in {summary.replay_seconds:.1f} s"),
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
    if summary.errors or (loop is not None and loop.after_errors):
        raise typer.Exit(1)


labels_app = typer.Typer(no_args_is_help=True, help="Labels (chargebacks and their reversals).")
app.add_typer(labels_app, name="labels")
LISTED_LINES = 20


@labels_app.command("import")
def labels_import(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, help="CSV: transaction_id (or trans_num), is_fraud, reported_at?"
        ),
    ],
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="use the local stack (`fraudsys local up`: Redis :6380, Kafka :19092) for unset settings",
        ),
    ] = False,
) -> None:
    """Send a bank's bulk chargeback file through the label intake (as POST /labels does).

    Uses the handlers' settings (REDIS_URL, STREAM_KIND, KAFKA_BOOTSTRAP_SERVERS or
    KINESIS_STREAM_NAME, LABELS_TOPIC, ...), like the Lambdas. Bad rows are listed with their
    line numbers and skipped; importing a file again is safe."""
    from handlers import bootstrap
    from handlers.labels import LabelIntakeUnavailableError, intake
    from handlers.settings import settings
    from training.label_import import ImportSummary, LabelFileError, import_labels, parse_rows

    if local:
        _use_local_stack()
    if settings().stream_kind == "none":
        console.print("[red]STREAM_KIND is none: labels would go nowhere[/red] (set it, or use --local)")
        raise typer.Exit(2)
    label_intake = intake(timeout_ms=5000, publish_timeout=10.0)

    with console.status("importing labels") as status, file.open(newline="", encoding="utf-8-sig") as text:

        def progress(summary: ImportSummary) -> None:
            status.update(
                f"{summary.rows:,} rows: {summary.accepted:,} accepted, {len(summary.unknown_lines):,} "
                f"unknown, {len(summary.invalid):,} invalid"
            )

        try:
            summary = import_labels(parse_rows(text), label_intake.submit, progress)
        except LabelFileError as exc:
            console.print(f"[red]{file}: {exc}[/red]")
            raise typer.Exit(2) from exc
        except LabelIntakeUnavailableError as exc:
            console.print(f"[red]stopped: {exc}[/red]; rows sent before stay sent, importing again is safe")
            raise typer.Exit(1) from exc
        finally:
            bootstrap.publisher().close()
    console.print(
        f"{file}: {summary.rows:,} rows: {summary.accepted:,} accepted, {len(summary.unknown_lines):,} "
        f"unknown transaction, {len(summary.invalid):,} invalid",
        soft_wrap=True,
    )
    if summary.unknown_lines:
        shown = ", ".join(map(str, summary.unknown_lines[:LISTED_LINES]))
        more = " ..." if len(summary.unknown_lines) > LISTED_LINES else ""
        console.print(
            f"unknown transaction (not in the index: nothing published) on lines {shown}{more}",
            soft_wrap=True,
        )
    for line, reason in summary.invalid[:LISTED_LINES]:
        console.print(f"line {line}: invalid: {reason}", markup=False, soft_wrap=True)
    if len(summary.invalid) > LISTED_LINES:
        console.print(f"... and {len(summary.invalid) - LISTED_LINES:,} more invalid rows")


def _use_local_stack() -> None:
    """The handlers' settings of the local stack (``fraudsys local up`` defaults) where unset,
    with its lake (``LAKE_URI``: the archiver's)."""
    from handlers import bootstrap
    from local_stack.stack import StackConfig, handler_environment

    cfg = StackConfig()
    for name, value in {**handler_environment(cfg), "LAKE_URI": cfg.lake_uri}.items():
        os.environ.setdefault(name, value)
    bootstrap.reset()


@app.command()
def backfill(
    lake: Annotated[
        str | None, typer.Option(help="the lake root (s3://bucket/prefix or a folder); default LAKE_URI")
    ] = None,
    newest: Annotated[
        str | None,
        typer.Option(help="the time the state is built up to (ISO 8601); default: the lake's latest event"),
    ] = None,
    batch: Annotated[
        int, typer.Option(min=1, help="events per Redis transaction (MULTI/EXEC) of the bulk writes")
    ] = 1024,
    local: Annotated[
        bool, typer.Option("--local", help="the local stack (`fraudsys local up`) for unset settings")
    ] = False,
) -> None:
    """Materialize the online store (and the label intake's transaction index) from the event lake.

    For go-live, a Redis loss or a layout change. Uses the handlers' settings (REDIS_URL,
    REDIS_CLUSTER, CARD_HASH_KEY..., LABEL_DELAY_SECONDS, LAKE_URI), like the updater. Safe to run
    while the stream is live and to run again: the state written is the updater's, idempotent."""
    from datetime import UTC, datetime, time

    from rich.progress import Progress

    from handlers import bootstrap
    from handlers.settings import settings
    from training.backfill import backfill as run_backfill
    from training.backfill import lake_start_day
    from training.data.lake import latest_dob_transactions, newest_transaction_day, read_lake_tables

    if local:
        _use_local_stack()
    uri = lake or settings().lake_uri
    if not uri:
        console.print("[red]no lake: give --lake or set LAKE_URI[/red]")
        raise typer.Exit(2)
    store = bootstrap.feature_store(5000)
    if newest:
        until: int | None = int(datetime.fromisoformat(newest).replace(tzinfo=UTC).timestamp())
    else:  # the end of the lake's newest day: only the days the window needs are read
        last_day = newest_transaction_day(uri)
        until = int(datetime.combine(last_day, time.max, UTC).timestamp()) if last_day else None
    start = lake_start_day(store, until) if until is not None else None
    with console.status(f"reading the lake {uri}"):
        transactions, labels = read_lake_tables(uri, start=start)
    if not newest and transactions.num_rows:
        until = int(transactions["event_time"].to_numpy().max())
    profiles = latest_dob_transactions(uri, lake_start_day(store, until)) if until is not None else None
    with Progress(console=console) as progress:
        task = progress.add_task("backfilling", total=None)
        stats = run_backfill(
            transactions,
            labels,
            store,
            bootstrap.transaction_index(5000),
            newest=until,
            batch=batch,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            profiles=profiles,
        )
    console.print(
        f"{stats.transactions:,} transactions and {stats.labels:,} labels since "
        f"{datetime.fromtimestamp(stats.since, UTC):%Y-%m-%d %H:%M} in {stats.seconds:.1f} s "
        f"({stats.rate:,.0f} events/s): {stats.applied:,} applied, {stats.duplicates:,} already there, "
        f"{stats.late:,} older than their key's retention"
    )


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    app()
