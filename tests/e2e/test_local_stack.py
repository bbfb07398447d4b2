"""End to end on the local stack: real redis-server, tansu broker (log in local S3), moto S3,
the local API Gateway over HTTP and the local MSK event source in front of the real handlers."""

import gc
import json
import os
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis

from fraud_adapters.blobs import open_blob_store
from fraud_adapters.model_store import ModelStore
from fraud_core import spec
from fraud_core.online import request_features
from fraud_core.schemas import LabelEvent, PredictRequest, TransactionEvent
from handlers import bootstrap
from local_stack.demo import post_json, post_labels, predict_body, wait_for_champion
from local_stack.stack import DEAD_LETTER_BUCKET, TRANSACTIONS_TOPIC, LocalStack, StackConfig
from training.config import load_config
from training.pipeline import load_transactions, run_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DELAY = 2 * spec.DAY
NAMES = list(spec.FEATURE_NAMES)


def wait_until(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``condition`` until it is true. A probe that raises (a connection refused or reset, a
    client timeout on a busy machine) counts as not yet: it is tried again until the deadline,
    and the last error is named if it never succeeds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (OSError, redis.RedisError) as exc:  # URLError, timeouts, refused/reset connections
            last_error = exc
        time.sleep(0.2)
    cause = f" (last error: {type(last_error).__name__}: {last_error})" if last_error else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{cause}")


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(
        tmp_path_factory.mktemp("local"),
        label_delay_seconds=DELAY,
        model_pointer_ttl_seconds=1.0,
        max_retries=6,
    ) as local:
        yield local


@contextmanager
def running_stack(run_dir: Path, **settings: Any) -> Iterator[LocalStack]:
    """A local stack on free ports whose poller hands batches over quickly (tests wait less)."""
    fast = {"batch_size": 100, "batching_window": 0.2, "session_timeout_ms": 3000}
    local = LocalStack(StackConfig.on_free_ports(run_dir, **{**fast, **settings})).up()
    try:
        yield local
    finally:
        local.down()


@pytest.fixture(scope="module")
def frame(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    # Given a champion trained, registered, promoted and published to the local S3 model store
    data_dir = tmp_path_factory.mktemp("pipeline")
    cfg = load_config(
        Path("training/configs/default.yaml"),
        overrides={
            "source": {"n_cards": 80, "n_days": 70, "seed": 3},
            "data_dir": str(data_dir),
            "model_store_uri": stack.cfg.model_store_uri,
            "label_delay_seconds": DELAY,
            "split": {"validation_days": 14, "test_days": 14},
            "tuning": {"n_trials": 1, "n_folds": 2, "max_rounds": 40},
        },
    )
    result = run_pipeline(cfg)
    assert result.promoted
    assert ModelStore(open_blob_store(stack.cfg.model_store_uri)).champion_version() == result.version
    return load_transactions(cfg)


def _request(row: Mapping[Any, Any], t: int, trans_num: str) -> dict[str, Any]:
    body = predict_body(row)
    body["transaction_id"] = trans_num
    body["transaction_time"] = datetime.fromtimestamp(t, tz=UTC).isoformat()
    return body


def _features(body: dict[str, Any]) -> dict[str, float]:
    request = PredictRequest.model_validate(body)
    t = int(request.transaction_time.timestamp())
    state = bootstrap.feature_store().read(request.card_id, request.merchant_name, t)
    return dict(zip(NAMES, request_features(request, state, DELAY)[0], strict=True))


def test_health_reports_dependencies(stack: LocalStack, frame: pd.DataFrame) -> None:
    assert stack.api is not None
    status, body = get_json(f"{stack.api.url}/health")
    assert status == 200
    assert body["status"] == "ok"
    assert body["dependencies"]["redis"]["ok"]
    assert body["dependencies"]["model"]["ok"]


def test_the_stack_keeps_its_startup_heap_out_of_full_collections(stack: LocalStack) -> None:
    # a full collection over the ~0.3 million objects of the imports stalled the API's event loop
    # for 0.1-0.35 s under load; frozen after `up`, they are never traversed again
    assert gc.get_freeze_count() > 100_000


def test_scored_transaction_flows_back_into_the_next_score(stack: LocalStack, frame: pd.DataFrame) -> None:
    assert stack.api is not None
    row = frame.iloc[-1].to_dict()
    t0 = int(frame["event_time"].max()) + 3600
    first = _request(row, t0, "e2e-first")
    before = _features({**first, "transaction_time": datetime.fromtimestamp(t0 + 60, tz=UTC).isoformat()})

    # When a transaction is scored over HTTP
    status, answer = post_json(f"{stack.api.url}/predict", first)
    assert status == 200, answer
    assert answer["transaction_id"] == "e2e-first"
    assert 0.0 <= answer["fraud_probability"] <= 1.0
    assert len(answer["reasons"]) == 3

    # Then the scorer's publish reaches the updater through the broker, and the next request sees it
    probe = {**first, "transaction_time": datetime.fromtimestamp(t0 + 60, tz=UTC).isoformat()}
    wait_until(lambda: _features(probe)["card_cnt_1h"] == before["card_cnt_1h"] + 1, what="window count + 1")
    after = _features(probe)
    assert after["card_sum_1h"] == pytest.approx(before["card_sum_1h"] + row["amt"])
    assert after["merch_cnt_24h"] == before["merch_cnt_24h"] + 1


def test_the_updater_runs_in_its_own_process_and_reports_to_metrics(
    stack: LocalStack, frame: pd.DataFrame
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    # the updater is its own function on AWS: locally its own process, so its record decoding and
    # Redis writes share neither the API's GIL nor its collector (the refusal tail under overload)
    assert stack.poller is not None
    assert stack.poller.process is not None
    assert stack.poller.process.pid != os.getpid()
    assert stack.poller.process.poll() is None

    # and what its poller counts still reaches the API's /metrics, once per family
    def families() -> dict[str, Any]:
        assert stack.api is not None
        with urllib.request.urlopen(f"{stack.api.url}/metrics", timeout=5) as response:  # noqa: S310
            text = response.read().decode()
        names = [f.name for f in text_string_to_metric_families(text)]
        assert len(names) == len(set(names)), names
        return {f.name: f for f in text_string_to_metric_families(text)}

    def records() -> float:
        family = families().get("fraudsys_updater_records")
        return sum(s.value for s in family.samples if s.name.endswith("_total")) if family else 0.0

    poller, api = stack.poller, stack.api
    assert api is not None
    before = poller.processed
    body = _request(frame.iloc[-4].to_dict(), int(frame["event_time"].max()) + 5400, "e2e-metrics")
    assert post_json(f"{api.url}/predict", body)[0] == 200
    # (its count is reported every 0.2 s, the metrics file rewritten as often)
    wait_until(lambda: records() >= poller.processed > before, what="the updater's records in /metrics")
    assert "fraudsys_request_latency_seconds" in families()


def test_label_event_changes_the_merchant_fraud_rate(stack: LocalStack, frame: pd.DataFrame) -> None:
    row = frame.iloc[-2].to_dict()
    t0 = int(frame["event_time"].max()) + 7200
    body = _request(row, t0, "e2e-labelled")
    assert stack.api is not None
    assert post_json(f"{stack.api.url}/predict", body)[0] == 200
    later = {
        **body,
        "transaction_id": "probe",
        "transaction_time": datetime.fromtimestamp(t0 + DELAY + 60, tz=UTC).isoformat(),
    }
    wait_until(
        lambda: _features(later)["merch_fraud_rate_7d"] == 0.0 and _features(later)["merch_cnt_7d"] >= 1,
        what="the labelled transaction in the merchant state",
    )
    before = _features(later)

    # When its chargeback arrives on the labels topic
    publisher = bootstrap.kafka_publisher(stack.cfg.kafka)
    publisher.publish(
        [
            LabelEvent(
                trans_num="e2e-labelled",
                merchant=row["merchant"],
                transaction_time=datetime.fromtimestamp(t0, tz=UTC),
                label_time=datetime.fromtimestamp(t0 + 600, tz=UTC),
            )
        ]
    )
    publisher.close()

    # Then the merchant's fraud count and rate go up for requests after the delay
    wait_until(
        lambda: _features(later)["merch_fraud_cnt_7d"] == before["merch_fraud_cnt_7d"] + 1, what="label"
    )
    assert _features(later)["merch_fraud_rate_7d"] > before["merch_fraud_rate_7d"]


def test_new_champion_is_picked_up_without_restart(stack: LocalStack, frame: pd.DataFrame) -> None:
    from tests.support.models import publish_test_model_to

    assert stack.api is not None
    body = _request(frame.iloc[-3].to_dict(), int(frame["event_time"].max()) + 9000, "e2e-champion")
    publish_test_model_to(
        ModelStore(open_blob_store(stack.cfg.model_store_uri)),
        version="999",
        label_delay=stack.cfg.label_delay_seconds,
    )
    assert wait_for_champion(stack, "999", timeout=20) == "999"  # GET /health names it
    assert post_json(f"{stack.api.url}/predict", body)[1]["model_version"] == "999"


def test_chargebacks_through_post_labels_reach_the_lake(stack: LocalStack, frame: pd.DataFrame) -> None:
    from training.data.lake import read_lake

    assert stack.api is not None
    row = frame.iloc[-4].to_dict()
    t0 = int(frame["event_time"].max()) + 10_800
    assert post_json(f"{stack.api.url}/predict", _request(row, t0, "e2e-chargeback"))[0] == 200
    # the id is known once the updater has indexed the scored transaction
    reported = pd.DataFrame({"trans_num": ["e2e-chargeback"]})
    wait_until(lambda: post_labels(stack.api_url, reported) == (1, 1), timeout=60, what="the indexed id")
    # When the bank reports it with a transaction nobody scored
    sent_at = int(time.time())
    both = pd.DataFrame({"trans_num": ["e2e-chargeback", "never-scored"]})
    assert post_labels(stack.api_url, both, batch=1) == (2, 1)  # one request per label

    # Then the lake holds its label, arrived now (both posts: one row if in the same second),
    # for the scored transaction only
    def labels() -> pd.DataFrame:
        found = read_lake(stack.cfg.lake_uri).labels
        return found[found["trans_num"].isin(["e2e-chargeback", "never-scored"])]

    wait_until(
        lambda: bool((labels()["label_time"] >= sent_at).any()), timeout=60, what="the label in the lake"
    )
    found = labels()
    assert set(found["trans_num"]) == {"e2e-chargeback"}
    assert set(found["is_fraud"].tolist()) == {1}
    assert int(found["event_time"].iloc[0]) == t0


def test_poison_record_is_dead_lettered_and_the_stream_goes_on(
    stack: LocalStack, frame: pd.DataFrame
) -> None:
    import boto3
    from kafka import KafkaProducer

    s3 = boto3.client("s3")

    def count() -> int:
        return int(s3.list_objects_v2(Bucket=DEAD_LETTER_BUCKET).get("KeyCount", 0))

    dead_before = count()
    producer = KafkaProducer(bootstrap_servers=stack.cfg.kafka)
    producer.send(TRANSACTIONS_TOPIC, b"{not json")
    producer.send(TRANSACTIONS_TOPIC, json.dumps({"kind": "transaction", "amt": -5}).encode())
    producer.flush()
    producer.close()
    row = frame.iloc[-4].to_dict()
    t0 = int(frame["event_time"].max()) + 10_000
    body = _request(row, t0, "e2e-after-poison")
    probe = {**body, "transaction_time": datetime.fromtimestamp(t0 + 1, tz=UTC).isoformat()}
    before = _features(probe)["card_cnt_1h"]
    assert stack.api is not None
    assert post_json(f"{stack.api.url}/predict", body)[0] == 200
    wait_until(lambda: count() == dead_before + 2, what="two dead letters")
    wait_until(
        lambda: _features(probe)["card_cnt_1h"] == before + 1, what="the valid record after the poison"
    )


def _burst(card: str, t0: int, n: int, offset: int = 0) -> list[TransactionEvent]:
    return [
        TransactionEvent(
            trans_num=f"burst-{card}-{offset + i}",
            cc_num=card,
            merchant="e2e merchant",
            category="misc_net",
            amt=10.0,
            transaction_time=datetime.fromtimestamp(t0 + offset + i, tz=UTC),
            lat=40.0,
            long=-74.0,
            city_pop=1000,
            merch_lat=40.1,
            merch_long=-74.1,
        )
        for i in range(n)
    ]


def _card_count(card: str, t: int) -> int:
    return bootstrap.feature_store().read(card, "e2e merchant", t).card(t).count[-1]  # tiled above 256


def test_broker_restart_duplicates_nothing_and_the_stream_resumes(
    stack: LocalStack, frame: pd.DataFrame
) -> None:
    card, t0 = "5555000011112222", int(frame["event_time"].max()) + 20_000
    publisher = bootstrap.kafka_publisher(stack.cfg.kafka)
    publisher.publish(_burst(card, t0, 150))
    publisher.close()
    # Records the poller has not consumed yet do not survive a restart: the local broker's first
    # start keeps its log in memory (a restart uses the local S3; issue 19, too slow for the
    # demo's replay from the start). So the restart comes once the first burst is applied.
    wait_until(lambda: _card_count(card, t0 + 1000) == 150, timeout=120, what="the first 150")
    # When the broker restarts mid-stream
    stack.restart("kafka")
    publisher = bootstrap.kafka_publisher(stack.cfg.kafka)
    publisher.publish(_burst(card, t0, 150, offset=150), timeout=20)
    publisher.close()
    # Then every transaction is applied exactly once
    wait_until(lambda: _card_count(card, t0 + 1000) == 300, timeout=120, what="300 transactions")
    time.sleep(1.0)
    assert _card_count(card, t0 + 1000) == 300


def test_redis_restart_degrades_then_recovers(stack: LocalStack, frame: pd.DataFrame) -> None:
    assert stack.api is not None
    body = _request(frame.iloc[-5].to_dict(), int(frame["event_time"].max()) + 30_000, "e2e-degraded")
    stack.supervisor.hold("redis")  # down on purpose: the supervisor does not restart it
    try:
        # While Redis is down the scorer answers from the request-only model, flagged degraded
        status, answer = post_json(f"{stack.api.url}/predict", body)
        assert status == 200, answer
        assert answer["degraded"] is True
        assert answer["model_version"].endswith("-baseline")
        health_status, health = get_json(f"{stack.api.url}/health")
        assert health_status == 200
        assert health["status"] == "degraded"
    finally:
        stack.restart("redis")
    # and the updater's retries apply the published transaction once Redis is back
    probe = {
        **body,
        "transaction_time": datetime.fromtimestamp(
            int(frame["event_time"].max()) + 30_060, tz=UTC
        ).isoformat(),
    }
    wait_until(lambda: _features(probe)["card_cnt_1h"] >= 1, timeout=60, what="the retried batch")
    status, answer = post_json(f"{stack.api.url}/predict", {**body, "transaction_id": "e2e-recovered"})
    assert status == 200
    assert answer["degraded"] is False
