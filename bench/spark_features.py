"""The offline features with both engines: ``build_features`` (pandas, one process) against the
Spark job (``training.spark_features``, local mode): wall time, rows/s per core, CPU, peak memory.

Data: simulated Kaggle-shaped chunks (``training.data.simulator.kaggle_scale(seed=k)``: 1,000
cards, 700 merchants, 2 years, ~1.85M rows each) written as one Parquet folder, one file per
chunk; ``--chunks 1`` is the 1.85M-row set, ``--chunks 11`` ~20M rows (11,000 cards, ~7,700
merchants). A folder is generated once and reused (``--data``).

Each measurement runs in a fresh process tree (the Spark child starts its JVM and Python
workers): the parent samples the summed RSS and CPU time of the whole tree every
``--sample-seconds`` (peak memory = the largest sum seen), and stops a run whose tree grows past
``--memory-limit-gb`` or runs past ``--timeout`` (reported as such: that engine did not finish).
Both engines read the same Parquet and write their feature rows as Parquet (pandas: one file,
Spark: the day-partitioned table).

    uv run python -m bench.spark_features --chunks 1 --repeats 3 [--engines pandas,spark] [--json out.json]
    uv run python -m bench.spark_features --chunks 11 --repeats 1 --memory-limit-gb 18
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    REPO_ROOT,
    Report,
    command_line,
    finish,
    load_average,
    parser,
    process_tree,
    process_usage,
)
from fraud_core import spec

RESULT = "BENCH_RESULT "


def generate(folder: Path, chunks: int) -> dict[str, Any]:
    """``chunks`` Kaggle-scale simulations (seeds 0..chunks-1), one Parquet file each."""
    from training.data.simulator import kaggle_scale, simulate

    folder.mkdir(parents=True, exist_ok=True)
    rows = 0
    started = time.perf_counter()
    for k in range(chunks):
        path = folder / f"part-{k:03d}.parquet"
        if not path.exists():
            frame = simulate(kaggle_scale(seed=k))
            frame.to_parquet(path.with_suffix(".tmp"), index=False)
            path.with_suffix(".tmp").rename(path)
            del frame
        import pyarrow.parquet as pq

        rows += pq.ParquetFile(path).metadata.num_rows
    return {"rows": rows, "seconds": time.perf_counter() - started}


def measure(argv: list[str], memory_limit: int, timeout: float, sample: float) -> dict[str, Any]:
    """Run ``argv`` in its own process group; sample its tree; the child's result line, or why not."""
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.Popen(  # a fixed argv list, no shell  # nosec B603
        argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    peak, cpu_by_pid, stopped = 0, {}, None
    while proc.poll() is None:
        total = 0
        for pid in process_tree(proc.pid):
            usage = process_usage(pid)
            if usage is not None:
                total += usage[0]
                cpu_by_pid[pid] = usage[1]
        peak = max(peak, total)
        elapsed = time.perf_counter() - started
        if total > memory_limit or elapsed > timeout:
            limit = f"{total / 2**30:.1f} GB (limit {memory_limit / 2**30:.0f} GB)"
            stopped = (
                f"stopped at {limit} after {elapsed:.0f} s"
                if total > memory_limit
                else f"stopped after {elapsed:.0f} s (timeout)"
            )
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(sample)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    out: dict[str, Any] = {
        "wall": wall,
        "peak_tree_bytes": peak,
        "tree_cpu_seconds": sum(cpu_by_pid.values()),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }
    if stopped is not None:
        return out | {"stopped": stopped}
    if proc.returncode != 0:
        return out | {"stopped": f"failed (exit {proc.returncode}): {stderr[-2000:]}"}
    line = next(x for x in stdout.splitlines() if x.startswith(RESULT))
    result: dict[str, Any] = json.loads(line.removeprefix(RESULT))
    return out | result


def child_pandas(data: Path, output: Path, label_delay: int) -> None:
    import pandas as pd

    from training.dataset import build_features

    t0 = time.perf_counter()
    frame = pd.read_parquet(data)
    t1 = time.perf_counter()
    rows = build_features(frame, label_delay)
    t2 = time.perf_counter()
    rows.to_parquet(output, index=False)
    t3 = time.perf_counter()
    result = {"rows": len(frame), "read": t1 - t0, "features": t2 - t1, "write": t3 - t2, "job": t3 - t0}
    print(RESULT + json.dumps(result), flush=True)


def child_spark(
    data: Path, output: Path, label_delay: int, cores: int, driver_memory: str, bucket_rows: int, sink: str
) -> None:
    from training.spark_features import SparkFeatureConfig, feature_rows, local_session, run_job

    t0 = time.perf_counter()
    spark = local_session(cores, driver_memory)
    t1 = time.perf_counter()
    config = SparkFeatureConfig(bucket_rows=bucket_rows)
    if sink == "noop":  # the features without the table: Spark's noop sink runs the whole plan
        features = feature_rows(spark, spark.read.parquet(str(data)), label_delay, None, config)
        features.write.format("noop").mode("overwrite").save()
        t2 = time.perf_counter()
        rows = spark.read.parquet(str(data)).count()
    else:
        run_job(spark, str(data), str(output), label_delay, config=config)
        t2 = time.perf_counter()
        rows = spark.read.parquet(str(output)).count()
    spark.stop()
    result = {"rows": rows, "session": t1 - t0, "job": t2 - t1}
    print(RESULT + json.dumps(result), flush=True)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser("Offline features: the pandas engine against the Spark engine (local mode).")
    p.add_argument("--chunks", type=int, default=1, help="Kaggle-scale simulations (~1.85M rows each)")
    p.add_argument(
        "--data", type=Path, default=None, help="data folder (default /tmp/fraudsys-spark-bench/N)"
    )
    p.add_argument("--engines", default="pandas,spark")
    p.add_argument("--repeats", type=int, default=3, help="fresh runs per engine (median), interleaved")
    p.add_argument("--cores", type=int, default=2, help="Spark local[N]")
    p.add_argument("--driver-memory", default="4g")
    p.add_argument("--bucket-rows", type=int, default=500_000)
    p.add_argument("--label-delay", type=int, default=spec.DEFAULT_LABEL_DELAY)
    p.add_argument("--memory-limit-gb", type=float, default=18.0)
    p.add_argument("--timeout", type=float, default=3 * 3600.0)
    p.add_argument("--sample-seconds", type=float, default=0.5)
    p.add_argument(
        "--spark-sink", choices=("table", "noop"), default="table", help="noop: features without the write"
    )
    p.add_argument("--child", choices=("pandas", "spark"), help=argparse.SUPPRESS)
    p.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    data = args.data or Path(tempfile.gettempdir()) / "fraudsys-spark-bench" / str(args.chunks)
    if args.child == "pandas":
        child_pandas(data, args.output, args.label_delay)
        return {}
    if args.child == "spark":
        child_spark(
            data,
            args.output,
            args.label_delay,
            args.cores,
            args.driver_memory,
            args.bucket_rows,
            args.spark_sink,
        )
        return {}

    report = Report(
        "Offline features: pandas against Spark (local mode)",
        command=command_line("bench.spark_features", argv),
    )
    report.values["load average at start (1/5/15 min)"] = load_average()
    made = generate(data, args.chunks)
    report.values["spark sink"] = args.spark_sink
    report.values["data"] = (
        f"{made['rows']:,} rows in {args.chunks} Parquet file(s) at {data} (ready in {made['seconds']:.0f} s)"
    )
    engines = [e for e in args.engines.split(",") if e]
    runs: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
    with tempfile.TemporaryDirectory(dir=data.parent) as tmp:
        for _ in range(args.repeats):
            for engine in engines:  # interleaved: both engines see the same load over time
                output = Path(tmp) / f"out-{engine}"
                argv_child = [
                    sys.executable,
                    "-m",
                    "bench.spark_features",
                    "--child",
                    engine,
                    "--output",
                    str(output),
                    "--data",
                    str(data),
                    "--chunks",
                    str(args.chunks),
                    "--label-delay",
                    str(args.label_delay),
                    "--cores",
                    str(args.cores),
                    "--driver-memory",
                    args.driver_memory,
                    "--bucket-rows",
                    str(args.bucket_rows),
                    "--spark-sink",
                    args.spark_sink,
                ]
                result = measure(
                    argv_child, int(args.memory_limit_gb * 2**30), args.timeout, args.sample_seconds
                )
                runs[engine].append(result)
                print(f"{engine}: {json.dumps(result)[:600]}", file=sys.stderr, flush=True)
                shutil.rmtree(output, ignore_errors=True)
                if output.is_file():
                    output.unlink()
    rows = made["rows"]
    for engine, results in runs.items():
        cores = 1 if engine == "pandas" else args.cores
        done = [r for r in results if "stopped" not in r]
        for r in results:
            if "stopped" in r:
                report.values[f"{engine}: did not finish"] = r["stopped"][:300]
        if not done:
            continue
        wall = statistics.median(r["wall"] for r in done)
        job = statistics.median(r["job"] for r in done)
        report.values[f"{engine}: wall s, median (runs)"] = (
            f"{wall:.1f} ({', '.join(f'{r["wall"]:.1f}' for r in done)})"
        )
        report.values[f"{engine}: job s (without the session start), median"] = round(job, 1)
        if engine == "pandas":
            report.values["pandas: read / build_features / write s, median"] = " / ".join(
                f"{statistics.median(r[k] for r in done):.1f}" for k in ("read", "features", "write")
            )
        report.values[f"{engine}: cores"] = cores
        report.values[f"{engine}: rows/s per core (wall)"] = round(rows / wall / cores)
        report.values[f"{engine}: rows/s per core (job)"] = round(rows / job / cores)
        cpu = statistics.median(r["tree_cpu_seconds"] for r in done)
        report.values[f"{engine}: CPU s of the process tree, median"] = round(cpu, 1)
        report.values[f"{engine}: rows per CPU second"] = round(rows / cpu)
        report.values[f"{engine}: peak RSS of the process tree (GB), median"] = round(
            statistics.median(r["peak_tree_bytes"] for r in done) / 2**30, 2
        )
        report.values[f"{engine}: load average (1 min) before/after each run"] = ", ".join(
            f"{r['load_before']:.1f}/{r['load_after']:.1f}" for r in results
        )
    return finish(report, args.json)


def main(argv: Sequence[str] | None = None) -> None:
    run(argv)


if __name__ == "__main__":
    main()
