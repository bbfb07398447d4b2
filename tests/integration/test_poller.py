"""The local MSK event source (``local_stack.poller``) on the real broker."""

import contextlib
import gc
import os
import time
from typing import Any

import pytest
from confluent_kafka import Producer
from kafka import KafkaConsumer

from local_stack.events import StreamRecord
from local_stack.poller import FETCH_MAX_BYTES, KafkaPoller, PollerConfig, consumer_options, fetch_bytes
from tests.support.services import Service

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("window", [0.0, 0.2, 1.0, 30.0, 300.0])
def test_consumer_options_are_valid_for_every_batching_window(kafka_service: Service, window: float) -> None:
    # given the poller's consumer settings for a batching window CDK allows (0-300 s)
    options = consumer_options(
        PollerConfig(f"127.0.0.1:{kafka_service.port}", ("t",), batching_window=window), "fraudsys-c"
    )

    # then kafka-python accepts them, and a fetch never waits longer than the window or 0.25 s
    KafkaConsumer(**options).close()
    assert 1 <= options["fetch_max_wait_ms"] <= max(1, min(window, 0.25) * 1000)
    assert options["fetch_max_wait_ms"] < options["request_timeout_ms"]


@pytest.mark.parametrize("batch_size", [1, 100, 10_000])
def test_a_fetch_brings_a_few_batches_at_most(batch_size: int) -> None:
    # given the poller's settings for a batch size CDK allows (1-10,000)
    options = consumer_options(PollerConfig("127.0.0.1:9092", ("t",), batch_size=batch_size), "c")

    # then one fetch brings at most a few batches' worth (kafka-python's default is 50 MB): the
    # decoded records it buffers are what a catch-up leaves the process holding for good
    assert options["fetch_max_bytes"] == options["max_partition_fetch_bytes"] == fetch_bytes(batch_size)
    assert options["fetch_max_bytes"] >= min(4 * batch_size * 512, FETCH_MAX_BYTES)
    assert options["fetch_max_bytes"] <= FETCH_MAX_BYTES


def delivered(cfg: PollerConfig, count: int, timeout: float = 30.0) -> list[bytes]:
    """The values a poller with ``cfg`` hands its handler, in order, once ``count`` came (or after
    ``timeout``); a dead letter fails the test."""
    import base64

    seen: list[bytes] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.extend(base64.b64decode(r["value"]) for rs in event["records"].values() for r in rs)
        return {"batchItemFailures": []}

    def dead_letter(records: list[StreamRecord], reason: str) -> None:
        raise AssertionError(f"dead-lettered: {reason}")

    poller = KafkaPoller(cfg, handler, dead_letter).start()
    try:
        deadline = time.monotonic() + timeout
        while len(seen) < count and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        poller.stop()
    return seen


def test_a_record_larger_than_a_fetch_is_still_delivered(kafka_service: Service) -> None:
    # given a topic whose first record is larger than the most one fetch may bring
    servers = f"127.0.0.1:{kafka_service.port}"
    topic = f"large-{time.monotonic_ns()}"
    large = b"x" * (fetch_bytes(10) + 100_000)
    producer = Producer({"bootstrap.servers": servers, "message.max.bytes": 2 << 20})
    producer.produce(topic, large, partition=0)
    for k in range(3):
        producer.produce(topic, f"r{k}".encode(), partition=0)
    assert producer.flush(10) == 0

    # when a poller reads it, then the large record comes too (the broker returns the first
    # record batch whatever the limit), and the ones after it
    cfg = PollerConfig(servers, (topic,), group_id=topic, batch_size=10, batching_window=0.2)
    assert delivered(cfg, 4) == [large, b"r0", b"r1", b"r2"]


def test_a_batching_window_of_zero_still_delivers(kafka_service: Service) -> None:
    # given records on a topic and a poller whose batching window is 0 (invoke at once)
    servers = f"127.0.0.1:{kafka_service.port}"
    topic = f"window-zero-{time.monotonic_ns()}"
    producer = Producer({"bootstrap.servers": servers})
    for k in range(5):
        producer.produce(topic, f"r{k}".encode())
    assert producer.flush(10) == 0

    # when it runs, then every record reaches the handler
    cfg = PollerConfig(servers, (topic,), group_id=topic, batch_size=100, batching_window=0.0)
    assert sorted(delivered(cfg, 5)) == [f"r{k}".encode() for k in range(5)]


def test_a_busy_poller_follows_a_topic_re_created_with_more_partitions() -> None:
    # given a poller reading a topic of one partition, kept busy by a steady stream
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from local_stack.services import free_port, kafka_broker

    port = free_port()
    servers = f"127.0.0.1:{port}"
    topic = "grows"
    seen: set[bytes] = set()

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        import base64

        seen.update(base64.b64decode(r["value"]) for rs in event["records"].values() for r in rs)
        return {"batchItemFailures": []}

    def dead_letter(records: list[StreamRecord], reason: str) -> None:
        raise AssertionError(f"dead-lettered: {reason}")

    def create(partitions: int) -> int:
        """The topic's partitions: ``partitions``, or tansu's default (4) when a client of the old
        broker re-created it first (the stack's create_topics tolerates that too)."""
        admin = KafkaAdminClient(bootstrap_servers=servers)
        try:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
            (found,) = admin.describe_topics([topic])
            return len(found["partitions"])
        finally:
            admin.close()

    cfg = PollerConfig(servers, (topic,), group_id="grows", batch_size=10, batching_window=0.05)
    cfg = PollerConfig(**{**cfg.__dict__, "idle_rebuild_seconds": 600.0})
    with kafka_broker(port):
        create(1)
        poller = KafkaPoller(cfg, handler, dead_letter).start()
        producer = Producer({"bootstrap.servers": servers})
        try:
            producer.produce(topic, b"before", partition=0)
            assert producer.flush(10) == 0
            deadline = time.monotonic() + 30
            while b"before" not in seen and time.monotonic() < deadline:
                time.sleep(0.05)
            assert b"before" in seen
        finally:
            producer.flush(5)
            del producer  # its reconnects would re-create the topic on the new broker
            gc.collect()
    # when the broker comes back without its log and the topic is created with three partitions
    with kafka_broker(port):
        partitions = create(3)
        assert partitions > 1
        producer = Producer({"bootstrap.servers": servers})
        try:
            # a backlog on every partition: the poller, batches of 10, stays busy through it
            expected = {f"p{partition}-{k}".encode() for k in range(300) for partition in range(partitions)}
            for value in sorted(expected):
                producer.produce(topic, value, partition=int(value[1:2]))
            assert producer.flush(10) == 0
            # then records on every partition are handled
            # (partition 0 too: a new broker incarnation is read from its first record)
            deadline = time.monotonic() + 90
            while not expected <= seen and time.monotonic() < deadline:
                time.sleep(0.1)
            assert expected - seen == set()
        finally:
            poller.stop()


def test_a_poller_reads_a_new_broker_incarnation_from_its_first_record() -> None:
    # given a poller that has read 50 records of an in-memory broker and is still handling them
    import base64
    import signal
    import threading

    from kafka.admin import KafkaAdminClient, NewTopic

    from local_stack.services import free_port, start_kafka

    port = free_port()
    servers = f"127.0.0.1:{port}"
    topic = "reborn"
    seen: list[bytes] = []
    reached, release = threading.Event(), threading.Event()

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        values = [base64.b64decode(r["value"]) for rs in event["records"].values() for r in rs]
        seen.extend(values)
        if b"old-49" in values:  # the old log's last record: hold the batch (and its commit)
            reached.set()
            release.wait(60)
        return {"batchItemFailures": []}

    def dead_letter(records: list[StreamRecord], reason: str) -> None:
        raise AssertionError(f"dead-lettered: {reason}")

    def create() -> None:
        admin = KafkaAdminClient(bootstrap_servers=servers)
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        admin.close()

    def produce(prefix: str, count: int) -> None:
        producer = Producer({"bootstrap.servers": servers})
        for k in range(count):
            producer.produce(topic, f"{prefix}-{k}".encode(), partition=0)
        assert producer.flush(10) == 0

    cfg = PollerConfig(servers, (topic,), group_id="reborn", batch_size=100, batching_window=0.5)
    old = start_kafka(port)
    create()
    produce("old", 50)
    poller = KafkaPoller(cfg, handler, dead_letter).start()
    new = None
    try:
        assert reached.wait(60)
        # when the broker is killed and comes back empty (a new incarnation, a new cluster id), and
        # the new log is longer than the old position (50) before the batch is committed
        os.killpg(old.process.pid, signal.SIGKILL)
        old.process.wait(10)
        new = start_kafka(port)
        create()
        produce("new", 120)
        release.set()
        # then the poller reads the new log from its first record: none of it is skipped
        expected = {f"new-{k}".encode() for k in range(120)}
        deadline = time.monotonic() + 90
        while not expected <= set(seen) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(expected - set(seen)) == []
        assert poller.incarnations == 1
    finally:
        release.set()
        poller.stop()
        old.stop()
        if new is not None:
            new.stop()
