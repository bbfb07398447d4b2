"""Scorer latency, warm and cold.

Warm: ``handlers.scoring.Scorer.score(request)`` and the full ``handlers.predict.handler`` with a
real redis-server holding the state of ~1,000 cards, filled through the real updater path
(``RedisFeatureStore.apply``, 500-event batches) from a synthetic 60-day stream, and a model
trained by the real trainer (``training.train.fit`` on ``training.dataset.build_features``).
The breakdown times each step alone on the same requests (interleaved in rounds, so that
machine noise spreads evenly): Redis read, feature assembly, XGBoost ``inplace_predict`` and
``pred_contribs``, and the handler's resolver/validation/JSON/Powertools overhead.

Cold: ``import handlers.predict`` then the first model load and first requests, each in a fresh
interpreter (median of ``--cold-runs``), in the dev venv and, when ``build/layers`` holds a
built layer (``python -m layers.build``), in an isolated interpreter that sees only the Lambda
layer, the ``lambdas/`` asset and the runtime's boto3 (what a Lambda cold start imports).

    uv run python -m bench.scorer --n 5000 [--json out.json] [--profile]
"""

import cProfile
import dataclasses
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import redis

from bench.common import (
    REPO_ROOT,
    Report,
    Samples,
    command_line,
    finish,
    lambda_env,
    load_average,
    parser,
    quiet_stdout,
    time_each,
)
from bench.synthetic import (
    batches,
    kaggle_like_frame,
    requests_for_existing_cards,
    stream_payloads,
    to_events,
)
from fraud_core import spec
from fraud_core.features import F64
from fraud_core.online import request_features, vectorized_request_features
from fraud_core.schemas import PredictRequest
from tests.support.services import redis_server

TARGET_P99_MS = 2.0
PING = "redis PING (loopback round trip)"
READ = "store.read (1 round trip, one Lua call)"
FEATURES = "request_features (state -> row, single-row kernel)"
FEATURES_VECTORIZED = "the same row through the vectorized offline kernel"
INPLACE = "xgboost inplace_predict (1 row, probability only)"
DMATRIX = "xgboost DMatrix(1 row, nthread=1)"
PREDICT = "LoadedModel.predict, REASONS_METHOD=shap (the exact SHAP path table)"
PREDICT_XGBOOST = "LoadedModel.predict, REASONS_METHOD=shap, XGBoost's pred_contribs (no table)"
PREDICT_APPROX = "LoadedModel.predict, REASONS_METHOD=approx (Saabas)"
SCORE = "Scorer.score (read + features + inference)"
VALIDATE = "PredictRequest.model_validate_json"
DUMP = "PredictResponse.model_dump_json"
RESOLVE = "APIGatewayRestResolver.resolve (no decorators)"
HANDLER = "handlers.predict.handler (full Lambda handler)"
LAYER_DIR = REPO_ROOT / "build" / "layers" / "xgboost" / "x86_64" / "python"
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "dateutil", "urllib3", "six.py")


def train_and_publish(df: pd.DataFrame, label_delay: int, store_uri: str, seed: int) -> dict[str, Any]:
    """Champion + request-only baseline from the real trainer; the test model if training fails."""
    try:
        return _train_and_publish(df, label_delay, store_uri, seed)
    except ValueError as exc:  # too little data: a split without frauds
        from tests.support.models import publish_test_model

        publish_test_model(store_uri, label_delay=label_delay)
        return {"model": f"tests.support.models.publish_test_model (training refused: {exc})"}


def _train_and_publish(df: pd.DataFrame, label_delay: int, store_uri: str, seed: int) -> dict[str, Any]:
    from training.config import SplitConfig, TuningConfig
    from training.dataset import build_features
    from training.evaluate import choose_threshold
    from training.registry import publish
    from training.train import base_params, fit, predict, time_splits

    started = time.perf_counter()
    rows = build_features(df, label_delay)
    splits = time_splits(rows, SplitConfig(validation_days=7, test_days=7), label_delay)
    # A mid-range point of the tuner's search space (training.train.tune).
    params = base_params(splits.train, nthread=2, seed=seed) | {
        "max_depth": 6,
        "learning_rate": 0.1,
        "min_child_weight": 2.0,
        "subsample": 0.9,
        "colsample_bytree": 0.8,
    }
    cfg = TuningConfig(max_rounds=400, early_stopping_rounds=30, nthread=2, seed=seed)
    booster, aucpr = fit(splits.train, splits.validation, params, cfg)
    baseline, _ = fit(splits.train, splits.validation, params, cfg, spec.REQUEST_ONLY_FEATURES)
    y = splits.validation["is_fraud"].to_numpy().astype(int)
    threshold = choose_threshold(y, predict(booster, splits.validation))
    publish(store_uri, "fraudsys", "1", booster, baseline, threshold, label_delay, {}, None, champion=True)
    return {
        "model": "training.train.fit (early stopping) on build_features of the bench stream",
        "model_trees": int(booster.num_boosted_rounds()),
        "model_leaves": _leaves(booster),
        "model_max_depth": 6,
        "model_validation_aucpr": round(aucpr, 4),
        "model_train_rows": len(splits.train),
        "model_train_seconds": round(time.perf_counter() - started, 1),
    }


def _leaves(booster: Any) -> int:
    return sum(tree.count("leaf=") for tree in booster.get_dump())


def fill_store(store: Any, df: pd.DataFrame, label_delay: int, until: int, batch_size: int = 500) -> float:
    """Apply the stream (transactions and arrived labels) in arrival order; returns seconds."""
    payloads = [p for _, _, p in stream_payloads(df, label_delay, until)]
    parsed = [to_events(chunk) for chunk in batches(payloads, batch_size)]
    started = time.perf_counter()
    for transactions, labels in parsed:
        store.apply(transactions, labels)
    return time.perf_counter() - started


@contextmanager
def busy_loops(count: int) -> Iterator[None]:
    """``count`` processes that each keep one core busy (other work on the machine) meanwhile."""
    loops = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])  # nosec B603  # this interpreter
        for _ in range(count)
    ]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


@contextmanager
def step_timers(scorer: Any) -> Iterator[dict[str, Samples]]:
    """Time the steps of the real ``Scorer.score`` in sequence (wrappers cost ~1 us each)."""
    from handlers import scoring

    steps = {name: Samples() for name in ("store.read", "request_features", "LoadedModel.predict")}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                steps[name].cpu.append(time.thread_time_ns() - cpu)
                steps[name].wall.append(time.perf_counter_ns() - wall)

        return wrapper

    features: Callable[..., Any] = vars(scoring)["request_features"]
    read, predict = scorer.store.read, scoring.LoadedModel.predict
    scorer.store.read = timed("store.read", read)
    setattr(scoring, "request_features", timed("request_features", features))  # noqa: B010
    setattr(scoring.LoadedModel, "predict", timed("LoadedModel.predict", predict))  # noqa: B010
    try:
        yield steps
    finally:
        del scorer.store.read
        setattr(scoring, "request_features", features)  # noqa: B010
        setattr(scoring.LoadedModel, "predict", predict)  # noqa: B010


_PROBE = """
import json, sys, time
t0 = time.perf_counter()
import handlers.predict as predict
t1 = time.perf_counter()
import xgboost
t2 = time.perf_counter()
model = predict.scorer().models.get()
t3 = time.perf_counter()
from types import SimpleNamespace
ctx = SimpleNamespace(function_name="fraudsys-bench", memory_limit_in_mb=1024, aws_request_id="0",
    invoked_function_arn="arn:aws:lambda:eu-west-1:123456789012:function:fraudsys-bench",
    get_remaining_time_in_millis=lambda: 30_000)
event = json.loads(sys.argv[1])
t4 = time.perf_counter()
first = predict.handler(event, ctx)
t5 = time.perf_counter()
second = predict.handler(event, ctx)
t6 = time.perf_counter()
assert first["statusCode"] == 200, first
print("BENCH_RESULT " + json.dumps({
    "import_handlers_predict_ms": (t1 - t0) * 1000,
    "import_xgboost_ms": (t2 - t1) * 1000,
    "first_model_load_ms": (t3 - t2) * 1000,
    "first_request_ms": (t5 - t4) * 1000,
    "second_request_ms": (t6 - t5) * 1000,
    "modules": len(sys.modules),
    "sklearn_imported": "sklearn" in sys.modules,
}))
"""


def _layer_prelude(runtime_dir: Path) -> str:
    paths = [str(LAYER_DIR), str(REPO_ROOT / "lambdas"), str(runtime_dir)]
    return f"import sys\nsys.path[:0] = {paths!r}\n"


def _runtime_dir(workdir: Path) -> Path:
    """The Lambda runtime's own packages (boto3 & co.), linked from the venv."""
    import boto3

    site = Path(boto3.__file__).parent.parent
    runtime = workdir / "runtime"
    runtime.mkdir(exist_ok=True)
    for name in RUNTIME_PACKAGES:
        if (site / name).exists() and not (runtime / name).exists():
            (runtime / name).symlink_to(site / name)
    return runtime


def _run_probe(args: list[str], env: dict[str, str]) -> tuple[dict[str, Any], str, float]:
    started = time.perf_counter()
    done = subprocess.run(  # a fixed argv list, no shell  # nosec B603
        args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False
    )
    wall = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise RuntimeError(f"cold-start probe failed: {done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH_RESULT "))
    return json.loads(line.removeprefix("BENCH_RESULT ")), done.stderr, wall


def importtime_summary(stderr: str, top: int = 8) -> list[str]:
    """Top-level imports by cumulative time from ``-X importtime`` output."""
    totals: list[tuple[str, float]] = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        if name.startswith("  ") or not cumulative.strip().isdigit():
            continue  # a nested import, or the header
        totals.append((name.strip(), int(cumulative) / 1000))
    return [f"{name} {ms:.0f} ms" for name, ms in sorted(totals, key=lambda x: -x[1])[:top]]


def cold_start(env: dict[str, str], event: dict[str, Any], runs: int, workdir: Path) -> dict[str, Any]:
    full_env = {**os.environ, **env}
    variants: dict[str, list[str]] = {"venv": [sys.executable]}
    if LAYER_DIR.is_dir():
        prelude = _layer_prelude(_runtime_dir(workdir))
        variants["layer"] = [sys.executable, "-I", "-S"]
    else:
        prelude = ""
    out: dict[str, Any] = {"cold_runs": runs}
    if runs == 0:
        return out
    startup = []
    for _ in range(runs):
        started = time.perf_counter()
        # a fixed argv list, no shell
        subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)  # nosec B603
        startup.append((time.perf_counter() - started) * 1000)
    out["cold interpreter startup, python -I -S -c pass (ms)"] = round(statistics.median(startup), 1)
    for variant, interpreter in variants.items():
        code = (prelude if variant == "layer" else "") + _PROBE
        argv = [*interpreter, "-c", code, json.dumps(event)]
        results = [_run_probe(argv, full_env) for _ in range(runs)]
        for key in (k for k, v in results[0][0].items() if isinstance(v, float)):
            out[f"cold [{variant}] {key}"] = round(statistics.median(r[0][key] for r in results), 1)
        out[f"cold [{variant}] process wall clock ms"] = round(statistics.median(r[2] for r in results), 1)
        out[f"cold [{variant}] modules loaded"] = results[0][0]["modules"]
        out[f"cold [{variant}] sklearn imported by xgboost"] = results[0][0]["sklearn_imported"]
        _, stderr, _ = _run_probe([*interpreter, "-X", "importtime", "-c", code, json.dumps(event)], full_env)
        out[f"cold [{variant}] -X importtime top"] = importtime_summary(stderr)
    return out


def _interleaved(ops: dict[str, Callable[[int], object]], n: int, rounds: int) -> dict[str, Samples]:
    """Every op over every chunk of request indices, chunk by chunk, so that noise spreads evenly."""
    samples = {name: Samples() for name in ops}
    for chunk in batches(range(n), max(1, -(-n // rounds))):
        for name, fn in ops.items():
            samples[name] += time_each(fn, chunk)
    return samples


def _t(request: PredictRequest) -> int:
    return int(request.transaction_time.timestamp() // 1)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser("Scorer latency (warm, in-process) and cold start.")
    p.add_argument("--n", type=int, default=5000, help="timed requests per measured operation")
    p.add_argument("--stream", type=int, default=100_000, help="transactions that fill the store")
    p.add_argument("--cards", type=int, default=1000)
    p.add_argument("--merchants", type=int, default=700)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--rounds", type=int, default=5, help="interleaving rounds of the timed loops")
    p.add_argument("--cold-runs", type=int, default=5)
    p.add_argument("--timeout-ms", type=int, default=50, help="REDIS_TIMEOUT_MS (the scorer's default)")
    p.add_argument("--profile", action="store_true", help="cProfile 1,000 handler calls, print the top")
    p.add_argument(
        "--busy-loops",
        type=int,
        default=0,
        help="run N busy-loop processes (one core each) during the timed loops: the same figures "
        "with this many cores taken by other work",
    )
    args = p.parse_args(argv)
    import xgboost as xgb

    from handlers import bootstrap, predict
    from handlers.observability import metrics
    from handlers.update_features import UPDATER_REDIS_TIMEOUT_MS
    from tests.support.events import FakeContext, api_gateway_event

    report = Report("Scorer latency (warm) and cold start", command=command_line("bench.scorer", argv))
    report.values["load average at start (1/5/15 min)"] = load_average()
    label_delay = spec.DEFAULT_LABEL_DELAY
    df = kaggle_like_frame(args.stream, args.cards, args.merchants, args.days, seed=args.seed)
    now = int(df["event_time"].max()) + 1
    report.values.update(
        {
            "stream_transactions": len(df),
            "stream_cards": int(df["cc_num"].nunique()),
            "stream_merchants": int(df["merchant"].nunique()),
            "stream_days": args.days,
        }
    )
    with tempfile.TemporaryDirectory() as tmp, redis_server() as service:
        workdir = Path(tmp)
        with lambda_env(service.port, workdir, label_delay, args.timeout_ms) as env:
            report.values.update(train_and_publish(df, label_delay, env["MODEL_STORE_URI"], args.seed))
            scorer = predict.scorer()
            store = scorer.store
            # The updater's store (1 s timeout): a 500-event Lua batch can take longer than 50 ms.
            fill_seconds = fill_store(bootstrap.feature_store(UPDATER_REDIS_TIMEOUT_MS), df, label_delay, now)
            report.values["store fill through store.apply (tx/s)"] = round(len(df) / fill_seconds)
            # The stream alone does not make a store complete (fraud_adapters.store_marker): the
            # bench's fill replays the whole history, as fraudsys backfill would.
            bootstrap.store_marker().mark("bench.scorer: the whole history replayed")
            report.values["redis keys"] = int(store.client.dbsize())
            report.values["redis used_memory (MB)"] = round(
                int(store.client.info("memory")["used_memory"]) / 2**20, 1
            )

            requests = requests_for_existing_cards(df, args.n + args.warmup, now, seed=args.seed + 1)
            timed = requests[args.warmup :]
            n = len(timed)
            ctx = FakeContext()
            bodies = [r.model_dump_json(exclude_none=True) for r in requests]
            events = [api_gateway_event("POST", "/predict", raw_body=b) for b in bodies]
            timed_events, timed_bodies = events[args.warmup :], bodies[args.warmup :]
            model = scorer.models.get()
            approx_model = dataclasses.replace(model, approx_reasons=True)
            xgboost_model = dataclasses.replace(model, path_table=False)
            report.values.update(_path_table(model))
            booster = model.booster
            with quiet_stdout():
                for request, event in zip(requests[: args.warmup], events[: args.warmup], strict=True):
                    scorer.score(request)
                    predict.handler(event, ctx)

            states = [store.read(r.card_id, r.merchant_name, _t(r)) for r in timed]
            rows = [request_features(r, s, label_delay) for r, s in zip(timed, states, strict=True)]
            responses = [scorer.score(r).response for r in timed]
            counts = [s.card(_t(r)).count[-1] for r, s in zip(timed, states, strict=True)]
            report.values["card events in the 30-day window, median / max"] = (
                f"{int(np.median(counts))} / {max(counts)}"
            )
            report.values["cards read from tiles (more than TILE_THRESHOLD events)"] = sum(
                s.card_summary is not None for s in states
            )

            timeouts = {PING: 0, READ: 0}

            def guarded(name: str, fn: Callable[[], object]) -> None:
                """A direct store call may time out (REDIS_TIMEOUT_MS) on a busy machine: count it."""
                try:
                    fn()
                except redis.TimeoutError:
                    timeouts[name] += 1

            def resolve(i: int) -> None:
                predict.app.resolve(timed_events[i], ctx)
                metrics.clear_metrics()  # no log_metrics decorator here: drop what the route added

            ops: dict[str, Callable[[int], object]] = {
                PING: lambda i: guarded(PING, store.ping),
                READ: lambda i: guarded(
                    READ, lambda: store.read(timed[i].card_id, timed[i].merchant_name, _t(timed[i]))
                ),
                FEATURES: lambda i: request_features(timed[i], states[i], label_delay),
                FEATURES_VECTORIZED: lambda i: vectorized_request_features(timed[i], states[i], label_delay),
                INPLACE: lambda i: booster.inplace_predict(rows[i]),
                DMATRIX: lambda i: xgb.DMatrix(rows[i], nthread=1),
                PREDICT: lambda i: model.predict(rows[i], False),
                PREDICT_XGBOOST: lambda i: xgboost_model.predict(rows[i], False),
                PREDICT_APPROX: lambda i: approx_model.predict(rows[i], False),
                SCORE: lambda i: scorer.score(timed[i]),
                VALIDATE: lambda i: PredictRequest.model_validate_json(timed_bodies[i]),
                DUMP: lambda i: responses[i].model_dump_json(),
                RESOLVE: resolve,
                HANDLER: lambda i: predict.handler(timed_events[i], ctx),
            }
            with quiet_stdout(), busy_loops(args.busy_loops):
                samples = _interleaved(ops, n, args.rounds)
                answers = [predict.handler(e, ctx) for e in timed_events[:500]]
            for name, values in samples.items():
                report.add(name, values)
            report.values["Redis timeouts (> REDIS_TIMEOUT_MS) in the PING / read loops"] = (
                f"{timeouts[PING]} / {timeouts[READ]}"
            )
            report.values["non-200 / degraded responses in 500 handler calls"] = (
                f"{sum(a['statusCode'] != 200 for a in answers)} / "
                f"{sum(bool(json.loads(a['body']).get('degraded')) for a in answers)}"
            )
            matrix = np.vstack(rows)
            started = time.perf_counter_ns()
            booster.inplace_predict(matrix)
            report.values["xgboost inplace_predict of all rows in one call, per row (us)"] = round(
                (time.perf_counter_ns() - started) / n / 1000, 2
            )
            with step_timers(scorer) as steps:
                total = time_each(scorer.score, timed)
            for name, values in steps.items():
                report.add(f"in Scorer.score: {name}", values)
            rest = [t - sum(s.wall[i] for s in steps.values()) for i, t in enumerate(total.wall)]
            report.add("in Scorer.score: the rest (model pointer, reasons, response)", rest)
            report.add("Scorer.score, timed by steps", total)
            _heavy_cards(report, df, scorer, now, args.seed)
            _worst_case_model(report, rows, model)
            _breakdown(report)
            if args.profile:
                report.values["profile"] = _profile(
                    lambda: [predict.handler(e, ctx) for e in timed_events[:1000]]
                )
            report.values["load average after warm runs (1/5/15 min)"] = load_average()
            report.values["busy-loop processes during the timed loops"] = args.busy_loops
            event = api_gateway_event("POST", "/predict", raw_body=bodies[0])
            report.values.update(cold_start(env, event, args.cold_runs, workdir))
    # issue 3: the scorer *handler*, warm, in process, Redis read and inference included
    handler_p99 = next(t for t in report.timings if t.name == HANDLER).p99
    report.target("full handler p99 warm", handler_p99, TARGET_P99_MS, "ms", higher_is_better=False)
    return finish(report, args.json)


def _profile(fn: Callable[[], object], top: int = 25) -> str:
    profiler = cProfile.Profile()
    with quiet_stdout():
        profiler.runcall(fn)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return "\n" + out.getvalue()


def _heavy_cards(report: Report, df: pd.DataFrame, scorer: Any, now: int, seed: int) -> None:
    """Scorer latency for the ten busiest cards of the last 30 days (the largest states)."""
    recent = df[df["event_time"] >= now - spec.MAX_CARD_WINDOW]
    counts = recent["cc_num"].value_counts()
    busiest = set(counts.index[:10])
    requests = requests_for_existing_cards(df[df["cc_num"].isin(busiest)], 1000, now, seed=seed + 2)
    for request in requests[:100]:
        scorer.score(request)
    report.add(SCORE + ", 10 busiest cards", time_each(scorer.score, requests))
    report.values["busiest card: events in its 30-day window"] = int(counts.iloc[0])


def _path_table(model: Any) -> dict[str, Any]:
    """Waits for the model's SHAP path table (built by a background thread) and describes it."""
    started = time.perf_counter()
    model.contributions.ready.wait(120)
    table = model.contributions.table
    if table is None:
        return {"SHAP path table": "not used (XGBoost's pred_contribs serves this model)"}
    return {
        "SHAP path table": f"{table.table.nbytes / 2**20:.1f} MB, "
        f"ready {time.perf_counter() - started:.2f} s after this wait began",
    }


def _worst_case_model(report: Report, rows: list[F64], model: Any) -> None:
    """The largest model the tuner can produce (training.train.tune): 400 full trees of depth 8."""
    import xgboost as xgb

    rng = np.random.default_rng(0)
    x = np.vstack(rows)
    x = x[rng.integers(0, len(x), 20_000)] * rng.uniform(0.5, 1.5, (20_000, x.shape[1]))
    labels = rng.integers(0, 2, len(x))
    data = xgb.DMatrix(x, label=labels, feature_names=model.manifest.feature_names)  # noise: full trees
    params = {
        "objective": "binary:logistic",
        "max_depth": 8,
        "eta": 0.05,
        "min_child_weight": 0,
        "nthread": 2,
    }
    big = xgb.train(params, data, 400)
    big.set_param({"nthread": 1})
    report.values["worst-case model leaves"] = _leaves(big)
    sample = rows[:1000]
    for row in sample[:50]:
        big.inplace_predict(row)
    report.add("worst-case model (400 trees, depth 8): " + INPLACE, time_each(big.inplace_predict, sample))
    for approx in (False, True):
        loaded = dataclasses.replace(model, booster=big, approx_reasons=approx)
        name = PREDICT_APPROX
        if not approx:
            report.values.update({f"worst-case model: {k}": v for k, v in _path_table(loaded).items()})
            name = PREDICT if loaded.contributions.table is not None else PREDICT_XGBOOST

        def score_row(row: F64, m: Any = loaded) -> object:
            return m.predict(row, False)

        report.add(f"worst-case model (400 trees, depth 8): {name}", time_each(score_row, sample))


def _breakdown(report: Report) -> None:
    """Shares of the in-sequence steps in ``Scorer.score`` (isolated loops run on warm caches)."""
    p50 = {t.name: t.p50 for t in report.timings}
    total = p50["Scorer.score, timed by steps"]
    prefix = "in Scorer.score: "
    parts = {t.name.removeprefix(prefix): t.p50 for t in report.timings if t.name.startswith(prefix)}
    report.values[f"Scorer.score p50 {total:.3f} ms, steps in sequence (p50 ms, share)"] = ", ".join(
        f"{k} {v:.3f} ({v / total:.0%})" for k, v in parts.items()
    )
    report.values["handler p50 minus Scorer.score p50 (ms)"] = round(p50[HANDLER] - p50[SCORE], 3)
    report.values["  Powertools logger/metrics/tracer decorators: handler - resolve (ms)"] = round(
        p50[HANDLER] - p50[RESOLVE], 3
    )
    report.values["  resolver + validation + publish + JSON: resolve - Scorer.score (ms)"] = round(
        p50[RESOLVE] - p50[SCORE], 3
    )


def main(argv: Sequence[str] | None = None) -> None:
    run(argv)


if __name__ == "__main__":
    main()
