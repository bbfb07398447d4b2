"""The producer journal and its relay (``fraud_adapters.journal``, ``local_stack.relay``) on the
real broker, which these tests start, kill and start again themselves: a publish that failed is
sent again, so is what a restarted broker lost, and a segment is deleted only once every consumer
group has consumed it, in the broker incarnation that holds it."""

import gc
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from fraud_adapters import journal
from fraud_adapters.journal import Journal
from fraud_adapters.publisher import KafkaPublisher
from fraud_core.schemas import TransactionEvent
from local_stack.events import StreamRecord
from local_stack.incarnation import cluster_id, group_of
from local_stack.poller import KafkaPoller, PollerConfig
from local_stack.relay import JournalRelay
from local_stack.services import Service, free_port, start_kafka

pytestmark = pytest.mark.integration

TOPICS = ("j.transactions", "j.labels")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def broker(port: int) -> Service:
    service = start_kafka(port)
    admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}")
    try:
        admin.create_topics([NewTopic(t, num_partitions=2, replication_factor=1) for t in TOPICS])
    finally:
        admin.close()
    return service


def kill(service: Service) -> None:
    os.killpg(service.process.pid, signal.SIGKILL)
    service.process.wait(10)


class Broker:
    """A broker of these tests on its own port; ``restart`` kills it and starts a new, empty one
    there (a new incarnation), as the stack's supervisor or a roll does."""

    def __init__(self) -> None:
        self.port = free_port()
        self.servers = f"127.0.0.1:{self.port}"
        self.services = [broker(self.port)]

    def restart(self) -> None:
        kill(self.services[-1])
        self.services.append(broker(self.port))


@contextmanager
def running_broker() -> Iterator[Broker]:
    started = Broker()
    try:
        yield started
    finally:
        for service in started.services:
            service.stop()


def journal_records(directory: Path, servers: str, count: int, per_call: int) -> KafkaPublisher:
    """``count`` records published ``per_call`` at a time by a writer whose every publish call
    closes its segment; returns its publisher (still open: its last segment too)."""
    sender = publisher(servers, Journal(directory, segment_bytes=1))
    for i in range(0, count, per_call):
        sender.publish([event(k) for k in range(i, i + per_call)], timeout=10)
    return sender


def event(i: int) -> TransactionEvent:
    return TransactionEvent.model_validate(
        {
            "trans_num": f"tx-{i}",
            "cc_num": f"40000000000{i % 7:05d}",
            "merchant": "m",
            "category": "misc_net",
            "amt": 1.0,
            "transaction_time": "2020-06-21T12:00:00Z",
            "lat": 0.0,
            "long": 0.0,
            "city_pop": 1,
            "merch_lat": 0.0,
            "merch_long": 0.0,
        }
    )


def publisher(servers: str, writer: Journal) -> KafkaPublisher:
    return KafkaPublisher(servers, *TOPICS, card_key=lambda cc: cc, journal=writer)


def incarnation(servers: str) -> str:
    """The cluster id of the broker answering at ``servers`` now."""
    from confluent_kafka.admin import AdminClient

    return cluster_id(AdminClient({"bootstrap.servers": servers}), TOPICS)


def consume(servers: str, group: str, want: int, timeout: float = 60.0) -> list[str]:
    """Read both topics as ``group`` from its committed offsets (else the start) until ``want``
    records, commit, and return their transaction ids; as the poller does, under the group's name
    for the broker incarnation read before the first fetch (``local_stack.incarnation``)."""
    consumer = KafkaConsumer(
        bootstrap_servers=servers,
        group_id=group_of(group, incarnation(servers)),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        parts = [TopicPartition(t, p) for t in TOPICS for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(parts)
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while len(seen) < want and time.monotonic() < deadline:
            for records in consumer.poll(500).values():
                seen += [r.value.decode().split('"trans_num":"')[1].split('"')[0] for r in records]
        consumer.commit({tp: OffsetAndMetadata(consumer.position(tp), "", -1) for tp in parts})
        return seen
    finally:
        consumer.close()


@contextmanager
def relay_of(
    directory: Path, servers: str, groups: tuple[str, ...], **options: Any
) -> Iterator[JournalRelay]:
    relay = JournalRelay(directory, servers, TOPICS, groups, interval=0.2, **options).start()
    try:
        yield relay
    finally:
        relay.stop()


def test_a_publish_that_failed_or_was_never_answered_is_sent_again_by_the_relay(tmp_path: Path) -> None:
    with running_broker() as live:
        servers = live.servers
        with relay_of(tmp_path, servers, ("g",)) as relay:
            wait_until(lambda: relay.rounds >= 2, "the relay's first rounds (an empty journal)")
            # given a publish that fails (its producer reaches no broker; its segment stays open)
            writer = Journal(tmp_path)
            nowhere = publisher(f"127.0.0.1:{free_port()}", writer)
            with pytest.raises((TimeoutError, RuntimeError)):
                nowhere.publish([event(i) for i in range(5)], timeout=0.5)
            del nowhere
            gc.collect()
            # then the relay sends its records, and the stream has them
            wait_until(lambda: relay.resent == 5, "the failed records sent again")
            assert sorted(consume(servers, "reader", 5)) == sorted(f"tx-{i}" for i in range(5))

            # given records journaled by a writer that died before any answer (no mark)
            dead = Journal(tmp_path)
            dead.append([publisher(servers, dead).record(event(i)) for i in range(5, 8)])
            wait_until(lambda: relay.journaled() == 8, "read")
            assert relay.resent == 5  # its segment is open: the answer may still come
            dead.close()  # (what a killed process's segment looks like: closed, unanswered)
            wait_until(lambda: relay.resent == 8, "the unanswered records sent")
            assert sorted(consume(servers, "reader", 3)) == ["tx-5", "tx-6", "tx-7"]
        writer.close()


def test_what_a_restarted_broker_lost_is_sent_again_and_trimmed_once_consumed_there(tmp_path: Path) -> None:
    with running_broker() as live:
        servers = live.servers
        # given 40 records acknowledged by the broker and consumed by the group "g" (whose writer
        # has closed its segments: each publish call its own segment)
        journal_records(tmp_path, servers, 40, per_call=10).close()
        assert len(journal.segments(tmp_path)) == 4
        with relay_of(tmp_path, servers, ("g",), confirm_seconds=3600.0) as relay:
            # (its first round sends the journal again: the broker is new to it, as at `up`)
            wait_until(lambda: relay.resent == 40, "the relay's first round")
            assert set(consume(servers, "g", 80)) == {f"tx-{i}" for i in range(40)}
            assert relay.trimmed == 0  # consumed, but not yet confirmed (an hour)

            # when the broker is killed and comes back empty (a new incarnation)
            live.restart()

            # then the relay sends the journal again, and the group's commits of the old broker
            # count for nothing: the records stay until the group consumes them there
            wait_until(lambda: relay.incarnations == 1 and relay.resent == 80, "the journal sent again")
            assert relay.journaled() == 40
        with relay_of(tmp_path, servers, ("g",), confirm_seconds=0.5) as relay:
            # (a new relay: its first round sends the journal again, a duplicate the consumers absorb)
            wait_until(lambda: relay.resent == 40 and relay.rounds >= 3, "rounds on the new broker")
            assert relay.trimmed == 0
            assert len(journal.segments(tmp_path)) == 4
            # and once "g" consumed the new log, every segment is deleted
            assert set(consume(servers, "g", 80)) == {f"tx-{i}" for i in range(40)}
            wait_until(lambda: relay.trimmed == 40, "the journal trimmed")
            assert journal.segments(tmp_path) == []


def test_segments_are_kept_until_every_group_has_consumed_them(tmp_path: Path) -> None:
    with running_broker() as live:
        servers = live.servers
        sender = journal_records(tmp_path, servers, 30, per_call=10)
        # the writer's open (last) segment is never deleted: 20 records in closed segments
        with relay_of(tmp_path, servers, ("updater", "archiver"), confirm_seconds=0.5) as relay:
            wait_until(lambda: relay.resent == 30, "the relay's first round")  # (as at `up`)
            assert len(consume(servers, "updater", 60)) == 60
            wait_until(lambda: relay.rounds >= 10, "rounds")
            assert relay.trimmed == 0  # the archiver has not consumed them
            assert len(consume(servers, "archiver", 60)) == 60
            wait_until(lambda: relay.trimmed == 20, "the closed segments trimmed")
            assert relay.resent == 30  # nothing was lost or failed since
            sender.close()  # its last segment closes: consumed already, it goes too
            wait_until(lambda: relay.trimmed == 30, "the last segment trimmed")
        assert journal.segments(tmp_path) == []


def test_a_full_broker_is_rolled_and_gets_only_what_is_not_consumed(tmp_path: Path) -> None:
    # (a roll is what the stack does: the broker restarted, a new, empty log)
    with running_broker() as live:
        servers = live.servers
        options: dict[str, Any] = {"confirm_seconds": 0.5, "roll_records": 6, "roll": live.restart}
        with relay_of(tmp_path, servers, ("g",), **options) as relay:
            wait_until(lambda: relay.rounds >= 2, "the relay's first rounds (an empty journal)")
            # given 40 records in the broker, consumed (their writer closed: its segments trimmed)
            journal_records(tmp_path, servers, 40, per_call=5).close()
            assert len(consume(servers, "g", 40)) == 40
            # and 2 records of a writer still open, not consumed
            second = Journal(tmp_path)
            other = publisher(servers, second)
            other.publish([event(40), event(41)], timeout=10)
            # when the broker's log passes the bound (6 records) and the journal holds less than
            # half of it: then the broker is rolled once, and only the 2 unconsumed records are
            # sent to the new log
            wait_until(lambda: relay.rolls == 1, "the broker rolled", timeout=120)
            wait_until(lambda: relay.incarnations == 1 and relay.resent == 2, "the journal sent again")
            assert relay.trimmed == 40
            assert sorted(consume(servers, "g", 2)) == ["tx-40", "tx-41"]
            other.close()


def test_a_commit_of_the_old_broker_that_reaches_the_new_one_trims_nothing(tmp_path: Path) -> None:
    """The race a poller's commit runs with a broker restart: it read incarnation A, the broker
    came back as B on the same port, and its commit of A's position (kafka-python reconnects
    transparently) landed in B. A's position is past every record the relay sends B again."""
    groups = ("updater", "archiver")
    with running_broker() as live:
        servers = live.servers
        # given 20 records acknowledged by incarnation A (in closed segments), consumed there by
        # each group, which committed its position past them as A's
        journal_records(tmp_path, servers, 20, per_call=10).close()
        old = incarnation(servers)
        positions = {group: consume_positions(servers, group, 20) for group in groups}
        # when the broker restarts as B, and every group's commit of its A position, made as
        # incarnation A's (its id read before the fetch), reaches B
        live.restart()
        new = incarnation(servers)
        assert new != old
        for group, position in positions.items():
            raced = KafkaConsumer(
                bootstrap_servers=servers, group_id=group_of(group, old), enable_auto_commit=False
            )
            raced.assign(list(position))
            raced.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in position.items()})
            raced.close(autocommit=False)
        with relay_of(tmp_path, servers, groups, confirm_seconds=0.5) as relay:
            # then the relay sends the 20 records to B (at offsets below A's positions) and,
            # many rounds past the confirmation, deletes none of them: not consumed in B
            wait_until(lambda: relay.resent == 20, "the journal sent to B")
            relayed = {
                key: offset for segment in relay.segments.values() for key, offset in segment.ends.items()
            }
            # (the raced commits are past every record sent to B: counted, they would delete it all)
            assert relayed
            assert all(
                position[TopicPartition(*key)] > offset
                for position in positions.values()
                for key, offset in relayed.items()
            )
            settled = relay.rounds
            wait_until(lambda: relay.rounds >= settled + 10, "rounds past confirm_seconds")
            assert relay.trimmed == 0
            assert len(journal.segments(tmp_path)) == 2

            # and the pollers on B read them from B's first record, commit as B's, and then
            # (and only then) the segments are deleted
            seen: dict[str, list[str]] = {group: [] for group in groups}
            options: dict[str, Any] = {"batch_size": 50, "batching_window": 0.05}
            pollers = [
                KafkaPoller(
                    PollerConfig(servers, TOPICS, group_id=group, name=group, **options),
                    collect(seen[group]),
                    refuse,
                ).start()
                for group in groups
            ]
            try:
                wait_until(lambda: relay.trimmed == 20, "the journal trimmed once consumed in B")
            finally:
                for poller in pollers:
                    poller.stop()
            for group in groups:
                assert sorted(set(seen[group])) == sorted(f"tx-{i}" for i in range(20)), group
            assert journal.segments(tmp_path) == []
            assert incarnation(servers) == new


def consume_positions(servers: str, group: str, want: int) -> dict[TopicPartition, int]:
    """``consume``, and the group's position it committed on each partition (past the records it
    read: not the broker's end offsets, which tansu under-reports for batched records)."""
    assert len(consume(servers, group, want)) == want
    consumer = KafkaConsumer(
        bootstrap_servers=servers, group_id=group_of(group, incarnation(servers)), enable_auto_commit=False
    )
    try:
        parts = [TopicPartition(t, p) for t in TOPICS for p in sorted(consumer.partitions_for_topic(t) or ())]
        committed = {tp: consumer.committed(tp) for tp in parts}
        return {tp: offset for tp, offset in committed.items() if offset is not None and offset > 0}
    finally:
        consumer.close(autocommit=False)


def collect(into: list[str]) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """A handler recording the transaction ids of its batches."""
    import base64

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        for records in event["records"].values():
            into.extend(
                base64.b64decode(r["value"]).decode().split('"trans_num":"')[1].split('"')[0] for r in records
            )
        return {"batchItemFailures": []}

    return handler


def refuse(records: list[StreamRecord], reason: str) -> None:
    raise AssertionError(f"dead-lettered: {reason}")
