"""Data: simulate a stream in the Kaggle schema, ingest a CSV into day-partitioned Parquet."""

from pathlib import Path
from typing import Annotated

import typer

from fraudsys_cli.common import app, console


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
