"""The local stack's event lake: events published to the local broker are archived by the real
archiver (its own process, its own consumer group) into the local S3, every event once across the
archiver's redelivery, and the lake is still there after the stack went down and came up (the
local S3 keeps it on disk)."""

import io
import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fraud_core.schemas import LabelEvent, TransactionEvent
from handlers import bootstrap
from handlers.settings import settings
from local_stack import s3_snapshot
from local_stack.services import MAX_RESTARTS, ServiceError, Supervisor, free_port, start_moto
from local_stack.stack import (
    ARCHIVER_GROUP,
    LABELS_TOPIC,
    LAKE_BUCKET,
    TRANSACTIONS_TOPIC,
    LocalStack,
    StackConfig,
)
from training.data.lake import LakeData, read_lake

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _transaction(i: int, card: str = "4111111111111111") -> TransactionEvent:
    return TransactionEvent(
        trans_num=f"lake-{i}",
        cc_num=card,
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

    # given a running local stack whose archiver writes the lake to the local S3
    stack = LocalStack(stack_config).up()
    try:
        assert stack_config.lake_uri.startswith(f"s3://{LAKE_BUCKET}/")
        # when transactions and a label go through the local broker
        bootstrap.kafka_publisher(stack_config.kafka).publish([*events, label])
        # then the archiver wrote them to the lake in the local S3
        before = _wait_for_lake(stack_config.lake_uri, 5, 1)
    finally:
        stack.down()
    assert (stack_config.s3_snapshot_dir / LAKE_BUCKET / "archive" / "events").is_dir()
    # (the copy of the last `down` is for reading only: the local S3 keeps its objects on disk)
    shutil.rmtree(stack_config.s3_snapshot_dir)

    # when the stack comes up again (a new S3 server process on the same folder)
    stack = LocalStack(stack_config).up()
    try:
        # then the lake is back, unchanged
        after = read_lake(stack_config.lake_uri)
        assert after.transactions.equals(before.transactions)
        assert after.labels.equals(before.labels)
        assert after.transactions.loc[after.transactions["trans_num"] == "lake-0", "is_fraud"].tolist() == [1]
    finally:
        stack.down()


def _lake_rows(stack: LocalStack) -> int:
    """Rows in the lake's objects, duplicates included (what the reader deduplicates)."""
    import boto3
    import pyarrow.parquet as pq

    s3 = boto3.client("s3", endpoint_url=stack.endpoints()["s3"])
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=LAKE_BUCKET, Prefix="archive/events/")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return sum(
        pq.read_table(io.BytesIO(s3.get_object(Bucket=LAKE_BUCKET, Key=key)["Body"].read())).num_rows
        for key in keys
    )


def _rewind(bootstrap_servers: str, group: str, to: int) -> None:
    """The group's committed offsets moved back to ``to`` on every partition: what a crash between
    the archive's write and the offsets' commit leaves (under the group's name for the broker
    incarnation answering, where its poller commits: ``local_stack.incarnation``)."""
    from confluent_kafka.admin import AdminClient
    from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition

    from local_stack.incarnation import cluster_id, group_of

    named = group_of(group, cluster_id(AdminClient({"bootstrap.servers": bootstrap_servers})))
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=named, enable_auto_commit=False)
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in (TRANSACTIONS_TOPIC, LABELS_TOPIC)
            for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        consumer.assign(partitions)
        ends = consumer.end_offsets(partitions)
        consumer.commit({tp: OffsetAndMetadata(min(to, ends[tp]), "", -1) for tp in partitions})
    finally:
        consumer.close(autocommit=False)


def test_the_archiver_consumes_on_its_own_and_the_lake_reads_every_event_once_across_redelivery(
    stack_config: StackConfig,
) -> None:
    cards = ["4111111111111111", "4000000000000002", "4000000000000010", "4000000000000028"]
    first = [_transaction(i, cards[i % 4]) for i in range(12)]
    second = [_transaction(i, cards[i % 4]) for i in range(12, 20)]
    labels = [
        LabelEvent(
            trans_num=tx.trans_num,
            merchant=tx.merchant,
            transaction_time=tx.transaction_time,
            label_time=datetime(2020, 6, 29, i, tzinfo=UTC),
        )
        for i, tx in enumerate(first[:3])
    ]
    # given a running local stack: this process and the updater's without LAKE_URI, the archiver
    # in a process of its own; its supervisor counts restarts over 10 minutes (a loaded machine
    # can take longer than the default minute for the test's six)
    stack = LocalStack(stack_config, supervisor=Supervisor(window=600.0)).up()
    try:
        assert "LAKE_URI" not in os.environ
        assert stack.archiver is not None
        assert stack.archiver.process is not None
        publisher = bootstrap.kafka_publisher(stack_config.kafka)
        publisher.publish([*first, *labels])
        _wait_for_lake(stack_config.lake_uri, 12, 3)

        # when the archiver goes down after writing its batches but before committing them (its
        # offsets back at 3 on every partition: the records from there are delivered again, cut
        # into other batches), more events arrive meanwhile, and it comes back
        archiver_name = stack.archiver.name
        stack.supervisor.hold(archiver_name)  # stopped on purpose: not started again meanwhile
        _rewind(stack_config.kafka, ARCHIVER_GROUP, to=3)
        publisher.publish(second)
        stack.supervisor.resume(archiver_name)
        data = _wait_for_lake(stack_config.lake_uri, 20, 3)
        publisher.close()

        # then the objects hold some events twice, and the lake reads every event exactly once
        assert _lake_rows(stack) > 23
        assert sorted(data.transactions["trans_num"]) == sorted(tx.trans_num for tx in [*first, *second])
        assert sorted(data.labels["trans_num"]) == ["lake-0", "lake-1", "lake-2"]
        hashed = bootstrap.card_hasher(settings())
        by_id = data.transactions.set_index("trans_num")
        assert all(by_id.loc[tx.trans_num, "cc_num"] == hashed(tx.cc_num) for tx in [*first, *second])
        assert by_id.loc[["lake-0", "lake-1", "lake-2", "lake-3"], "is_fraud"].tolist() == [1, 1, 1, 0]
        # and the updater, a consumer of its own, applied each event once (the rewind was not its)
        store = bootstrap.feature_store()
        t = int(datetime(2020, 6, 22, tzinfo=UTC).timestamp())

        def applied() -> list[int]:
            return [store.read(card, "fraud_Kirlin and Sons", t).card(t).count[-1] for card in cards]

        deadline = time.monotonic() + 30
        while sum(applied()) < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert applied() == [5, 5, 5, 5]

        # and an archiver that dies (kill -9) is started again by the stack's supervisor, and
        # archives
        archiver = stack.archiver
        assert archiver is not None

        def kill_and_wait_for_a_new_process() -> None:
            process = archiver.process
            assert process is not None
            process.kill()
            process.wait(10)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                stack.check()  # raises once it is given up
                now = archiver.process
                if (
                    stack.supervisor.states()[archiver.name] == "up"  # started: ready
                    and now is not None
                    and now.pid != process.pid
                    and now.poll() is None
                ):
                    return
                time.sleep(0.1)
            raise AssertionError("the archiver was not started again")

        kill_and_wait_for_a_new_process()
        publisher = bootstrap.kafka_publisher(stack_config.kafka)
        publisher.publish([_transaction(20, cards[0])])
        publisher.close()
        _wait_for_lake(stack_config.lake_uri, 21, 3, timeout=60)

        # until it has exited MAX_RESTARTS times within the window: then it is given up and
        # reported like any other part of the stack
        with pytest.raises(ServiceError, match="fraudsys-archiver"):  # noqa: PT012
            for _ in range(MAX_RESTARTS):
                kill_and_wait_for_a_new_process()
        assert stack.supervisor.states()["fraudsys-archiver"] == "failed"
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
