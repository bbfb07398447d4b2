"""The publish outbox on AWS (``fraud_adapters.outbox``, ``handlers.relay_outbox``): a scored
transaction whose publish failed is kept in SQS (moto) and relayed to the stream (the real tansu
broker, or moto's Kinesis); the updater then holds the features it would have held had the first
publish succeeded. Handlers are called directly with events shaped as Lambda hands them."""

import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import redis
from moto import mock_aws

from fraud_adapters.store_marker import StoreMarker
from handlers import bootstrap, predict, relay_outbox, update_features
from tests.support.events import (
    FakeContext,
    a_request,
    api_gateway_event,
    kinesis_event,
    msk_event,
    sqs_event,
)
from tests.support.kafka import consume
from tests.support.models import publish_test_model
from tests.support.services import Service, free_port

REGION = "eu-west-1"
CARD = "4111111111111111"
T0 = datetime(2020, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """moto, with the outbox queue (KMS-encrypted like the deployed one) and a record of every SQS
    call any boto3 client of the default session makes."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",  # pragma: allowlist secret
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_SQS", raising=False)
    with mock_aws():
        boto3.setup_default_session(region_name=REGION)
        key = boto3.client("kms").create_key()["KeyMetadata"]["KeyId"]
        sqs = boto3.client("sqs")
        url = sqs.create_queue(QueueName="outbox", Attributes={"KmsMasterKeyId": key})["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        calls: list[str] = []
        assert boto3.DEFAULT_SESSION is not None
        boto3.DEFAULT_SESSION.events.register(
            "before-call.sqs", lambda model, **_: calls.append(model.name), unique_id="outbox-test"
        )
        monkeypatch.setenv("PUBLISH_OUTBOX_QUEUE_URL", url)
        yield {"url": url, "arn": arn, "calls": calls}  # type: ignore[dict-item]
        boto3.DEFAULT_SESSION.events.unregister("before-call.sqs", unique_id="outbox-test")
    bootstrap.reset()


def _kafka(monkeypatch: pytest.MonkeyPatch, servers: str, run: str) -> None:
    monkeypatch.setenv("STREAM_KIND", "kafka")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", servers)
    monkeypatch.setenv("TRANSACTIONS_TOPIC", f"tx-{run}")
    monkeypatch.setenv("LABELS_TOPIC", f"labels-{run}")
    monkeypatch.setenv("REDIS_TIMEOUT_MS", "2000")  # a first read of a cold process must not degrade
    bootstrap.reset()
    predict.scorer.cache_clear()


def _answer(transaction_id: str, when: datetime, amount: float = 42.0) -> dict[str, Any]:
    """The scorer's answer to one transaction of the card, whatever its status."""
    body = {
        "transaction_id": transaction_id,
        "cc_num": CARD,
        "merchant_name": "fraud_Kirlin and Sons",
        "category": "shopping_net",
        "amount_usd": amount,
        "transaction_time": when.isoformat().replace("+00:00", "Z"),
        "lat": 40.7,
        "long": -74.0,
        "city_pop": 8000000,
        "merch_lat": 41.2,
        "merch_long": -75.1,
    }
    answer: dict[str, Any] = predict.handler(api_gateway_event("POST", "/predict", body), FakeContext())
    return answer


def _predict(transaction_id: str, when: datetime, amount: float = 42.0) -> dict[str, Any]:
    answer = _answer(transaction_id, when, amount)
    assert answer["statusCode"] == 200, answer
    return answer


def _metrics(out: str) -> dict[str, float]:
    """The metrics Powertools flushed (EMF lines on stdout), summed by name."""
    found: dict[str, float] = {}
    for line in out.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            blob = json.loads(line)
            for directive in blob["_aws"]["CloudWatchMetrics"]:
                for metric in directive["Metrics"]:
                    value = blob[metric["Name"]]
                    found[metric["Name"]] = found.get(metric["Name"], 0) + sum(
                        value if isinstance(value, list) else [value]
                    )
    return found


def _outbox_messages(url: str) -> list[dict[str, Any]]:
    answer = boto3.client("sqs").receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        MessageAttributeNames=["All"],
        AttributeNames=["All"],
        VisibilityTimeout=0,
    )
    messages: list[dict[str, Any]] = answer.get("Messages", [])
    return messages


def _apply(topic: str, values: list[bytes]) -> None:
    """The updater applies ``values`` as one MSK batch (all must succeed)."""
    result = update_features.handler(msk_event([(topic, v) for v in values]), FakeContext())
    assert result == {"batchItemFailures": []}, result


def _features_of_next(when: datetime) -> np.ndarray:
    """The feature row the scorer computes now for the card's next transaction."""
    request = a_request(cc_num=CARD, merchant_name="fraud_Kirlin and Sons", transaction_time=when)
    scored = predict.scorer().score(request)
    assert not scored.response.degraded
    return scored.features


def test_a_failed_publish_goes_to_the_outbox_and_the_answer_stands(
    lambda_env: Path,
    aws: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given a champion, and a broker nobody listens on
    publish_test_model(str(lambda_env / "models"))
    _kafka(monkeypatch, f"127.0.0.1:{free_port()}", uuid.uuid4().hex[:8])
    capsys.readouterr()

    # when a transaction is scored
    answer = _predict("tx-outbox-1", T0)

    # then the answer stands, and the record the stream would have had is in the outbox
    assert json.loads(answer["body"])["transaction_id"] == "tx-outbox-1"
    assert aws["calls"] == ["SendMessageBatch"]
    [message] = _outbox_messages(aws["url"])
    attributes = {k: v["StringValue"] for k, v in message["MessageAttributes"].items()}
    topic, key, _value = bootstrap.publisher().record(a_request(transaction_id="x").to_event())
    assert attributes["topic"] == topic
    assert attributes["key"] == key.decode()  # the card's keyed hash, not its number
    assert CARD not in attributes["key"]
    assert len(attributes["key"]) == 32
    event = json.loads(message["Body"])
    assert event["trans_num"] == "tx-outbox-1"
    assert event["kind"] == "transaction"
    assert event["received_at"] is not None  # the scorer's receipt time travels with it
    metrics = _metrics(capsys.readouterr().out)
    assert metrics["PublishFailures"] == 1
    assert metrics["OutboxWrites"] == 1
    assert "OutboxFailures" not in metrics


def test_with_the_stream_up_nothing_goes_to_the_outbox(
    lambda_env: Path,
    aws: dict[str, Any],
    kafka_service: Service,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    publish_test_model(str(lambda_env / "models"))
    _kafka(monkeypatch, f"127.0.0.1:{kafka_service.port}", uuid.uuid4().hex[:8])
    capsys.readouterr()

    _predict("tx-direct-1", T0)

    assert aws["calls"] == []  # not one SQS call on the happy path
    assert _outbox_messages(aws["url"]) == []
    metrics = _metrics(capsys.readouterr().out)
    assert "PublishFailures" not in metrics
    assert "OutboxWrites" not in metrics


def _stream_and_outbox_down(lambda_env: Path, monkeypatch: pytest.MonkeyPatch, outbox_url: str) -> None:
    """A champion, a broker nobody listens on and an outbox queue that does not exist."""
    publish_test_model(str(lambda_env / "models"))
    _kafka(monkeypatch, f"127.0.0.1:{free_port()}", uuid.uuid4().hex[:8])
    monkeypatch.setenv("PUBLISH_OUTBOX_QUEUE_URL", outbox_url.replace("/outbox", "/no-such-queue"))
    bootstrap.reset()


def test_when_sqs_fails_too_the_transaction_is_not_acknowledged(
    lambda_env: Path,
    aws: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given a stream nobody listens on and an outbox queue that does not exist
    _stream_and_outbox_down(lambda_env, monkeypatch, aws["url"])
    capsys.readouterr()

    # when a transaction is scored
    answer = _answer("tx-lost-1", T0)

    # then it is not acknowledged: 503 with Retry-After, so the caller retries the same transaction
    assert answer["statusCode"] == 503, answer
    headers = {
        **answer.get("headers", {}),
        **{k: v[0] for k, v in answer.get("multiValueHeaders", {}).items()},
    }
    assert int(headers["Retry-After"]) > 0
    message = json.loads(answer["body"])["message"]
    assert "tx-lost-1 could not be recorded" in message
    out = capsys.readouterr().out
    metrics = _metrics(out)
    assert metrics["PublishFailures"] == 1
    assert metrics["OutboxFailures"] == 1
    assert metrics["Unrecorded"] == 1
    assert "OutboxWrites" not in metrics
    [lost] = [r for r in caplog.records if r.getMessage().startswith("outbox write failed")]
    assert lost.levelname == "ERROR"
    assert getattr(lost, "transaction_id", None) == "tx-lost-1"
    assert CARD not in caplog.text
    assert CARD not in out
    assert CARD not in answer["body"]


def test_with_on_unrecorded_score_the_answer_stands_and_the_loss_is_counted(
    lambda_env: Path,
    aws: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given the same double failure, and an issuer that prefers a score to a retry (fail open)
    monkeypatch.setenv("ON_UNRECORDED", "score")
    _stream_and_outbox_down(lambda_env, monkeypatch, aws["url"])
    capsys.readouterr()

    answer = _predict("tx-lost-2", T0)

    assert json.loads(answer["body"])["transaction_id"] == "tx-lost-2"
    metrics = _metrics(capsys.readouterr().out)
    assert metrics["OutboxFailures"] == 1
    assert "Unrecorded" not in metrics


def test_locally_the_journal_keeps_what_the_broker_did_not_take_and_a_failed_journal_is_a_503(
    lambda_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given the local stack's arrangement: a producer journal, no outbox, a broker that is down
    publish_test_model(str(lambda_env / "models"))
    monkeypatch.delenv("PUBLISH_OUTBOX_QUEUE_URL", raising=False)
    monkeypatch.setenv("PUBLISH_JOURNAL_DIR", str(tmp_path / "journal"))
    _kafka(monkeypatch, f"127.0.0.1:{free_port()}", uuid.uuid4().hex[:8])

    # when a transaction is scored, then it is acknowledged: the journal has it for the relay
    _predict("tx-kept-1", T0)
    journaled = b"".join(p.read_bytes() for p in (tmp_path / "journal").iterdir())
    assert b"tx-kept-1" in journaled

    # given a journal that cannot be written (its folder gone: a lost or full disk)
    monkeypatch.setenv("PUBLISH_JOURNAL_DIR", str(tmp_path / "gone"))
    bootstrap.reset()
    bootstrap.publisher()  # the writer makes its folder
    shutil.rmtree(tmp_path / "gone")
    capsys.readouterr()

    # when the next transaction is scored, then it is neither kept nor acknowledged
    answer = _answer("tx-unkept-1", T0 + timedelta(minutes=1))
    assert answer["statusCode"] == 503, answer
    assert "tx-unkept-1 could not be recorded" in json.loads(answer["body"])["message"]
    metrics = _metrics(capsys.readouterr().out)
    assert metrics["Unrecorded"] == 1
    assert metrics["OutboxFailures"] == 1


def test_a_relayed_transaction_gives_the_features_of_a_direct_publish_even_relayed_twice(
    lambda_env: Path,
    aws: dict[str, Any],
    kafka_service: Service,
    monkeypatch: pytest.MonkeyPatch,
    redis_service: Service,
) -> None:
    publish_test_model(str(lambda_env / "models"))
    broker = f"127.0.0.1:{kafka_service.port}"
    later = T0 + timedelta(hours=2)

    # given the features after a publish that succeeded (the reference)
    run = uuid.uuid4().hex[:8]
    _kafka(monkeypatch, broker, run)
    _predict("tx-A", T0, amount=310.0)
    _apply(f"tx-{run}", [v for _, v in consume(kafka_service.port, f"tx-{run}", 1)])
    direct = _features_of_next(later)

    # and a fresh store, the broker unreachable while the same transaction is scored
    store = redis.Redis(port=redis_service.port)
    store.flushall()
    StoreMarker(store).mark("tests: a new store")
    store.close()
    run = uuid.uuid4().hex[:8]
    _kafka(monkeypatch, f"127.0.0.1:{free_port()}", run)
    _predict("tx-A", T0, amount=310.0)
    messages = _outbox_messages(aws["url"])
    assert len(messages) == 1
    event = sqs_event(messages, aws["arn"], REGION)

    # when the relay gets the outbox's message, the broker back
    _kafka(monkeypatch, broker, run)
    assert relay_outbox.handler(event, FakeContext()) == {"batchItemFailures": []}

    # then the stream has the record the scorer would have published, under the card's hash key
    [(key, value)] = consume(kafka_service.port, f"tx-{run}", 1)
    assert key.decode() == messages[0]["MessageAttributes"]["key"]["StringValue"]
    assert value.decode() == messages[0]["Body"]
    _apply(f"tx-{run}", [value])
    np.testing.assert_array_equal(_features_of_next(later), direct)

    # and relayed again (SQS delivers at least once): applied once
    assert relay_outbox.handler(event, FakeContext()) == {"batchItemFailures": []}
    twice = consume(kafka_service.port, f"tx-{run}", 2)
    assert len(twice) == 2
    _apply(f"tx-{run}", [v for _, v in twice])
    np.testing.assert_array_equal(_features_of_next(later), direct)
    dead = lambda_env / "dead"
    assert not dead.exists() or not any(p.is_file() for p in dead.rglob("*"))  # a duplicate, not a conflict


def test_with_the_stream_down_the_relay_reports_each_message_failed(
    lambda_env: Path,
    aws: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given two outbox messages and one that is not an outbox record
    publish_test_model(str(lambda_env / "models"))
    _kafka(monkeypatch, f"127.0.0.1:{free_port()}", uuid.uuid4().hex[:8])
    _predict("tx-B", T0)
    _predict("tx-C", T0 + timedelta(minutes=1))
    boto3.client("sqs").send_message(QueueUrl=aws["url"], MessageBody="{}")
    messages = _outbox_messages(aws["url"])
    assert len(messages) == 3
    capsys.readouterr()

    # when the relay runs while the broker is still down
    monkeypatch.setattr(relay_outbox, "RELAY_TIMEOUT_SECONDS", 1.0)
    result = relay_outbox.process(sqs_event(messages, aws["arn"], REGION), FakeContext())

    # then every message goes back to the queue (partial batch response), none is lost
    failed = {f["itemIdentifier"] for f in result["batchItemFailures"]}
    assert failed == {m["MessageId"] for m in messages}


def test_a_partial_batch_fails_only_the_messages_not_relayed(
    lambda_env: Path,
    aws: dict[str, Any],
    kafka_service: Service,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given an outbox record and a message that is not one
    publish_test_model(str(lambda_env / "models"))
    run = uuid.uuid4().hex[:8]
    _kafka(monkeypatch, f"127.0.0.1:{free_port()}", run)
    _predict("tx-D", T0)
    boto3.client("sqs").send_message(
        QueueUrl=aws["url"],
        MessageBody="{}",
        MessageAttributes={"topic": {"DataType": "String", "StringValue": "elsewhere"}},
    )
    messages = _outbox_messages(aws["url"])
    bad = next(m["MessageId"] for m in messages if m["Body"] == "{}")

    # when the relay runs with the broker up
    _kafka(monkeypatch, f"127.0.0.1:{kafka_service.port}", run)
    result = relay_outbox.handler(sqs_event(messages, aws["arn"], REGION), FakeContext())

    # then only the message that is not an outbox record goes back (to the DLQ in the end)
    assert result == {"batchItemFailures": [{"itemIdentifier": bad}]}
    [(_, value)] = consume(kafka_service.port, f"tx-{run}", 1)
    assert json.loads(value)["trans_num"] == "tx-D"


def test_the_relay_puts_outbox_records_on_kinesis_and_the_updater_applies_them(
    lambda_env: Path, aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a transaction whose Kinesis publish failed (the stream did not exist yet)
    publish_test_model(str(lambda_env / "models"))
    monkeypatch.setenv("STREAM_KIND", "kinesis")
    monkeypatch.setenv("KINESIS_STREAM_NAME", "fraudsys-events")
    bootstrap.reset()
    predict.scorer.cache_clear()
    _predict("tx-K", T0, amount=99.0)
    messages = _outbox_messages(aws["url"])
    assert len(messages) == 1

    # when the relay runs with the stream there
    kinesis = boto3.client("kinesis")
    kinesis.create_stream(StreamName="fraudsys-events", ShardCount=1)
    bootstrap.reset()
    assert relay_outbox.handler(sqs_event(messages, aws["arn"], REGION), FakeContext()) == {
        "batchItemFailures": []
    }

    # then the stream has the record, under the card's hash, and the updater applies it
    shard = kinesis.list_shards(StreamName="fraudsys-events")["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(
        StreamName="fraudsys-events", ShardId=shard, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    [record] = kinesis.get_records(ShardIterator=iterator)["Records"]
    assert record["PartitionKey"] == messages[0]["MessageAttributes"]["key"]["StringValue"]
    assert CARD not in record["PartitionKey"]
    result = update_features.handler(kinesis_event([bytes(record["Data"])]), FakeContext())
    assert result == {"batchItemFailures": []}
    assert "tx-K" in bootstrap.transaction_index().get(["tx-K"])
