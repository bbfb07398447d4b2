"""``fraudsys demo``: the README's main command, the whole loop end to end on local defaults.

start the local stack -> simulate -> train the launch model on the first ``LAUNCH_DAYS`` (a
historical export), register, promote, publish -> replay the rest of the history into the
broker (the updater applies it to Redis, the archiver writes it to the local lake) -> send live
``POST /predict`` requests -> the bank reports its chargebacks through ``POST /labels`` ->
retrain from the lake (``fraudsys retrain``: real label arrivals) -> the champion gate compares
the old and the new model on the same held-out days -> the scorer answers with the new champion
-> print decisions, fraud caught and latency -> stop (or keep the API running).
"""

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fraud_core import spec
from local_stack.services import http_request
from local_stack.stack import LocalStack, StackConfig

LIVE_DAYS = 5  # the last days of the simulated stream are sent as live requests, the rest replayed
LAUNCH_DAYS = 60  # the launch model is trained on the first days only (a historical export)
AFTER_REQUESTS = 300  # live requests scored again once the retrained champion serves


@dataclass(frozen=True)
class RetrainSummary:
    """The loop's second half: chargebacks posted, the lake's training run and the gate."""

    labels_posted: int
    labels_accepted: int
    rows: int
    version: str
    promoted: bool
    reason: str
    candidate_score: float
    champion_score: float | None
    champion_version: str | None
    serving_version: str  # what POST /predict answers with afterwards
    after_requests: int
    after_errors: int


@dataclass(frozen=True)
class DemoSummary:
    requests: int
    flagged: int
    frauds: int
    caught: int
    degraded: int
    errors: int
    retried: int  # requests sent again after a 503 (load shed)
    p50_ms: float
    p99_ms: float
    max_ms: float
    replayed: int
    replay_seconds: float
    replay_held_seconds: float  # of replay_seconds, waiting for the updater (``local_stack.replay``)
    model_version: str
    retrain: RetrainSummary | None = None
    #: the stream's dead letters by reason when the demo ended (none expected: the replay is
    #: guarded, every request is well formed)
    dead_letters: dict[str, int] = field(default_factory=dict)

    @property
    def precision(self) -> float:
        return self.caught / self.flagged if self.flagged else 0.0

    @property
    def recall(self) -> float:
        return self.caught / self.frauds if self.frauds else 0.0


def predict_body(row: Mapping[Any, Any]) -> dict[str, Any]:
    """The ``POST /predict`` body of a canonical row (no ``dob`` where the row has none)."""
    dob = row.get("dob")
    return {
        "transaction_id": str(row["trans_num"]),
        "cc_num": str(row["cc_num"]),
        "merchant_name": str(row["merchant"]),
        "category": str(row["category"]),
        "amount_usd": float(row["amt"]),
        "transaction_time": datetime.fromtimestamp(int(row["event_time"]), tz=UTC).isoformat(),
        "lat": float(row["lat"]),
        "long": float(row["long"]),
        "city_pop": int(row["city_pop"]),
        "merch_lat": float(row["merch_lat"]),
        "merch_long": float(row["merch_long"]),
    } | ({"dob": str(dob)} if isinstance(dob, str) and dob else {})


def post_json(url: str, body: dict[str, Any], timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    """POST a JSON body; the status and the JSON answer (``{}`` for an empty error answer)."""
    headers = {"Content-Type": "application/json"}
    status, raw = http_request("POST", url, json.dumps(body).encode(), headers, timeout)
    try:
        return status, json.loads(raw) if raw or 200 <= status < 300 else {}
    except json.JSONDecodeError:  # an error page, not the API's JSON: the caller counts the status
        return status, {"message": raw.decode(errors="replace")[:500]}


def consumed(stack: LocalStack) -> dict[str, int]:
    """Records each consumer of the stream has handled and committed: the updater (Redis, the
    transaction index) and the archiver (the lake)."""
    out = {}
    if stack.poller is not None:
        out["updater"] = stack.poller.processed
    if stack.archiver is not None:
        out["archiver"] = stack.archiver.processed
    return out


def wait_for_updates(stack: LocalStack, expected: int, timeout: float | None = None) -> None:
    """Until the local event sources have handed ``expected`` records to the updater and to the
    archiver (default timeout: 2 minutes plus 1 s per 1,000 records still to go, for a busy
    machine)."""
    if timeout is None:
        behind = expected - min(consumed(stack).values(), default=expected)
        timeout = 120.0 + max(behind, 0) / 1000
    deadline = time.monotonic() + timeout
    while (done := consumed(stack)) and min(done.values()) < expected:
        if time.monotonic() > deadline:
            counts = ", ".join(f"the {name} {n:,}" for name, n in done.items())
            raise TimeoutError(f"records processed of {expected:,}: {counts}")
        stack.check()
        time.sleep(0.2)


def run_demo(
    data_dir: Path,
    stack_cfg: StackConfig,
    n_requests: int = 3000,
    replay_rate: float = 5000.0,
    keep_running: bool = False,
    step: Callable[[str], None] = print,
    retrain: bool = True,
) -> DemoSummary:
    from handlers.bootstrap import kafka_publisher
    from local_stack.replay import replay
    from training.config import load_config
    from training.pipeline import load_transactions, run_pipeline

    stack = LocalStack(stack_cfg)
    step("starting the local stack (redis, kafka, s3, mlflow)")
    stack.up()
    try:
        cfg = load_config(
            _DEFAULT_CONFIG,
            overrides={
                "data_dir": str(data_dir),
                "model_store_uri": stack_cfg.model_store_uri,
                "label_delay_seconds": stack_cfg.label_delay_seconds,
                "registry": {"tracking_uri": stack.endpoints().get("mlflow")},
            },
        )
        frame = load_transactions(cfg)
        step(f"simulated {len(frame):,} transactions ({int(frame['is_fraud'].sum()):,} frauds)")
        first, last = int(frame["event_time"].min()), int(frame["event_time"].max())
        launch = frame[frame["event_time"] < first + LAUNCH_DAYS * spec.DAY]
        step(f"the launch model learns from the first {LAUNCH_DAYS} days ({len(launch):,} transactions)")
        result = run_pipeline(cfg, step=step, frame=launch)
        step(
            f"model version {result.version}: {'champion' if result.promoted else 'not promoted'} "
            f"({result.decision.reason}); test AP {result.metrics.get('test_average_precision', 0.0):.3f}"
        )

        live_start = last - LIVE_DAYS * spec.DAY
        history = frame[frame["event_time"] < live_start]
        live_rows = frame[frame["event_time"] >= live_start]
        live = live_rows.head(n_requests)
        publisher = kafka_publisher(stack_cfg.kafka)
        step(
            f"replaying {len(history):,} transactions of history into the broker at {replay_rate:,.0f}/s "
            "(the updater applies them to Redis, the archiver writes them to the local lake)"
        )
        progress = stack.replay_progress()
        try:
            stats = replay(
                history,
                lambda events: publisher.publish(events, timeout=10),
                replay_rate,
                cfg.label_delay_seconds,
                applied=progress,
            )
        finally:
            progress.close()
            publisher.close()
        wait_for_updates(stack, stats.transactions + stats.labels)
        step(
            f"replayed {stats.transactions:,} transactions, {stats.labels:,} labels in {stats.seconds:.1f}s; "
            f"sending {len(live):,} live POST /predict requests"
        )
        scored = _score(stack, live.to_dict("records"))
        summary = DemoSummary(
            requests=len(live),
            flagged=scored.flagged,
            frauds=int(live["is_fraud"].sum()),
            caught=scored.caught,
            degraded=scored.degraded,
            errors=scored.errors,
            retried=scored.retried,
            p50_ms=float(np.percentile(scored.latencies, 50)) if scored.latencies else 0.0,
            p99_ms=float(np.percentile(scored.latencies, 99)) if scored.latencies else 0.0,
            max_ms=max(scored.latencies, default=0.0),
            replayed=stats.transactions,
            replay_seconds=stats.seconds,
            replay_held_seconds=stats.held_seconds,
            model_version=scored.version,
        )
        if retrain:
            # every scored transaction reaches the updater (index) and the archiver (lake) before
            # its chargeback
            wait_for_updates(stack, stats.transactions + stats.labels + len(live) - scored.errors)
            after = live_rows.iloc[len(live) : len(live) + AFTER_REQUESTS]
            reported = frame[
                (frame["is_fraud"] == 1)
                & (
                    (
                        (frame["event_time"] < live_start)
                        & (frame["event_time"] + cfg.label_delay_seconds > int(history["event_time"].max()))
                    )
                    | frame["trans_num"].isin(live["trans_num"])
                )
            ]
            summary = replace(summary, retrain=_retrain(stack, stack_cfg, data_dir, reported, after, step))
        summary = replace(summary, dead_letters=stack.dead_letters())
        if keep_running:
            step(f"the API stays up at {stack.api_url} (POST /predict, GET /health, GET /metrics); Ctrl-C")
            serve_forever(stack)
        return summary
    finally:
        stack.down()


_DEFAULT_CONFIG = Path(__file__).parent.parent / "training" / "configs" / "default.yaml"


@dataclass
class _Scored:
    latencies: list[float] = field(default_factory=list)
    flagged: int = 0
    caught: int = 0
    degraded: int = 0
    errors: int = 0
    retried: int = 0  # 503s sent again
    version: str = ""


def _score(stack: LocalStack, rows: list[dict[Any, Any]], attempts: int = 4) -> _Scored:
    """Send each row as a live ``POST /predict``; count decisions and latency (of each attempt).
    A 503 (the API shed the request: its deadline was out of reach) is sent again after a short
    back-off, as a client honouring ``Retry-After`` would, up to ``attempts`` times."""
    out = _Scored()
    for row in rows:
        for attempt in range(attempts):
            started = time.perf_counter()
            status, answer = post_json(f"{stack.api_url}/predict", predict_body(row))
            out.latencies.append((time.perf_counter() - started) * 1000)
            if status != 503 or attempt == attempts - 1:
                break
            out.retried += 1
            time.sleep(0.05 * 2**attempt)
        if status != 200:
            out.errors += 1
            continue
        out.version = answer["model_version"]
        out.flagged += int(answer["is_fraud"])
        out.caught += int(answer["is_fraud"] and row["is_fraud"] == 1)
        out.degraded += int(answer["degraded"])
    return out


def post_labels(api_url: str, rows: pd.DataFrame, batch: int = 500) -> tuple[int, int]:
    """Report ``rows`` as chargebacks through ``POST /labels`` (``batch`` per request); the labels
    sent and accepted (an unknown transaction is not accepted)."""
    sent = accepted = 0
    ids = rows["trans_num"].astype(str).tolist()
    for i in range(0, len(ids), batch):
        body = {"labels": [{"transaction_id": tx, "is_fraud": True} for tx in ids[i : i + batch]]}
        status, answer = post_json(f"{api_url}/labels", body, timeout=30.0)
        if status != 202:
            raise RuntimeError(f"POST /labels answered {status}: {answer.get('message', answer)}")
        sent += len(body["labels"])
        accepted += int(answer["accepted"])
    return sent, accepted


def _retrain(
    stack: LocalStack,
    stack_cfg: StackConfig,
    data_dir: Path,
    reported: pd.DataFrame,
    after: pd.DataFrame,
    step: Callable[[str], None],
) -> RetrainSummary:
    """Chargebacks through ``POST /labels``, the lake's training run (``fraudsys retrain``) and
    the gate; then live requests until the scorer answers with the champion it decided on."""
    from training.config import load_config
    from training.pipeline import run_pipeline

    # the labels reach the updater and the archiver (the lake the retraining reads): count first
    before = min(consumed(stack).values(), default=0)
    sent, accepted = post_labels(stack.api_url, reported)
    step(f"the bank reports {sent:,} chargebacks through POST /labels ({accepted:,} accepted)")
    wait_for_updates(stack, before + accepted)
    cfg = load_config(
        _DEFAULT_CONFIG,
        overrides={
            "source": {"kind": "lake", "uri": stack_cfg.lake_uri},
            "data_dir": str(data_dir / "retrain"),
            "model_store_uri": stack_cfg.model_store_uri,
            "label_delay_seconds": stack_cfg.label_delay_seconds,
            "registry": {"tracking_uri": stack.endpoints().get("mlflow")},
        },
    )
    step(f"retraining from the event log ({stack_cfg.lake_uri}): real label arrivals, as `fraudsys retrain`")
    result = run_pipeline(cfg, step=step)
    decision = result.decision
    versus = (
        f"v{decision.champion_version} {decision.champion_score:.4f}"
        if decision.champion_score is not None
        else "no comparable champion"
    )
    outcome = "promoted" if result.promoted else "kept the champion"
    step(
        f"gate: candidate v{result.version} {cfg.registry.gate_metric} {decision.candidate_score:.4f} "
        f"vs champion {versus} on the same validation days -> {outcome}"
    )
    expected = result.version if result.promoted else (decision.champion_version or result.version)
    rows = after.to_dict("records")
    serving = wait_for_champion(stack, expected)
    step(f"the scorer answers with v{serving}; scoring {len(rows):,} more live requests")
    scored = _score(stack, rows)
    return RetrainSummary(
        labels_posted=sent,
        labels_accepted=accepted,
        rows=result.rows,
        version=result.version,
        promoted=result.promoted,
        reason=decision.reason,
        candidate_score=decision.candidate_score,
        champion_score=decision.champion_score,
        champion_version=decision.champion_version,
        serving_version=scored.version or serving,
        after_requests=len(rows),
        after_errors=scored.errors,
    )


def wait_for_champion(stack: LocalStack, version: str, timeout: float = 60.0) -> str:
    """Until ``GET /health`` names ``version`` as the champion (the scorer re-reads the champion
    pointer every ``model_pointer_ttl_seconds``); the version it names."""
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        status, raw = http_request("GET", f"{stack.api_url}/health", b"", {}, 5.0)
        if status == 200:
            seen = str(json.loads(raw).get("model_version") or "")
            if seen == version:
                return seen
        time.sleep(0.5)
    raise TimeoutError(f"the scorer still serves v{seen or '?'} after {timeout:.0f} s, not v{version}")


def serve_forever(stack: LocalStack) -> None:
    try:
        while True:
            stack.check()
            time.sleep(1.0)
    except KeyboardInterrupt:
        return
