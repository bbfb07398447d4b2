"""``POST /labels`` through API Gateway REST proxy events: transactions indexed by the real updater
in a real redis-server, labels published to the real local Kafka-protocol broker."""

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from fraud_core.online import OnlineState, risk_frauds
from fraud_core.schemas import MAX_LABELS_PER_REQUEST, LabelEvent
from handlers import bootstrap, predict, update_features
from handlers.settings import settings
from tests.support.events import FakeContext, a_request, api_gateway_event, kinesis_event, msk_event
from tests.support.services import Service

pytestmark = pytest.mark.integration

MERCHANT = "fraud_Kirlin and Sons"
T0 = datetime(2020, 1, 1, tzinfo=UTC)
ONE = {"transaction_id": "tx-a", "is_fraud": True}


def call(body: Any = None, raw: str | None = None) -> tuple[int, dict[str, Any]]:
    response = predict.handler(api_gateway_event("POST", "/labels", body, raw), FakeContext())
    return int(response["statusCode"]), json.loads(response["body"] or "{}")


def consume(port: int, topic: str, expected: int) -> list[tuple[bytes, LabelEvent]]:
    consumer = KafkaConsumer(bootstrap_servers=f"127.0.0.1:{port}", consumer_timeout_ms=3000)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records = [(r.key, LabelEvent.model_validate_json(r.value)) for r in consumer]
    finally:
        consumer.close()
    assert len(records) == expected, records
    return records


@pytest.fixture
def topic(lambda_env: Path, kafka_service: Service, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The handler environment with Kafka on fresh topics; transactions tx-a (T0) and tx-b
    (T0 + 1 h, another merchant) applied and indexed by the real updater."""
    run = uuid.uuid4().hex[:8]
    monkeypatch.setenv("STREAM_KIND", "kafka")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{kafka_service.port}")
    monkeypatch.setenv("TRANSACTIONS_TOPIC", f"tx-{run}")
    monkeypatch.setenv("LABELS_TOPIC", f"labels-{run}")
    bootstrap.reset()
    transactions = [
        a_request(transaction_id="tx-a", merchant_name=MERCHANT, transaction_time=T0).to_event(),
        a_request(
            transaction_id="tx-b", merchant_name="Café Zoë", transaction_time=T0 + timedelta(hours=1)
        ).to_event(),
    ]
    records = [(f"tx-{run}", tx.model_dump_json().encode()) for tx in transactions]
    assert update_features.handler(msk_event(records), FakeContext()) == {"batchItemFailures": []}
    yield f"labels-{run}"
    bootstrap.publisher().close()
    bootstrap.reset()


def test_one_label_is_resolved_and_published_with_the_receipt_time(
    topic: str, kafka_service: Service
) -> None:
    # given a scored and applied transaction
    before = datetime.now(UTC).replace(microsecond=0)
    # when its chargeback is posted
    status, body = call({"transaction_id": "tx-a", "is_fraud": True, "reported_at": "2020-01-03T10:00:00Z"})
    # then 202 with its outcome and the counts
    assert status == 202, body
    assert body["results"] == [{"transaction_id": "tx-a", "status": "accepted"}]
    assert (body["accepted"], body["unknown"]) == (1, 0)
    # and one label event on the labels topic, keyed by merchant, placed at the transaction
    [(key, event)] = consume(kafka_service.port, topic, 1)
    assert key == MERCHANT.encode()
    assert (event.trans_num, event.merchant, event.transaction_time) == ("tx-a", MERCHANT, T0)
    assert event.is_fraud is True
    assert event.reported_at == datetime(2020, 1, 3, 10, tzinfo=UTC)
    # and its arrival is the receipt time, in whole seconds
    assert event.label_time.microsecond == 0
    assert before <= event.label_time <= datetime.now(UTC)
    assert event.label_time.isoformat() == datetime.fromisoformat(body["label_time"]).isoformat()
    assert event.cc_num is None


def test_a_batch_with_a_reversal_and_an_unknown_transaction(topic: str, kafka_service: Service) -> None:
    # when a batch holds a chargeback, a reversal and a label for a transaction never seen
    labels = [
        {"transaction_id": "tx-a", "is_fraud": True},
        {"transaction_id": "never-scored", "is_fraud": True},
        {"transaction_id": "tx-b", "is_fraud": False},
    ]
    status, body = call({"labels": labels})
    # then each label has its outcome, in order
    assert status == 202, body
    assert [r["status"] for r in body["results"]] == ["accepted", "unknown_transaction", "accepted"]
    assert (body["accepted"], body["unknown"]) == (2, 1)
    # and only the two resolved labels are published; the reversal as is_fraud=false
    events = {event.trans_num: event for _, event in consume(kafka_service.port, topic, 2)}
    assert sorted(events) == ["tx-a", "tx-b"]
    assert events["tx-b"].is_fraud is False
    assert (events["tx-b"].merchant, events["tx-b"].transaction_time) == ("Café Zoë", T0 + timedelta(hours=1))


def test_only_unknown_transactions_publish_nothing(topic: str, kafka_service: Service) -> None:
    status, body = call({"labels": [{"transaction_id": "nope-1", "is_fraud": True}]})
    assert status == 202, body
    assert (body["accepted"], body["unknown"]) == (0, 1)
    assert body["results"] == [{"transaction_id": "nope-1", "status": "unknown_transaction"}]
    call({"transaction_id": "tx-a", "is_fraud": True})  # a marker: the topic then holds this one only
    assert [e.trans_num for _, e in consume(kafka_service.port, topic, 1)] == ["tx-a"]


def test_a_retried_post_changes_no_feature(topic: str, kafka_service: Service) -> None:
    # given a chargeback posted and applied by the updater from the labels topic
    assert call({"transaction_id": "tx-a", "is_fraud": True})[0] == 202
    [(_, first)] = consume(kafka_service.port, topic, 1)
    update_features.handler(msk_event([(topic, first.model_dump_json().encode())]), FakeContext())
    t = int((T0 + timedelta(days=9)).timestamp())
    state = bootstrap.feature_store().read("4111111111111111", MERCHANT, t)
    assert state.labels.trans_t.tolist() == [int(T0.timestamp())]
    # when the client retries the same POST and the updater applies the republished label
    assert call({"transaction_id": "tx-a", "is_fraud": True})[0] == 202
    records = consume(kafka_service.port, topic, 2)
    assert [e.is_fraud for _, e in records] == [True, True]
    again = [(topic, event.model_dump_json().encode()) for _, event in records]
    update_features.handler(msk_event(again), FakeContext())
    # then the transaction counts as a fraud over exactly the same time as before (the retry's
    # interval continues the first one), so no feature at any time changes
    after = bootstrap.feature_store().read("4111111111111111", MERCHANT, t)
    assert (
        _fraud_coverage(after) == _fraud_coverage(state) == [(int(T0.timestamp()), state.labels.arrival[0])]
    )


def _fraud_coverage(state: OnlineState) -> list[tuple[int, int]]:
    """(transaction time, from) of each span of time a transaction counts as a fraud, adjacent
    intervals merged; every span here is open-ended (no correction)."""
    spans: list[tuple[int, int, int]] = []
    labels = state.labels
    for trans_t, start, until in zip(labels.trans_t, labels.arrival, labels.until, strict=True):
        if spans and spans[-1][0] == trans_t and spans[-1][2] == start:
            spans[-1] = (spans[-1][0], spans[-1][1], int(until))
        else:
            spans.append((int(trans_t), int(start), int(until)))
    assert all(until == np.iinfo(np.int64).max for _, _, until in spans)
    return [(trans_t, start) for trans_t, start, _ in spans]


def _future() -> str:
    return (datetime.now(UTC) + timedelta(minutes=10)).isoformat()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"is_fraud": True}, "transaction_id"),
        ({"transaction_id": "tx-a", "is_fraud": "yes"}, "is_fraud"),
        ({"transaction_id": "tx-a", "is_fraud": 1}, "is_fraud"),
        ({"transaction_id": "tx-a"}, "is_fraud"),
        ({"transaction_id": "tx-a", "is_fraud": True, "reported_at": "__future__"}, "reported_at"),
        ({"transaction_id": "tx a/1", "is_fraud": True}, "transaction_id"),
        ({"transaction_id": "tx-a", "is_fraud": True, "cc_num": "4111111111111111"}, "cc_num"),
        ({"labels": []}, "labels"),
        ({"labels": [ONE] * (MAX_LABELS_PER_REQUEST + 1)}, "labels"),
        ({"labels": [ONE, {"is_fraud": False}]}, "labels.1.transaction_id"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(topic: str, body: dict[str, Any], field: str) -> None:
    if body.get("reported_at") == "__future__":
        body = {**body, "reported_at": _future()}
    status, answer = call(body)
    assert status == 422, answer
    assert field in answer["message"], answer["message"]
    assert "4111111111111111" not in json.dumps(answer)


def test_a_report_within_the_clock_skew_is_accepted(topic: str) -> None:
    soon = (datetime.now(UTC) + timedelta(minutes=2)).isoformat()
    assert call({"transaction_id": "tx-a", "is_fraud": True, "reported_at": soon})[0] == 202


def test_malformed_json_is_a_422(topic: str) -> None:
    status, answer = call(raw='{"transaction_id": ')
    assert status == 422, answer


def test_redis_unreachable_is_a_503(lambda_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    bootstrap.reset()
    status, answer = call({"transaction_id": "tx-a", "is_fraud": True})
    assert status == 503, answer
    assert "transaction index" in answer["message"]


def test_the_openapi_document_shows_the_route(lambda_env: Path) -> None:
    schema = json.loads(predict.app.get_openapi_json_schema())
    operation = schema["paths"]["/labels"]["post"]
    assert "202" in operation["responses"]
    text = json.dumps(schema)
    assert "LabelRequest" in text
    assert "LabelBatchRequest" in text
    assert "LabelsResponse" in text


def test_on_kinesis_a_published_label_is_applied_as_a_label(lambda_env: Path) -> None:
    # given the intake's event for a chargeback (Kinesis: one stream, kind in the payload)
    event = LabelEvent(
        trans_num="k-1", merchant=MERCHANT, transaction_time=T0, label_time=T0 + timedelta(days=2)
    )
    assert b'"kind":"label"' in event.model_dump_json().encode()
    # when the updater reads it from a Kinesis batch
    response = update_features.handler(kinesis_event([event.model_dump_json().encode()]), FakeContext())
    # then it is applied as a label, not dead-lettered as a bad transaction
    assert response == {"batchItemFailures": []}
    t = int((T0 + timedelta(days=9)).timestamp())
    state = bootstrap.feature_store().read("4111111111111111", MERCHANT, t)
    assert state.latest_frauds == (1, 1)  # its chain is a fraud in both risk windows
    assert risk_frauds(state, t, settings().label_delay_seconds) == [1, 1]
    assert not list((lambda_env / "dead").rglob("*.json"))


def test_an_unreachable_broker_is_a_503_before_the_lambda_timeout(
    topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an indexed transaction and a broker that does not answer
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    bootstrap.reset()
    # when its label is posted, then the answer is a 503 (retry) well inside the 5 s Lambda timeout
    started = time.perf_counter()
    status, answer = call(ONE)
    assert status == 503, answer
    assert "labels stream unavailable" in answer["message"]
    assert time.perf_counter() - started < 4.5
