"""The stream publishers against a real Kafka-protocol broker and moto's Kinesis: card numbers
never become record keys, one card's records share a key, and payloads round-trip."""

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from fraud_adapters.journal import ACKED, Journal, read_entries, segments
from fraud_adapters.publisher import KafkaPublisher, KinesisPublisher, kafka_security_config, msk_iam_token
from fraud_adapters.redis_store import CardHasher
from fraud_core.schemas import LabelEvent, TransactionEvent
from tests.support.events import a_request
from tests.support.kafka import consume
from tests.support.services import Service

pytestmark = pytest.mark.integration

CARD = "4111111111111111"
HASHER = CardHasher(b"publisher-test-key-0123456789")


def _transaction(trans_num: str, card: str = CARD) -> TransactionEvent:
    return a_request(transaction_id=trans_num, cc_num=card).to_event()


def _label(trans_num: str) -> LabelEvent:
    return LabelEvent(
        trans_num=trans_num,
        cc_num=CARD,
        merchant="fraud_Kirlin and Sons",
        transaction_time=datetime(2020, 1, 1, tzinfo=UTC),
        label_time=datetime(2020, 1, 8, tzinfo=UTC),
    )


def test_kafka_keys_are_card_hashes_and_payloads_round_trip(kafka_service: Service) -> None:
    # given a publisher on fresh topics
    run = uuid.uuid4().hex[:8]
    publisher = KafkaPublisher(
        f"127.0.0.1:{kafka_service.port}", f"tx-{run}", f"labels-{run}", card_key=HASHER
    )
    sent = [
        _transaction(f"{run}a"),
        _transaction(f"{run}b"),
        _transaction(f"{run}c", card="5500000000000004"),
    ]

    # when transactions and a label are published
    try:
        publisher.publish([*sent, _label(f"{run}a")], timeout=10)
    finally:
        publisher.close()

    # then each transaction is keyed by its card's hash, never the card number
    records = consume(kafka_service.port, f"tx-{run}", len(sent))
    received = {TransactionEvent.model_validate_json(value).trans_num: (key, value) for key, value in records}
    assert sorted(received) == sorted(e.trans_num for e in sent)
    for event in sent:
        key, value = received[event.trans_num]
        assert TransactionEvent.model_validate_json(value) == event
        assert key == HASHER(event.cc_num).encode()
    assert all(CARD.encode() not in key for key, _ in records)
    # and labels by merchant
    labels = consume(kafka_service.port, f"labels-{run}", 1)
    assert labels[0][0] == b"fraud_Kirlin and Sons"


@pytest.fixture
def kinesis() -> Iterator[object]:
    with mock_aws():
        client = boto3.client("kinesis", region_name="us-east-1")
        client.create_stream(StreamName="fraudsys-test", ShardCount=1)
        yield client


def test_kinesis_partition_keys_are_card_hashes(kinesis: object) -> None:
    client = boto3.client("kinesis", region_name="us-east-1")
    publisher = KinesisPublisher("fraudsys-test", card_key=HASHER, client=client)

    publisher.publish([_transaction("k1"), _label("k1")])

    shard = client.list_shards(StreamName="fraudsys-test")["Shards"][0]["ShardId"]
    iterator = client.get_shard_iterator(
        StreamName="fraudsys-test", ShardId=shard, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    keys = [r["PartitionKey"] for r in client.get_records(ShardIterator=iterator)["Records"]]
    assert keys == [HASHER(CARD), "fraud_Kirlin and Sons"]


def test_an_unreachable_broker_fails_the_publish_within_its_timeout() -> None:
    config: dict[str, Any] = {"message.timeout.ms": 300}
    publisher = KafkaPublisher("127.0.0.1:9", card_key=HASHER, **config)
    started = time.perf_counter()
    with pytest.raises((TimeoutError, RuntimeError)):
        publisher.publish([_transaction("t1")], timeout=1.0)
    assert time.perf_counter() - started < 3.0


def test_background_publish_returns_before_the_ack_and_close_delivers(kafka_service: Service) -> None:
    # given a background publisher on a fresh topic
    run = uuid.uuid4().hex[:8]
    publisher = KafkaPublisher(
        f"127.0.0.1:{kafka_service.port}", f"tx-{run}", card_key=HASHER, background=True
    )
    sent = [_transaction(f"{run}{k}") for k in range(20)]

    # when records are published one call each, then the calls return with records still queued
    for event in sent:
        publisher.publish([event])
    assert len(publisher.producer) > 0  # librdkafka: messages not yet acknowledged (100 ms linger)
    publisher.close()  # flushes
    assert len(publisher.producer) == 0

    # and every record reached the topic, keyed by its card's hash, with no late failure
    records = consume(kafka_service.port, f"tx-{run}", len(sent))
    assert sorted(TransactionEvent.model_validate_json(v).trans_num for _, v in records) == sorted(
        e.trans_num for e in sent
    )
    assert publisher.take_late_failures() == 0


def test_background_publish_gathers_records_for_the_linger_then_delivers(kafka_service: Service) -> None:
    # given a background publisher that gathers records for 400 ms (PUBLISH_LINGER_MS)
    run = uuid.uuid4().hex[:8]
    publisher = KafkaPublisher(
        f"127.0.0.1:{kafka_service.port}", f"tx-{run}", card_key=HASHER, background=True, linger_ms=400
    )
    try:
        # when one record is published, then it is still queued well inside the linger
        publisher.publish([_transaction(f"{run}a")])
        time.sleep(0.15)
        publisher.producer.poll(0)
        assert len(publisher.producer) == 1

        # and it is delivered once the linger is over, without a flush
        deadline = time.monotonic() + 10
        while len(publisher.producer) and time.monotonic() < deadline:
            publisher.producer.poll(0.05)
        assert len(publisher.producer) == 0
        assert publisher.take_late_failures() == 0
    finally:
        publisher.close()
    assert len(consume(kafka_service.port, f"tx-{run}", 1)) == 1


def test_background_publish_counts_records_the_broker_never_took() -> None:
    # given a background publisher whose broker is unreachable (300 ms delivery deadline)
    config: dict[str, Any] = {"message.timeout.ms": 300}
    publisher = KafkaPublisher("127.0.0.1:9", card_key=HASHER, background=True, **config)

    # when two records are published, then publish returns, and the failures are counted later
    publisher.publish([_transaction("t1"), _transaction("t2")])
    deadline = time.monotonic() + 5
    failures = 0
    while failures < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        failures += publisher.take_late_failures()
    assert failures == 2
    assert publisher.take_late_failures() == 0  # taken once


def test_msk_iam_settings_sign_oauthbearer_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    # given the deployed scorer's environment (cdk_app/constructs/stream.py)
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "AWS_MSK_IAM")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTTESTTESTTEST")  # pragma: allowlist secret
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")

    config = kafka_security_config()

    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "OAUTHBEARER"
    token, expiry = config["oauth_cb"]("")
    assert config["oauth_cb"] is msk_iam_token
    assert len(token) > 100
    assert "=" not in token  # base64url, unpadded, as MSK expects
    assert expiry > time.time()


@pytest.mark.parametrize(
    ("mode", "linger", "expected"),
    [("background", "250", 250), ("background", None, 100), ("sync", "250", 0)],
)
def test_the_scorer_environment_sets_the_publish_linger(
    monkeypatch: pytest.MonkeyPatch, mode: str, linger: str | None, expected: int
) -> None:
    from handlers import bootstrap

    # given the scorer's environment (no broker needs to answer: librdkafka connects lazily)
    monkeypatch.setenv("STREAM_KIND", "kafka")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    monkeypatch.setenv("PUBLISH_MODE", mode)
    if linger is None:
        monkeypatch.delenv("PUBLISH_LINGER_MS", raising=False)
    else:
        monkeypatch.setenv("PUBLISH_LINGER_MS", linger)
    bootstrap.reset()
    try:
        # when the publisher is wired, then background mode lingers as set; sync never does
        publisher = bootstrap.publisher()
        assert isinstance(publisher, KafkaPublisher)
        assert publisher.linger_ms == expected
    finally:
        bootstrap.reset()


def test_background_reports_reach_the_journal_while_the_publisher_is_idle(
    kafka_service: Service, tmp_path: Path
) -> None:
    # given a background publisher that journals its records (the local stack's API)
    run = uuid.uuid4().hex[:8]
    publisher = KafkaPublisher(
        f"127.0.0.1:{kafka_service.port}",
        f"tx-{run}",
        card_key=HASHER,
        background=True,
        journal=Journal(tmp_path),
    )
    try:
        # when it publishes three records and then nothing more (an API gone idle)
        for k in range(3):
            publisher.publish([_transaction(f"{run}{k}")])

        # then the broker's acknowledgements are marked in the journal without a further publish
        # (else the relay would take the records for lost and send them again)
        def acknowledged() -> int:
            data = b"".join(path.read_bytes() for path in segments(tmp_path))
            return sum(e.count for e in read_entries(data, 0, 0) if e.kind == ACKED)

        deadline = time.monotonic() + 10
        while acknowledged() < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert acknowledged() == 3
    finally:
        publisher.close()
