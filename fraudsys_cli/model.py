"""Models: features, training, the champion gate, evaluation, batch scoring and backtests."""

import enum
import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fraudsys_cli.common import (
    ConfigOption,
    LocalOption,
    SetOption,
    TrainUntilOption,
    app,
    as_of,
    config_from,
    console,
    local_stack_overrides,
    metrics_table,
    step,
)

if TYPE_CHECKING:
    from training.config import PipelineConfig


class Engine(enum.StrEnum):
    pandas = "pandas"
    spark = "spark"


EngineOption = Annotated[
    Engine,
    typer.Option(
        help="feature engine: pandas (one process) or spark (PySpark local mode, or the cluster's under "
        "spark-submit; needs the `spark` extra and Java 17+): the same rows (training/spark_features.py)"
    ),
]


@app.command()
def features(
    config: ConfigOption = None,
    set_: SetOption = None,
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="a Parquet file; with --engine spark a folder partitioned by day (dt=)"
        ),
    ] = Path("data/features.parquet"),
    engine: EngineOption = Engine.pandas,
) -> None:
    """Point-in-time feature rows for the configured source, written as Parquet."""
    import time

    from training.dataset import build_features
    from training.pipeline import load_transactions

    cfg = config_from(config, set_)
    if engine is Engine.spark:
        spark_features(cfg, output)
        return
    frame = load_transactions(cfg)
    started = time.perf_counter()
    with console.status(f"features for {len(frame):,} rows"):
        rows = build_features(frame, cfg.label_delay_seconds)
    output.parent.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(output, index=False)
    console.print(
        f"{len(rows):,} rows x {rows.shape[1]} columns in {time.perf_counter() - started:.1f} s -> {output}"
    )


def spark_features(cfg: "PipelineConfig", output: Path) -> None:
    """``features --engine spark``: a Parquet source is read by Spark itself (it may be larger than
    this machine's memory), any other source is loaded here first; the table is partitioned by day."""
    import time

    from training.config import ParquetSource
    from training.spark_features import feature_rows, spark_frame, spark_session, write_feature_table

    started = time.perf_counter()
    with spark_session() as spark, console.status("features on Spark"):
        if isinstance(cfg.source, ParquetSource):
            transactions = spark.read.parquet(str(cfg.source.path))
        else:
            from training.pipeline import load_transactions

            transactions = spark_frame(spark, load_transactions(cfg))
        write_feature_table(feature_rows(spark, transactions, cfg.label_delay_seconds), str(output))
        written = spark.read.parquet(str(output))
        rows, columns = written.count(), len(written.columns)
    seconds = time.perf_counter() - started
    console.print(f"{rows:,} rows x {columns} columns (with dt) in {seconds:.1f} s -> {output}/dt=*")


def run_pipeline_command(
    config: list[Path] | None, set_: list[str] | None, auto_promote: bool, engine: Engine = Engine.pandas
) -> None:
    from training.pipeline import run_pipeline

    cfg = config_from(config, set_)
    if engine is Engine.spark:
        from training.spark_features import build_features_spark

        result = run_pipeline(cfg, auto_promote=auto_promote, step=step, features=build_features_spark)
    else:
        result = run_pipeline(cfg, auto_promote=auto_promote, step=step)
    console.print(metrics_table(result.metrics, f"model version {result.version}"))
    state = "[green]champion[/green]" if result.promoted else "[yellow]not promoted[/yellow]"
    console.print(f"version {result.version}: {state} ({result.decision.reason})")
    console.print(f"published: {result.published_to}")
    console.print(f"metrics JSON: {result.report}")
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    console.print(f"{result.rows:,} transactions, {result.frauds:,} frauds; {timings}")


@app.command()
def pipeline(
    config: ConfigOption = None,
    set_: SetOption = None,
    train_until: TrainUntilOption = None,
    local: LocalOption = False,
    engine: EngineOption = Engine.pandas,
) -> None:
    """The whole job: data -> features -> tuning -> training -> evaluation -> registry -> champion gate."""
    overrides = [*(local_stack_overrides() if local else []), *(as_of(set_, train_until) or [])]
    run_pipeline_command(config, overrides, auto_promote=True, engine=engine)


@app.command()
def retrain(
    config: ConfigOption = None, set_: SetOption = None, train_until: TrainUntilOption = None
) -> None:
    """The retraining loop on the running local stack (``fraudsys local up``): train on the events
    its updater archived (the local lake, real label arrivals), register, let the champion gate
    decide, publish; the scorer picks a new champion up within its pointer TTL. On AWS the
    scheduled workflow does the same: the Spark step builds the features from the lake, then the
    training task trains on them (TRAINING_SOURCE=features)."""
    from local_stack.stack import StackConfig

    local = ["source.kind=lake", f"source.uri={StackConfig().lake_uri}", *local_stack_overrides()]
    try:
        run_pipeline_command(config, [*local, *(as_of(set_, train_until) or [])], auto_promote=True)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red] (send traffic first: POST /predict, or `fraudsys local replay`)")
        raise typer.Exit(2) from exc


@app.command()
def train(config: ConfigOption = None, set_: SetOption = None, train_until: TrainUntilOption = None) -> None:
    """Train, evaluate and register a candidate (published, but the champion does not move)."""
    run_pipeline_command(config, as_of(set_, train_until), auto_promote=False)


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="registered model version")],
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Make a registered version the champion (MLflow alias + model store pointer)."""
    from training.pipeline import publish_registered
    from training.registry import Registry

    cfg = config_from(config, set_)
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

    cfg = config_from(config, set_)
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
    engine: EngineOption = Engine.pandas,
) -> None:
    """Batch scoring / backtest with the published champion, streamed by day (memory does not grow
    with the file): trans_num, predicted_fraud, fraud_probability, model_version. With --engine
    spark the features of the whole range are built by Spark, the rows sorted by time."""
    import itertools

    from fraud_adapters.model_store import ModelNotFoundError
    from training.asof import day_start
    from training.data.schema import DataFormatError
    from training.scoring import SCORE_COLUMNS, csv_chunks, load_champion, parquet_chunks, score_stream

    cfg = config_from(config, set_)
    start = day_start(from_day.date()) if from_day else None
    end = day_start(until_day.date()) if until_day else None
    if engine is Engine.spark:
        spark_score(cfg, input_path, output, start, end)
        return
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


def spark_score(
    cfg: "PipelineConfig", input_path: Path, output: Path, start: int | None, end: int | None
) -> None:
    """``score --engine spark``: a Parquet folder is read by Spark, a CSV loaded here first."""
    from fraud_adapters.model_store import ModelNotFoundError
    from training.data.schema import DataFormatError
    from training.scoring import SCORE_COLUMNS, load_champion
    from training.spark_features import score_rows, spark_frame, spark_session

    try:
        model = load_champion(cfg.store_uri, cfg.registry.model_name)
        with spark_session() as spark, console.status(f"scoring {input_path} on Spark"):
            if input_path.is_dir():
                transactions = spark.read.parquet(str(input_path))
            else:
                from training.data.kaggle import read_transactions_csv

                transactions = spark_frame(spark, read_transactions_csv(input_path))
            scores = score_rows(spark, transactions, model, start, end)
            table = scores.orderBy("event_time", "trans_num").toPandas()
    except (DataFormatError, ModelNotFoundError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    output.parent.mkdir(parents=True, exist_ok=True)
    table[list(SCORE_COLUMNS)].to_csv(output, index=False)
    flagged = int(table["predicted_fraud"].sum())
    console.print(f"{len(table):,} scored by model v{model.version}, {flagged:,} flagged -> {output}")


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

    cfg = config_from(config, set_)
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
            on_period=lambda r: step(
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
