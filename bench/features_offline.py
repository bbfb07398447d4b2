"""Offline point-in-time features (``training.dataset.build_features``) and, with ``--train``, one
XGBoost fit on them: time and peak memory.

Frames shaped like the Kaggle data set (1,000 cards, ~700 merchants, 2 years) at 100k, 1M and
1.85M rows; the 1.85M frame comes from ``training.data.simulator.kaggle_scale()`` when that
module exists, else from ``bench.synthetic.kaggle_like_frame``. Each measurement runs in a fresh
subprocess that loads the frame from Parquet, resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``), runs ``build_features`` once and reports wall time, CPU time and the
peak RSS above the loaded frame.

With ``--train`` each child then fits one model the way the pipeline fits its final one
(``training.train.fit``: time splits with 30-day validation and test windows, the mid-range
parameters of ``bench.scorer``, up to 300 rounds with early stopping, 2 threads) and reports its
time, rounds, validation AUC-PR and the peak RSS of the fit alone.

    uv run python -m bench.features_offline --sizes 100000,1000000,1850000 [--train] [--json out.json]
"""

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, Report, command_line, finish, load_average, parser
from bench.synthetic import KAGGLE_ROWS, kaggle_like_frame, kaggle_scale_frame
from fraud_core import spec

TARGET_SECONDS_KAGGLE = 60.0
RESULT = "BENCH_RESULT "


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _peak_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _fit(rows: Any, label_delay: int) -> dict[str, Any]:
    """One training.train.fit on the feature rows: seconds, CPU, peak above the start, rounds."""
    from training.config import SplitConfig, TuningConfig
    from training.train import base_params, fit, time_splits

    splits = time_splits(rows, SplitConfig(validation_days=30, test_days=30), label_delay)
    params = base_params(splits.train, nthread=2, seed=7) | {
        "max_depth": 6,
        "learning_rate": 0.1,
        "min_child_weight": 2.0,
        "subsample": 0.9,
        "colsample_bytree": 0.8,
    }
    cfg = TuningConfig(max_rounds=300, early_stopping_rounds=30, nthread=2, seed=7)
    gc.collect()
    rss_before = _rss_bytes()
    _reset_peak()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    booster, aucpr = fit(splits.train, splits.validation, params, cfg)
    return {
        "train_seconds": time.perf_counter() - wall0,
        "train_cpu_seconds": time.process_time() - cpu0,
        "train_peak_above": _peak_bytes() - rss_before,
        "train_rows": len(splits.train),
        "train_rounds": int(booster.num_boosted_rounds()),
        "train_aucpr": aucpr,
    }


def child(path: Path, label_delay: int, profile: bool, train: bool = False) -> None:
    import pandas as pd

    from training.dataset import build_features

    df = pd.read_parquet(path)
    gc.collect()
    rss_before = _rss_bytes()
    reset = _reset_peak()
    profiler = cProfile.Profile() if profile else None
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if profiler is not None:
        out = profiler.runcall(build_features, df, label_delay)
    else:
        out = build_features(df, label_delay)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    result: dict[str, Any] = {
        "rows": len(df),
        "seconds": wall,
        "cpu_seconds": cpu,
        "rss_before": rss_before,
        "peak": _peak_bytes(),
        "peak_reset": reset,
        "output_bytes": int(out.memory_usage(deep=False).sum()),
    }
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
        result["profile"] = text.getvalue()
    if train:
        result |= _fit(out, label_delay)
    print(RESULT + json.dumps(result), flush=True)


def _measure(path: Path, label_delay: int, profile: bool = False, train: bool = False) -> dict[str, Any]:
    argv = [
        sys.executable,
        "-m",
        "bench.features_offline",
        "--child",
        str(path),
        "--label-delay",
        str(label_delay),
    ]
    done = subprocess.run(  # a fixed argv list, no shell  # nosec B603
        [*argv, *(["--profile"] if profile else []), *(["--train"] if train else [])],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"build_features child failed: {done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith(RESULT))
    data: dict[str, Any] = json.loads(line.removeprefix(RESULT))
    return data


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser("build_features time and peak memory at Kaggle-like sizes.")
    p.add_argument("--sizes", default=f"100000,1000000,{KAGGLE_ROWS}", help="comma-separated row counts")
    p.add_argument("--repeats", type=int, default=3, help="fresh-process runs per size (median)")
    p.add_argument("--label-delay", type=int, default=spec.DEFAULT_LABEL_DELAY)
    p.add_argument("--profile", action="store_true", help="cProfile one extra run of the largest size")
    p.add_argument("--train", action="store_true", help="also time one training.train.fit per run")
    p.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        child(args.child, args.label_delay, args.profile, args.train)
        return {}

    report = Report(
        "Offline features: training.dataset.build_features",
        command=command_line("bench.features_offline", argv),
    )
    report.values["load average at start (1/5/15 min)"] = load_average()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    results: dict[int, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            started = time.perf_counter()
            if n >= KAGGLE_ROWS:
                df, source = kaggle_scale_frame(seed=args.seed)
            else:
                df, source = kaggle_like_frame(n, seed=args.seed), f"bench.synthetic.kaggle_like_frame({n})"
            generated = time.perf_counter() - started
            path = Path(tmp) / f"frame-{n}.parquet"
            df.to_parquet(path)
            shape = (
                f"{len(df):,} rows, {df['cc_num'].nunique():,} cards, "
                f"{df['merchant'].nunique():,} merchants, "
                f"{(int(df['event_time'].max()) - int(df['event_time'].min())) / spec.DAY:.0f} days, "
                f"fraud {df['is_fraud'].mean():.2%}; {source}, generated in {generated:.1f} s"
            )
            report.values[f"frame {n:,}"] = shape
            del df
            results[n] = [_measure(path, args.label_delay, train=args.train) for _ in range(args.repeats)]
            runs = results[n]
            seconds = statistics.median(r["seconds"] for r in runs)
            cpu = statistics.median(r["cpu_seconds"] for r in runs)
            peak = statistics.median(r["peak"] - r["rss_before"] for r in runs)
            rows = runs[0]["rows"]
            report.values[f"build_features {rows:,} rows: median wall s (runs)"] = (
                f"{seconds:.2f} ({', '.join(f'{r["seconds"]:.2f}' for r in runs)})"
            )
            report.values[f"build_features {rows:,} rows: median CPU s"] = round(cpu, 2)
            report.values[f"build_features {rows:,} rows: rows/s"] = round(rows / seconds)
            report.values[f"build_features {rows:,} rows: peak RSS above the loaded frame (MB)"] = round(
                peak / 2**20
            )
            report.values[f"build_features {rows:,} rows: peak bytes per row"] = round(peak / rows)
            report.values[f"build_features {rows:,} rows: loaded frame RSS (MB)"] = round(
                runs[0]["rss_before"] / 2**20
            )
            if args.train:
                fits = sorted(runs, key=lambda r: float(r["train_seconds"]))
                mid = fits[len(fits) // 2]
                report.values[f"fit {rows:,} rows: median wall s (runs)"] = (
                    f"{mid['train_seconds']:.2f} ({', '.join(f'{r["train_seconds"]:.2f}' for r in runs)})"
                )
                report.values[f"fit {rows:,} rows: that run's CPU s, rounds, s/round"] = (
                    f"{mid['train_cpu_seconds']:.1f}, {mid['train_rounds']}, "
                    f"{mid['train_seconds'] / mid['train_rounds']:.3f}"
                )
                report.values[f"fit {rows:,} rows: train rows, validation AUC-PR"] = (
                    f"{mid['train_rows']:,}, {mid['train_aucpr']:.3f}"
                )
                report.values[f"fit {rows:,} rows: peak RSS of the fit (MB)"] = round(
                    mid["train_peak_above"] / 2**20
                )
            if not runs[0]["peak_reset"]:
                report.values[f"build_features {rows:,} rows: note"] = "peak from ru_maxrss (no clear_refs)"
            if n >= KAGGLE_ROWS:
                report.target(
                    "build_features at Kaggle size (1.85M rows)", seconds, TARGET_SECONDS_KAGGLE, "s", False
                )
        if args.profile:
            largest = max(sizes)
            profiled = _measure(Path(tmp) / f"frame-{largest}.parquet", args.label_delay, profile=True)
            report.values[f"profile of build_features at {largest:,} rows"] = "\n" + profiled["profile"]
    return finish(report, args.json)


def main(argv: Sequence[str] | None = None) -> None:
    run(argv)


if __name__ == "__main__":
    main()
