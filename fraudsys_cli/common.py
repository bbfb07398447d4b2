"""What the command groups share: the Typer app, the console, configuration and the local stack's
settings for commands that act on it."""

import enum
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from training.config import DEFAULT_CONFIG, PipelineConfig, load_config

if TYPE_CHECKING:
    from local_stack.stack import StackConfig

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="FraudSys: real-time card fraud detection."
)
console = Console()

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


def as_of(set_: list[str] | None, train_until: datetime | None) -> list[str] | None:
    if train_until is None:
        return set_
    return [f"split.train_until={train_until.date().isoformat()}", *(set_ or [])]


def overrides(pairs: list[str] | None) -> dict[str, Any]:
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


def config_from(paths: list[Path] | None, pairs: list[str] | None) -> PipelineConfig:
    from pydantic import ValidationError

    try:
        return load_config(*(paths or [DEFAULT_CONFIG]), overrides=overrides(pairs), env=os.environ)
    except ValidationError as exc:
        console.print(f"[red]invalid configuration:[/red]\n{exc}")
        raise typer.Exit(2) from exc


def step(message: str) -> None:
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


LocalOption = Annotated[
    bool,
    typer.Option(
        "--local",
        help="to the running local stack (`fraudsys local up` defaults): its MLflow and local S3 model "
        "store, with its dummy credentials and region",
    ),
]


def local_stack_overrides() -> list[str]:
    """The local stack's settings (environment and config) for a training command."""
    from local_stack.stack import StackConfig

    use_local_stack()
    stack = StackConfig()
    return [
        f"model_store_uri={stack.model_store_uri}",
        f"label_delay_seconds={stack.label_delay_seconds}",
        f"registry.tracking_uri=http://127.0.0.1:{stack.mlflow_port}",
    ]


def use_local_stack() -> None:
    """The handlers' settings of the local stack (``fraudsys local up`` defaults) where unset,
    with its lake (``LAKE_URI``: the archiver's)."""
    from handlers import bootstrap
    from local_stack.stack import StackConfig, handler_environment

    cfg = StackConfig()
    for name, value in {**handler_environment(cfg), "LAKE_URI": cfg.lake_uri}.items():
        os.environ.setdefault(name, value)
    bootstrap.reset()


def stack_config(
    run_dir: Path,
    api_port: int,
    redis_port: int,
    kafka_port: int,
    s3_port: int,
    mlflow_port: int,
    mlflow: bool,
    api_workers: int = 1,
    publish_mode: str = "background",
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


def sigterm_as_interrupt() -> None:
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
    typer.Option(
        help="background: answers wait for the producer journal, not for the broker's ack; sync: they "
        "also wait for the ack (as deployed on AWS, where there is no journal)"
    ),
]
