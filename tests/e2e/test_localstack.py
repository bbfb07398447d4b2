"""cdk.json's ``localstack`` stage, deployed by ``cdklocal`` into LocalStack, and the deployed
handlers (layers included) called there: ``POST /predict`` through LocalStack's API Gateway, the
scored transaction through Kinesis to the updater (Redis) and the archiver (the lake), labels,
the API's own checks (API key, request model) and a poison record in the dead-letter bucket.

One LocalStack for the module: the one at ``$LOCALSTACK_ENDPOINT`` (docker compose; its Lambdas
reach Redis at ``$LOCALSTACK_LAMBDA_REDIS_URL``, the tests at ``$LOCALSTACK_REDIS_URL``), else one
started here without Docker (``localstack_host``: its executor runs the handlers as host
processes) with a redis-server of its own. Skipped when LocalStack is not installed, unless
``FRAUDSYS_REQUIRE_LOCALSTACK=1`` (CI sets it): then that is a failure.
"""

from __future__ import annotations

import io
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from local_stack import localstack
from local_stack.localstack import Deployment, LocalStackError, LocalStackProcess
from local_stack.services import redis_server

pytestmark = [pytest.mark.localstack, pytest.mark.slow]

MERCHANT = "fraud_Kirlin and Sons"
REQUIRE_ENV = "FRAUDSYS_REQUIRE_LOCALSTACK"


def skip_or_fail(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, redis.Redis]]:
    from fraud_adapters.blobs import S3BlobStore
    from fraud_adapters.model_store import ModelStore
    from fraud_adapters.store_marker import StoreMarker
    from tests.support.models import publish_test_model_to

    endpoint = os.environ.get("LOCALSTACK_ENDPOINT")
    running: LocalStackProcess | None = None
    with redis_server() as own_redis:
        if endpoint:  # a LocalStack of the caller's (docker compose)
            if localstack.localstack_health(endpoint) is None:
                skip_or_fail(f"no LocalStack answers at LOCALSTACK_ENDPOINT={endpoint}")
            lambda_redis = os.environ.get("LOCALSTACK_LAMBDA_REDIS_URL", "redis://redis:6379/0")
            store = redis.Redis.from_url(
                os.environ.get("LOCALSTACK_REDIS_URL", "redis://127.0.0.1:6390/0"), decode_responses=True
            )
        else:
            if localstack.host_python() is None:
                skip_or_fail(
                    "LocalStack is not installed (uv sync --project localstack_host --frozen; make setup)"
                )
            root = tmp_path_factory.mktemp("localstack")
            try:
                running = localstack.start_localstack(root)
            except LocalStackError as exc:
                pytest.fail(str(exc))
            endpoint = running.endpoint
            lambda_redis = f"redis://127.0.0.1:{own_redis.port}/0"
            store = redis.Redis(port=own_redis.port, decode_responses=True)
        try:
            deployment = localstack.deploy(endpoint, lambda_redis)
            s3 = localstack.client("s3", endpoint)
            publish_test_model_to(ModelStore(S3BlobStore(deployment.model_store_uri, s3)), "1")
            StoreMarker(store).mark("tests: a new store")  # else every answer is degraded
            timings = {**deployment.timings, "start_s": running.started_in if running else 0.0}
            print(f"\nLocalStack at {endpoint}: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
            yield deployment, store
        finally:
            if running is not None:
                running.stop()


@pytest.fixture(scope="module")
def deployment(stack: tuple[Deployment, redis.Redis]) -> Deployment:
    return stack[0]


@pytest.fixture(scope="module")
def store(stack: tuple[Deployment, redis.Redis]) -> redis.Redis:
    return stack[1]


def call(
    deployment: Deployment, path: str, body: dict[str, Any] | None = None, *, key: bool = True
) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", **({"x-api-key": deployment.api_key} if key else {})}
    request = urllib.request.Request(  # noqa: S310 - LocalStack's URL
        deployment.url(path), data=data, headers=headers, method="POST" if data else "GET"
    )
    try:
        # the first call starts the scorer's process: xgboost, the champion, Redis
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"{}")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def transaction(transaction_id: str) -> dict[str, Any]:
    return {
        "transaction_id": transaction_id,
        "cc_num": "4111111111111111",
        "merchant_name": MERCHANT,
        "category": "shopping_net",
        "amount_usd": 912.4,
        "transaction_time": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "lat": 40.7,
        "long": -74.0,
        "city_pop": 8_000_000,
        "merch_lat": 41.2,
        "merch_long": -75.1,
    }


def merchant_set(merchant: str) -> str:
    """The merchant's transaction set (fraud_adapters.redis_store's layout)."""
    from fraud_adapters.redis_store import merchant_hash

    return f"fs:{{m:{merchant_hash(merchant).hex()}}}:e"


@pytest.fixture(scope="module")
def scored(deployment: Deployment) -> tuple[str, dict[str, Any]]:
    transaction_id = f"ls-{uuid.uuid4().hex[:12]}"
    status, body = call(deployment, "predict", transaction(transaction_id))
    assert status == 200, body
    return transaction_id, body


def test_the_stage_deploys_all_four_functions_and_the_api(deployment: Deployment) -> None:
    assert set(deployment.functions) == {"scorer", "updater", "archiver", "relay"}
    assert {"models", "deadletters", "lake"} <= set(deployment.buckets)
    env = deployment.environment
    assert env["STREAM_KIND"] == "kinesis"
    assert env["KINESIS_STREAM_NAME"] == deployment.stream_name
    assert env["REDIS_CLUSTER"] == "false"
    assert env["MODEL_STORE_URI"].startswith(f"s3://{deployment.buckets['models']}/")
    assert env["PUBLISH_OUTBOX_QUEUE_URL"].startswith("http")  # the publish outbox (SQS)


def test_predict_through_api_gateway_answers_with_the_champion(
    deployment: Deployment, scored: tuple[str, dict[str, Any]]
) -> None:
    transaction_id, body = scored

    assert body["transaction_id"] == transaction_id
    assert body["model_version"] == "1"
    assert isinstance(body["is_fraud"], bool)
    assert 0.0 <= body["fraud_probability"] <= 1.0
    assert body["reasons"], body  # SHAP reasons: the layer's xgboost ran
    assert body.get("degraded") in (False, None), body


def test_health_reports_every_dependency(deployment: Deployment) -> None:
    status, health = call(deployment, "health")

    assert status == 200, health
    assert health["status"] == "ok", health
    assert health["model_version"] == "1"
    assert health["dependencies"]["redis"]["ok"] is True
    assert health["dependencies"]["store"]["ok"] is True


def test_the_api_checks_its_key_and_its_request_model_before_the_scorer(deployment: Deployment) -> None:
    no_key, _ = call(deployment, "predict", transaction("ls-no-key"), key=False)
    bad_type, bad = call(deployment, "predict", {**transaction("ls-bad"), "amount_usd": "lots"})
    bad_time, refused = call(
        deployment, "predict", {**transaction("ls-bad"), "transaction_time": "not a date"}
    )

    assert no_key == 403  # API key required (usage plan)
    assert bad_type == 400, bad  # the PredictRequest model (API Gateway's validator)
    assert bad_time == 422, refused  # past the model, the scorer's own validation names the field
    assert "transaction_time" in refused["message"]


def test_the_kinesis_event_source_feeds_the_updater_into_redis(
    store: redis.Redis, scored: tuple[str, dict[str, Any]]
) -> None:
    transaction_id, _ = scored

    wait_until(
        lambda: store.zscore(merchant_set(MERCHANT), transaction_id) is not None,
        "the updater to apply the scored transaction",
    )


def test_the_archiver_writes_the_scored_transaction_to_the_lake(
    deployment: Deployment, scored: tuple[str, dict[str, Any]]
) -> None:
    import pyarrow.parquet as pq

    transaction_id, _ = scored
    s3, bucket = localstack.client("s3", deployment.endpoint), deployment.buckets["lake"]

    def archived() -> bool:
        listing = s3.list_objects_v2(Bucket=bucket, Prefix="archive/events/kind=transaction/")
        for obj in listing.get("Contents", []):
            table = pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()))
            if transaction_id in table.column("trans_num").to_pylist():
                return True
        return False

    wait_until(archived, "the archiver to write the transaction to the lake")


def test_labels_for_a_scored_transaction_are_accepted(
    deployment: Deployment, store: redis.Redis, scored: tuple[str, dict[str, Any]]
) -> None:
    transaction_id, _ = scored
    wait_until(  # the label intake resolves ids in the index the updater writes
        lambda: store.zscore(merchant_set(MERCHANT), transaction_id) is not None, "the updater"
    )

    def accepted() -> bool:
        status, body = call(deployment, "labels", {"transaction_id": transaction_id, "is_fraud": True})
        assert status == 202, body
        return bool(body["accepted"] == 1)

    wait_until(accepted, "the label to be accepted", timeout=30)
    _, unknown = call(deployment, "labels", {"transaction_id": "ls-never-scored", "is_fraud": True})
    assert unknown["results"] == [{"transaction_id": "ls-never-scored", "status": "unknown_transaction"}]


def test_an_outbox_message_reaches_redis_through_the_relay(
    deployment: Deployment, store: redis.Redis
) -> None:
    """The publish outbox's path as deployed: a record the scorer could not publish, in the outbox
    queue (as ``handlers.predict`` writes it), is sent to Kinesis by the relay (its SQS event
    source mapping) and applied by the updater; the queue is left empty."""
    from fraud_adapters.outbox import SqsOutbox
    from fraud_core.schemas import PredictRequest

    transaction_id = f"ls-outbox-{uuid.uuid4().hex[:8]}"
    event = PredictRequest.model_validate(transaction(transaction_id)).to_event(received_at=datetime.now(UTC))
    # the partition key only places the record (the scorer's is the card's keyed hash)
    record = (deployment.stream_name, b"outbox-e2e-partition-key", event.model_dump_json().encode())
    url = deployment.environment["PUBLISH_OUTBOX_QUEUE_URL"]
    sqs = localstack.client("sqs", deployment.endpoint)

    SqsOutbox(url, sqs).put([record])

    wait_until(
        lambda: store.zscore(merchant_set(MERCHANT), transaction_id) is not None,
        "the relay and the updater to apply the outbox's transaction",
    )

    def drained() -> bool:
        attributes = sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return all(int(attributes[name]) == 0 for name in attributes)

    wait_until(drained, "the relay to delete the outbox's message", timeout=30)


def test_a_poison_record_goes_to_the_dead_letter_bucket(deployment: Deployment) -> None:
    import base64

    s3, kinesis = (
        localstack.client("s3", deployment.endpoint),
        localstack.client("kinesis", deployment.endpoint),
    )
    bucket, marker = deployment.buckets["deadletters"], f"poison-{uuid.uuid4().hex[:8]}"

    kinesis.put_record(
        StreamName=deployment.stream_name, Data=f"not json {marker}".encode(), PartitionKey="x"
    )

    def dead_lettered() -> bool:
        for obj in s3.list_objects_v2(Bucket=bucket, Prefix="updater/").get("Contents", []):
            letter = json.loads(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
            if marker in base64.b64decode(letter["payload_b64"]).decode(errors="replace"):
                return True
        return False

    wait_until(dead_lettered, "the poison record in the dead-letter bucket")


def test_the_localstack_stage_is_the_cdk_app_and_not_a_second_definition() -> None:
    """local_stack/ creates no AWS resources of its own: no boto3 create_* / put_* calls."""
    source = Path(localstack.__file__).read_text(encoding="utf-8")

    for call_name in (
        "create_function",
        "create_rest_api",
        "create_stream",
        "create_bucket",
        "put_role_policy",
    ):
        assert call_name not in source


def test_the_cli_without_localstack_exits_with_the_hint() -> None:
    from typer.testing import CliRunner

    from fraudsys_cli import app
    from local_stack.services import free_port

    result = CliRunner().invoke(
        app,
        ["local", "localstack-deploy", "--endpoint", f"http://127.0.0.1:{free_port()}"],
        env={"COLUMNS": "250"},
    )

    assert result.exit_code == 1
    assert "no LocalStack answers" in result.output
    assert "docker-compose.localstack.yml" in result.output
