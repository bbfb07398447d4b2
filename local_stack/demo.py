"""``fraudsys demo``: the README's main command, end to end on local defaults.

simulate -> train, register, promote (MLflow server) -> publish the champion to S3 (moto) ->
start the local stack -> replay history into the broker -> send live ``POST /predict`` requests
-> print decisions, fraud caught and latency -> stop (or keep the API running).
"""

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fraud_core import spec
from local_stack.services import http_request
from local_stack.stack import LocalStack, StackConfig

LIVE_DAYS = 5  # the last days of the simulated stream are sent as live requests, the rest replayed


@dataclass(frozen=True)
class DemoSummary:
    requests: int
    flagged: int
    frauds: int
    caught: int
    degraded: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    replayed: int
    replay_seconds: float
    model_version: str

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


def wait_for_updates(stack: LocalStack, expected: int, timeout: float = 120.0) -> None:
    """Until the local event source has handed ``expected`` records to the updater."""
    deadline = time.monotonic() + timeout
    while stack.poller is not None and stack.poller.processed < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the updater processed {stack.poller.processed} of {expected} records")
        stack.check()
        time.sleep(0.2)


def run_demo(
    data_dir: Path,
    stack_cfg: StackConfig,
    n_requests: int = 3000,
    replay_rate: float = 5000.0,
    keep_running: bool = False,
    step: Callable[[str], None] = print,
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
            Path(__file__).parent.parent / "training" / "configs" / "default.yaml",
            overrides={
                "data_dir": str(data_dir),
                "model_store_uri": stack_cfg.model_store_uri,
                "label_delay_seconds": stack_cfg.label_delay_seconds,
                "registry": {"tracking_uri": stack.endpoints().get("mlflow")},
            },
        )
        frame = load_transactions(cfg)
        step(f"simulated {len(frame):,} transactions ({int(frame['is_fraud'].sum()):,} frauds)")
        result = run_pipeline(cfg, step=step, frame=frame)
        step(
            f"model version {result.version}: {'champion' if result.promoted else 'not promoted'} "
            f"({result.decision.reason}); test AP {result.metrics.get('test_average_precision', 0.0):.3f}"
        )

        live_start = int(frame["event_time"].max()) - LIVE_DAYS * spec.DAY
        history = frame[
            (frame["event_time"] < live_start)
            & (frame["event_time"] >= live_start - spec.MAX_CARD_WINDOW - cfg.label_delay_seconds)
        ]
        live = frame[frame["event_time"] >= live_start].head(n_requests)
        publisher = kafka_publisher(stack_cfg.kafka)
        step(f"replaying {len(history):,} transactions of history into the broker at {replay_rate:,.0f}/s")
        stats = replay(
            history,
            lambda events: publisher.publish(events, timeout=10),
            replay_rate,
            cfg.label_delay_seconds,
        )
        publisher.close()
        wait_for_updates(stack, stats.transactions + stats.labels)
        step(
            f"replayed {stats.transactions:,} transactions, {stats.labels:,} labels in {stats.seconds:.1f}s; "
            f"sending {len(live):,} live POST /predict requests"
        )

        latencies: list[float] = []
        flagged = caught = degraded = errors = 0
        version = ""
        for row in live.to_dict("records"):
            started = time.perf_counter()
            status, answer = post_json(f"{stack.api_url}/predict", predict_body(row))
            latencies.append((time.perf_counter() - started) * 1000)
            if status != 200:
                errors += 1
                continue
            version = answer["model_version"]
            flagged += int(answer["is_fraud"])
            caught += int(answer["is_fraud"] and row["is_fraud"] == 1)
            degraded += int(answer["degraded"])
        summary = DemoSummary(
            requests=len(live),
            flagged=flagged,
            frauds=int(live["is_fraud"].sum()),
            caught=caught,
            degraded=degraded,
            errors=errors,
            p50_ms=float(np.percentile(latencies, 50)) if latencies else 0.0,
            p99_ms=float(np.percentile(latencies, 99)) if latencies else 0.0,
            max_ms=max(latencies, default=0.0),
            replayed=stats.transactions,
            replay_seconds=stats.seconds,
            model_version=version,
        )
        if keep_running:
            step(f"the API stays up at {stack.api_url} (POST /predict, GET /health, GET /metrics); Ctrl-C")
            serve_forever(stack)
        return summary
    finally:
        stack.down()


def serve_forever(stack: LocalStack) -> None:
    try:
        while True:
            stack.check()
            time.sleep(1.0)
    except KeyboardInterrupt:
        return
