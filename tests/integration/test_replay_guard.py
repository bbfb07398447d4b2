"""A replay that compresses months into seconds stays within the slack of what the updater has
applied (``local_stack.replay``): the real broker, two partitions per topic, the real poller in
front of a consumer slower than the replay."""

import base64
import json
import threading
import time
from datetime import datetime
from typing import Any

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from bench.synthetic import kaggle_like_frame
from fraud_adapters.publisher import KafkaPublisher
from fraud_core import spec
from fraud_core.schemas import LabelEvent, TransactionEvent
from local_stack.events import StreamRecord
from local_stack.poller import KafkaPoller, PollerConfig
from local_stack.replay import ConsumerProgress, replay
from tests.support.services import Service

pytestmark = pytest.mark.integration


def _time(event: TransactionEvent | LabelEvent) -> int:
    moment = event.transaction_time if isinstance(event, TransactionEvent) else event.label_time
    return int(moment.timestamp())


def _record_id(value: dict[str, Any]) -> str:
    return ("L:" if "label_time" in value else "T:") + str(value["trans_num"])


def test_the_replay_never_runs_more_than_the_slack_ahead_of_a_slow_updater(kafka_service: Service) -> None:
    # given two topics of two partitions each, and a consumer (the real poller) that handles
    # ~2,000 records/s, a tenth of the replay's rate
    servers = f"127.0.0.1:{kafka_service.port}"
    name = f"guard-{time.monotonic_ns()}"
    topics = (f"{name}.tx", f"{name}.labels")
    admin = KafkaAdminClient(bootstrap_servers=servers)
    admin.create_topics([NewTopic(t, num_partitions=2, replication_factor=1) for t in topics])
    admin.close()
    handled: set[str] = set()
    lock = threading.Lock()

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        values = [json.loads(base64.b64decode(r["value"])) for rs in event["records"].values() for r in rs]
        time.sleep(len(values) / 2000)
        with lock:
            handled.update(_record_id(v) for v in values)
        return {"batchItemFailures": []}

    def dead_letter(records: list[StreamRecord], reason: str) -> None:
        raise AssertionError(f"dead-lettered: {reason}")

    cfg = PollerConfig(servers, topics, group_id=name, batch_size=100, batching_window=0.05)
    poller = KafkaPoller(cfg, handler, dead_letter).start()
    publisher = KafkaPublisher(servers, topics[0], topics[1], card_key=lambda cc: cc)
    # ~100 days of a stream: ~60 records a day, so the slack is a few batches
    frame = kaggle_like_frame(6000, n_cards=300, n_merchants=50, days=100, seed=3, fraud_rate=0.02)
    sent: list[tuple[int, str]] = []
    violations: list[str] = []

    def publish(events: list[TransactionEvent | LabelEvent]) -> None:
        # when the replay publishes, then every record older than the slack was handled before
        front = min(_time(e) for e in events)
        with lock:
            missing = [rid for t, rid in sent if t < front - spec.HISTORY_SLACK and rid not in handled]
        if missing:
            violations.append(f"at {datetime.fromtimestamp(front)}: {len(missing)} unhandled")
        publisher.publish(events, timeout=10)
        sent.extend((_time(e), _record_id(e.model_dump(mode="json"))) for e in events)

    progress = ConsumerProgress(servers, name, topics)
    try:
        stats = replay(frame, publish, 20_000.0, 7 * spec.DAY, applied=progress, stall_timeout=120)
        deadline = time.monotonic() + 120
        while progress() < len(sent) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        progress.close()
        publisher.close()
        poller.stop()

    assert violations == []
    assert stats.transactions == 6000
    assert stats.labels > 0
    # the guard did hold the replay back (the consumer is ten times slower), and every record came
    assert stats.held_seconds > 0.5
    assert handled == {rid for _, rid in sent}


def test_the_guards_count_survives_a_new_broker_incarnation() -> None:
    # given a guard that has counted 30 committed records of a broker, and the broker's group
    # committing through a consumer (the updater's stand-in)
    import os
    import signal

    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient

    from local_stack.incarnation import cluster_id, group_of
    from local_stack.services import free_port, start_kafka

    port = free_port()
    servers = f"127.0.0.1:{port}"
    topic, group = "guarded", "guard-reborn"

    def create() -> None:
        admin = KafkaAdminClient(bootstrap_servers=servers)
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        admin.close()

    def produce_and_commit(count: int) -> None:
        producer = Producer({"bootstrap.servers": servers})
        for k in range(count):
            producer.produce(topic, f"r-{k}".encode(), partition=0)
        assert producer.flush(10) == 0
        # (under the group's name for the incarnation answering, as the poller commits)
        named = group_of(group, cluster_id(AdminClient({"bootstrap.servers": servers})))
        consumer = Consumer({"bootstrap.servers": servers, "group.id": named, "enable.auto.commit": False})
        try:
            consumer.commit(offsets=[TopicPartition(topic, 0, count)], asynchronous=False)
        finally:
            consumer.close()

    old = start_kafka(port)
    new = None
    progress: ConsumerProgress | None = None
    try:
        create()
        progress = ConsumerProgress(servers, group, (topic,))
        produce_and_commit(30)
        assert progress() == 30
        # when the broker is killed and comes back empty (a new cluster id)
        os.killpg(old.process.pid, signal.SIGKILL)
        old.process.wait(10)
        # then while it is away the last count stands (no exception reaches the replay)
        assert progress() == 30
        new = start_kafka(port)
        create()
        # and the new log's commits count on top of what was counted, from its first offset
        produce_and_commit(12)
        deadline = time.monotonic() + 30
        while progress() < 42 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert progress() == 42
        assert progress.incarnations == 1
    finally:
        if progress is not None:
            progress.close()
        old.stop()
        if new is not None:
            new.stop()
