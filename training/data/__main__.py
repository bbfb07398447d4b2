"""`python -m training.data`: simulate, ingest and read back, printing sizes and timings as JSON.

    uv run python -m training.data simulate --preset kaggle --out data/sim/kaggle.csv
    uv run python -m training.data ingest data/sim/kaggle.csv --out data/sim/parquet
    uv run python -m training.data read data/sim/parquet

The project CLI (`fraudsys`, fraudsys_cli/) wraps the same functions; this entry point exists
to measure them (wall and CPU seconds, peak RSS of the process) with nothing else loaded.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    simulate = commands.add_parser("simulate", help="simulate transactions into a Kaggle-format CSV")
    simulate.add_argument("--preset", choices=("demo", "kaggle"), default="demo")
    simulate.add_argument("--seed", type=int, default=42)
    simulate.add_argument("--out", type=Path, help="CSV to write (default: simulate in memory only)")
    simulate.add_argument("--scenarios", type=Path, help="also write trans_num,scenario of the frauds")
    ingest = commands.add_parser("ingest", help="stream Kaggle-format CSVs into monthly Parquet partitions")
    ingest.add_argument("csv", type=Path, nargs="+")
    ingest.add_argument("--out", type=Path, required=True)
    ingest.add_argument("--chunk-rows", type=int, default=250_000)
    ingest.add_argument("--overwrite", action="store_true")
    read = commands.add_parser("read", help="read a CSV or a Parquet dataset into the canonical frame")
    read.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    if args.command == "simulate":
        result = _measure(lambda: _simulate(args.preset, args.seed, args.out, args.scenarios))
    elif args.command == "ingest":
        result = _measure(lambda: _ingest(args.csv, args.out, args.chunk_rows, args.overwrite))
    else:
        result = _measure(lambda: _read(args.path))
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _simulate(preset: str, seed: int, out: Path | None, scenarios: Path | None) -> dict[str, object]:
    from training.data.simulator import SimulatorConfig, run_simulation, simulate_to_csv

    cfg = SimulatorConfig.kaggle_scale(seed) if preset == "kaggle" else SimulatorConfig(seed=seed)
    if out is None:
        return run_simulation(cfg).summary().model_dump()
    return simulate_to_csv(cfg, out, scenarios_path=scenarios).model_dump() | {"csv": str(out)}


def _ingest(csv: list[Path], out: Path, chunk_rows: int, overwrite: bool) -> dict[str, object]:
    from training.data.kaggle import ingest_csv_to_parquet

    report = ingest_csv_to_parquet(csv, out, chunk_rows=chunk_rows, overwrite=overwrite)
    return report.model_dump(exclude={"months"}) | {"n_months": len(report.months)}


def _read(path: Path) -> dict[str, object]:
    from training.data.kaggle import read_parquet_dataset, read_transactions_csv

    frame = read_parquet_dataset(path) if path.is_dir() else read_transactions_csv(path)
    return {"rows": len(frame), "frauds": int(frame["is_fraud"].sum()), "memory_mb": _frame_mb(frame)}


def _frame_mb(frame: object) -> float:
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a DataFrame, got {type(frame).__name__}")
    return round(float(frame.memory_usage(deep=True).sum()) / 2**20, 1)


def _measure(work: Callable[[], dict[str, object]]) -> dict[str, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result | {
        "wall_seconds": round(time.perf_counter() - wall, 2),
        "cpu_seconds": round(time.process_time() - cpu, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


if __name__ == "__main__":
    raise SystemExit(main())
