"""``fraudsys``: the command line of the offline pipeline (and of the local stack)."""

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from training.config import PipelineConfig, load_config

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="FraudSys: real-time card fraud detection."
)
console = Console()
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"

ConfigOption = Annotated[
    list[Path] | None, typer.Option("--config", "-c", help="YAML config(s), merged in order", exists=True)
]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="override, e.g. --set tuning.n_trials=3")]


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
        return load_config(*(paths or [DEFAULT_CONFIG]), overrides=_overrides(pairs))
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


@app.command()
def pipeline(config: ConfigOption = None, set_: SetOption = None) -> None:
    """The whole job: data -> features -> tuning -> training -> evaluation -> registry -> champion gate."""
    _run(config, set_, auto_promote=True)


@app.command()
def train(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Train, evaluate and register a candidate (published, but the champion does not move)."""
    _run(config, set_, auto_promote=False)


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="registered model version")],
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Make a registered version the champion (MLflow alias + model store pointer)."""
    from training.registry import Registry, publish

    cfg = _config(config, set_)
    registry = Registry(cfg.tracking_uri(), cfg.registry.experiment, cfg.registry.model_name)
    booster, baseline, tags, run_id = registry.load_version(version)
    registry.promote(version)
    metrics = registry.client.get_run(run_id).data.metrics if run_id else {}
    where = publish(
        cfg.store_uri,
        cfg.registry.model_name,
        version,
        booster,
        baseline,
        float(tags.get("threshold", 0.5)),
        cfg.label_delay_seconds,
        dict(metrics),
        run_id,
        champion=True,
    )
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
    from training.pipeline import load_transactions
    from training.registry import Registry
    from training.train import predict, time_splits

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
    rows = build_features(load_transactions(cfg), cfg.label_delay_seconds)
    test = time_splits(rows, cfg.split, cfg.label_delay_seconds).test
    p = predict(booster, test, list(booster.feature_names or []))
    metrics = run_eval(test, p, float(mv.tags.get("threshold", 0.5))).as_dict("test_")
    console.print(metrics_table(metrics, f"model version {mv.version} on the test split"))
    console.print_json(json.dumps(metrics))


@app.command()
def score(
    input_csv: Annotated[Path, typer.Argument(exists=True, help="transactions in the Kaggle CSV schema")],
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("data/scores.csv"),
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Batch scoring / backtest with the published champion: trans_num, fraud_probability, is_fraud."""
    from training.data.kaggle import read_transactions_csv
    from training.data.schema import DataFormatError
    from training.pipeline import score_file

    cfg = _config(config, set_)
    try:
        frame = read_transactions_csv(input_csv)
    except DataFormatError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    scores = score_file(frame, cfg.store_uri, cfg.registry.model_name)
    output.parent.mkdir(parents=True, exist_ok=True)
    scores.to_csv(output, index=False)
    console.print(f"{len(scores):,} scored, {int(scores['is_fraud'].sum()):,} flagged -> {output}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    app()
