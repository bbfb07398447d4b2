"""Training at scale: one fit three ways on the same feature rows, to choose how training grows.

1. **single node, every row** (the pipeline's final fit today: ``training.train.fit``);
2. **single node, legitimate rows sampled** per day at ``--rates`` and re-weighted
   (``training.sampling``: what ``sampling.legit_rate`` does), frauds and the validation and
   test days whole;
3. **distributed XGBoost on Spark** (``xgboost.spark.SparkXGBClassifier``, local mode,
   ``--spark-workers`` workers), every row.

Same splits (the last ``--test-days`` are test, the ``--validation-days`` before them validation,
a label-delay gap, a week of warm-up), same parameters (``base_params`` + depth 6, learning rate
0.1, up to ``--max-rounds`` rounds, early stopping on validation AUCPR), same evaluation (the
booster's probabilities on the test days: average precision, recall at 1 % FPR). Each fit runs in
a fresh process tree, measured by ``bench.spark_features.measure`` (peak RSS and CPU of the tree:
the JVM and the XGBoost workers included).

Data: the feature rows of ``bench.spark_features``' 1.85M-row set (built once with
``build_features`` and cached as Parquet next to it).

    uv run python -m bench.train_scale [--rates 0.1,0.02] [--json out.json]
"""

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import Report, command_line, finish, load_average, parser
from bench.spark_features import RESULT, generate, measure
from fraud_core import spec

PARAMS: dict[str, Any] = {"max_depth": 6, "learning_rate": 0.1}


def features_file(data: Path, label_delay: int) -> Path:
    """The feature rows of the Parquet folder ``data`` (built once, cached beside it)."""
    out = data.parent / f"features-{data.name}.parquet"
    if not out.exists():
        import pandas as pd

        from training.dataset import build_features

        rows = build_features(pd.read_parquet(data), label_delay)
        rows.to_parquet(out.with_suffix(".tmp"), index=False)
        out.with_suffix(".tmp").rename(out)
    return out


def _splits(path: Path, validation_days: int, test_days: int, label_delay: int) -> Any:
    import pandas as pd

    from training.config import SplitConfig
    from training.train import time_splits

    rows = pd.read_parquet(path)
    split = SplitConfig(validation_days=validation_days, test_days=test_days)
    return time_splits(rows, split, label_delay)


def _quality(booster: Any, test: Any) -> dict[str, float]:
    from sklearn.metrics import average_precision_score

    from training.evaluate import recall_at_fpr
    from training.train import predict

    p = predict(booster, test)
    y = test["is_fraud"].to_numpy().astype(int)
    return {
        "test_ap": float(average_precision_score(y, p)),
        "test_recall_1pct_fpr": recall_at_fpr(y, p, 0.01),
        "rounds": booster.num_boosted_rounds(),
    }


def child_single(path: Path, rate: float, args: argparse.Namespace) -> None:
    from training.config import TuningConfig
    from training.sampling import sample_legitimate
    from training.train import base_params, fit

    t0 = time.perf_counter()
    splits = _splits(path, args.validation_days, args.test_days, args.label_delay)
    train = splits.train if rate >= 1 else sample_legitimate(splits.train, rate, seed=0)
    t1 = time.perf_counter()
    cfg = TuningConfig(max_rounds=args.max_rounds, early_stopping_rounds=30, nthread=args.threads)
    params = {**base_params(train, args.threads, 7), **PARAMS}
    booster, validation_ap = fit(train, splits.validation, params, cfg)
    t2 = time.perf_counter()
    result = {
        "train_rows": len(train),
        "read": t1 - t0,
        "fit": t2 - t1,
        "validation_ap": validation_ap,
        **_quality(booster, splits.test),
    }
    print(RESULT + json.dumps(result), flush=True)


def child_spark(path: Path, args: argparse.Namespace) -> None:
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import functions as sf
    from xgboost.spark import SparkXGBClassifier

    from training.spark_features import local_session
    from training.train import base_params

    t0 = time.perf_counter()
    splits = _splits(path, args.validation_days, args.test_days, args.label_delay)
    b = splits.boundaries
    params = {**base_params(splits.train, 1, 7), **PARAMS}
    test, train_rows = splits.test, len(splits.train)
    del splits
    spark = local_session(args.spark_workers, args.driver_memory)
    t1 = time.perf_counter()
    t = sf.col("event_time")
    rows = (
        spark.read.parquet(str(path))
        .where(
            ((t >= b["train_start"]) & (t < b["train_end"]))
            | ((t >= b["validation_start"]) & (t < b["test_start"]))
        )
        .withColumn("is_validation", t >= b["validation_start"])
        .repartition(args.spark_workers)
    )
    # one vector column: xgboost.spark reads a list of numeric feature columns on GPUs only (on
    # CPU its partition reader then fails with KeyError 'values')
    assembler = VectorAssembler(
        inputCols=list(spec.FEATURE_NAMES), outputCol="features", handleInvalid="keep"
    )
    rows = assembler.transform(rows).select("features", "is_fraud", "is_validation")
    classifier = SparkXGBClassifier(
        features_col="features",
        label_col="is_fraud",
        validation_indicator_col="is_validation",
        num_workers=args.spark_workers,
        n_estimators=args.max_rounds,
        early_stopping_rounds=30,
        eval_metric="aucpr",
        tree_method="hist",
        scale_pos_weight=params["scale_pos_weight"],
        random_state=7,
        max_depth=PARAMS["max_depth"],
        learning_rate=PARAMS["learning_rate"],
    )
    model = classifier.fit(rows)
    t2 = time.perf_counter()
    booster = model.get_booster()
    spark.stop()
    result = {
        "train_rows": train_rows,
        "session": t1 - t0,
        "fit": t2 - t1,
        "validation_ap": float(booster.best_score) if booster.attr("best_score") else None,
        **_quality(
            booster[: booster.best_iteration + 1] if booster.attr("best_iteration") else booster, test
        ),
    }
    print(RESULT + json.dumps(result), flush=True)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser("Training at scale: single node (all rows, sampled) against SparkXGBClassifier.")
    p.add_argument("--chunks", type=int, default=1, help="bench.spark_features' data set (1: 1.85M rows)")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--rates", default="0.1,0.02", help="legitimate-row sampling rates to fit")
    p.add_argument("--variants", default="all,sampled,spark")
    p.add_argument("--threads", type=int, default=2, help="single node: XGBoost threads")
    p.add_argument("--spark-workers", type=int, default=2, help="SparkXGBClassifier num_workers (local[N])")
    p.add_argument("--driver-memory", default="6g")
    p.add_argument("--max-rounds", type=int, default=300)
    p.add_argument("--validation-days", type=int, default=30)
    p.add_argument("--test-days", type=int, default=30)
    p.add_argument("--label-delay", type=int, default=spec.DEFAULT_LABEL_DELAY)
    p.add_argument("--memory-limit-gb", type=float, default=16.0)
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--child", choices=("single", "spark"), help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, default=1.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import tempfile

    data = args.data or Path(tempfile.gettempdir()) / "fraudsys-spark-bench" / str(args.chunks)
    if args.child is not None:
        path = features_file(data, args.label_delay)
        if args.child == "single":
            child_single(path, args.rate, args)
        else:
            child_spark(path, args)
        return {}

    report = Report(
        "Training at scale: single node, sampled, SparkXGBClassifier",
        command=command_line("bench.train_scale", argv),
    )
    report.values["load average at start (1/5/15 min)"] = load_average()
    made = generate(data, args.chunks)
    started = time.perf_counter()
    path = features_file(data, args.label_delay)
    report.values["data"] = (
        f"{made['rows']:,} transactions; feature rows at {path} "
        f"(ready in {time.perf_counter() - started:.0f} s)"
    )
    variants: list[tuple[str, list[str]]] = []
    kinds = args.variants.split(",")
    common = ["--chunks", str(args.chunks), "--data", str(data), "--threads", str(args.threads)]
    common += ["--max-rounds", str(args.max_rounds), "--validation-days", str(args.validation_days)]
    common += ["--test-days", str(args.test_days), "--label-delay", str(args.label_delay)]
    if "all" in kinds:
        variants.append(("single node, every row", ["--child", "single", "--rate", "1"]))
    if "sampled" in kinds:
        for rate in (float(r) for r in args.rates.split(",") if r):
            variants.append(
                (f"single node, legitimate rows at {rate:g}", ["--child", "single", "--rate", str(rate)])
            )
    if "spark" in kinds:
        spark = [
            "--child",
            "spark",
            "--spark-workers",
            str(args.spark_workers),
            "--driver-memory",
            args.driver_memory,
        ]
        variants.append((f"SparkXGBClassifier, {args.spark_workers} workers, every row", spark))
    for name, extra in variants:
        argv_child = [sys.executable, "-m", "bench.train_scale", *common, *extra]
        result = measure(argv_child, int(args.memory_limit_gb * 2**30), args.timeout, 0.5)
        print(f"{name}: {json.dumps(result)[:800]}", file=sys.stderr, flush=True)
        if "stopped" in result:
            report.values[f"{name}: did not finish"] = result["stopped"][:300]
            continue
        report.values[name] = (
            f"wall {result['wall']:.1f} s, fit {result['fit']:.1f} s, "
            f"tree CPU {result['tree_cpu_seconds']:.1f} s, "
            f"peak RSS {result['peak_tree_bytes'] / 2**30:.2f} GB, train rows {result['train_rows']}, "
            f"rounds {result['rounds']}, validation AUCPR {result['validation_ap']}, test AP "
            f"{result['test_ap']:.4f}, test recall@1%FPR {result['test_recall_1pct_fpr']:.4f}, load "
            f"{result['load_before']:.1f}/{result['load_after']:.1f}"
        )
        report.values[f"{name} (json)"] = json.dumps(result)
    return finish(report, args.json)


def main(argv: Sequence[str] | None = None) -> None:
    run(argv)


if __name__ == "__main__":
    main()
