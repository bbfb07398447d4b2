"""The local stack's event lake: events published to the local broker are archived by the real
updater into the local S3, and the lake is still there after the stack went down and came up."""

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fraud_core.schemas import LabelEvent, TransactionEvent
from handlers import bootstrap
from local_stack import s3_snapshot
from local_stack.services import free_port, start_moto
from local_stack.stack import LAKE_BUCKET, LocalStack, StackConfig
from training.data.lake import LakeData, read_lake

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _transaction(i: int) -> TransactionEvent:
    return TransactionEvent(
        trans_num=f"lake-{i}",
        cc_num="4111111111111111",
        merchant="fraud_Kirlin and Sons",
        category="grocery_pos",
        amt=10.0 + i,
        transaction_time=datetime(2020, 6, 21, 12, i, tzinfo=UTC),
        lat=40.0,
        long=-74.0,
        city_pop=1000,
        merch_lat=40.1,
        merch_long=-74.1,
    )


def _wait_for_lake(uri: str, transactions: int, labels: int, timeout: float = 30.0) -> LakeData:
    deadline = time.monotonic() + timeout
    while True:
        data = read_lake(uri)
        if len(data.transactions) >= transactions and len(data.labels) >= labels:
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"lake has {len(data.transactions)} transactions, {len(data.labels)} labels")
        time.sleep(0.2)


@pytest.fixture
def stack_config(tmp_path: Path) -> StackConfig:
    fast = {"batch_size": 100, "batching_window": 0.2, "session_timeout_ms": 3000}
    return StackConfig.on_free_ports(tmp_path / "run", **fast)


def test_the_lake_lives_in_the_local_s3_and_survives_a_restart(stack_config: StackConfig) -> None:
    events = [_transaction(i) for i in range(5)]
    label = LabelEvent(
        trans_num="lake-0",
        merchant="fraud_Kirlin and Sons",
        transaction_time=events[0].transaction_time,
        label_time=datetime(2020, 6, 29, tzinfo=UTC),
    )

    # given a running local stack whose updater archives to the local S3
    stack = LocalStack(stack_config).up()
    try:
        assert stack_config.lake_uri.startswith(f"s3://{LAKE_BUCKET}/")
        # when transactions and a label go through the local broker
        bootstrap.kafka_publisher(stack_config.kafka).publish([*events, label])
        # then the updater archived them to the lake in the local S3
        before = _wait_for_lake(stack_config.lake_uri, 5, 1)
    finally:
        stack.down()
    assert (stack_config.s3_snapshot_dir / LAKE_BUCKET / "archive" / "events").is_dir()

    # when the stack comes up again (a new, empty moto server)
    stack = LocalStack(stack_config).up()
    try:
        # then the lake is back, unchanged
        after = read_lake(stack_config.lake_uri)
        assert after.transactions.equals(before.transactions)
        assert after.labels.equals(before.labels)
        assert after.transactions.loc[after.transactions["trans_num"] == "lake-0", "is_fraud"].tolist() == [1]
    finally:
        stack.down()


@pytest.fixture
def moto_endpoint() -> Iterator[str]:
    service = start_moto(free_port())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")  # pragma: allowlist secret
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        yield f"http://127.0.0.1:{service.port}"
    service.stop()


def test_snapshot_round_trip_and_a_failed_save_keeps_the_old_snapshot(
    moto_endpoint: str, tmp_path: Path
) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="kept")
    s3.create_bucket(Bucket="not-kept")
    s3.put_object(Bucket="kept", Key="a/b/c.parquet", Body=b"abc")
    s3.put_object(Bucket="not-kept", Key="x", Body=b"x")
    folder = tmp_path / "s3"

    assert s3_snapshot.save(moto_endpoint, folder, ["kept", "missing"]) == 1
    assert (folder / "kept" / "a" / "b" / "c.parquet").read_bytes() == b"abc"
    assert not (folder / "not-kept").exists()

    # a save that fails half-way (the server is gone) leaves the previous snapshot as it was
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever botocore raises for a dead endpoint
        s3_snapshot.save("http://127.0.0.1:1", folder, ["kept"])
    assert (folder / "kept" / "a" / "b" / "c.parquet").read_bytes() == b"abc"

    s3.delete_object(Bucket="kept", Key="a/b/c.parquet")
    s3.delete_bucket(Bucket="kept")
    assert s3_snapshot.restore(moto_endpoint, folder) == 1
    assert s3.get_object(Bucket="kept", Key="a/b/c.parquet")["Body"].read() == b"abc"
