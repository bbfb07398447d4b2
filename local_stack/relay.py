"""The producer journal's relay (``fraud_adapters.journal``): what makes the local stack's
in-memory broker lose nothing it acknowledged.

Every local producer appends its records to the journal before it sends them and marks the
broker's answer there: acknowledged at (partition, offset), or failed. The relay, a thread of the
stack's process, every ``interval`` seconds:

1. asks the broker for its cluster id (a new one per start: ``local_stack.services.start_kafka``)
   and waits while the broker or the stream's topics are missing;
2. reads what the writers appended since the last round;
3. on a new broker incarnation (and at its first round: the broker of ``up`` is new too) every
   record still in the journal is due again, acknowledged or not: the new log has none of them;
4. sends every due record: marked failed, or never marked in a closed segment (its writer died
   or rolled over before the answer came); it counts a record it sent as delivered once the
   broker acknowledges it, in this incarnation;
5. deletes a closed segment once each of its records is delivered in this incarnation and every
   consumer group (the updater, the archiver) has committed past its offset *as this
   incarnation's*: under the group's name for it, ``group_of(group, cluster)``
   (``local_stack.incarnation``), read between two reads of the same cluster id, in two rounds
   at least ``confirm_seconds`` apart.

Why the name: a poller's commit can race a broker restart and land in the new incarnation with
the old log's position, past the offsets the relay sent the new log; counted, it would have the
relay delete records nobody consumed. Such a commit is stored under the old incarnation's name
(the poller names its group with the cluster id it read before fetching: ``local_stack.poller``),
which the relay does not read. A commit found under the current name in the current incarnation
was made by a consumer that read this cluster id before its fetches and committed into this
incarnation after them, so it fetched from this log: a true position here. (Kafka's commit
metadata would carry the same label without renaming the group; tansu does not keep it.) The
second round is no longer what keeps that race out; it only delays a deletion by
``confirm_seconds``.

Re-sending is safe: the updater applies a transaction or a label once (the transaction index),
the lake keeps one copy of each event as it reads. A record is deleted only once consumed by
every group; so the journal holds what is not yet consumed, plus each writer's open segment
(rolled at 8 MB or 30 s) and the rounds it takes to confirm.
"""

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fraud_adapters import journal
from local_stack.incarnation import cluster_id, group_of

log = logging.getLogger(__name__)

# a record's state in the relay: sent by its writer, no answer read yet; acknowledged there;
# to be sent (again) by the relay; sent by the relay, no answer yet; acknowledged to the relay
PENDING, ACKED, DUE, SENDING, RELAYED = range(5)
#: how often (in rounds) the relay compares the broker's log with ``roll_records``
ROLL_CHECK_ROUNDS = 10


@dataclass
class _Segment:
    path: Path
    pos: int = 0  # bytes read
    closed: bool = False
    status: bytearray = field(default_factory=bytearray)  # per record
    # per (topic, partition): the highest offset of its records delivered in this incarnation
    ends: dict[tuple[str, int], int] = field(default_factory=dict)
    topics: list[str] = field(default_factory=list)  # per record
    consumed_since: float | None = None  # first round that found it consumed

    def delivered(self, i: int, how: int, partition: int, offset: int) -> None:
        self.status[i] = how
        key = (self.topics[i], partition)
        self.ends[key] = max(self.ends.get(key, -1), offset)


class JournalRelay:
    def __init__(
        self,
        directory: Path,
        bootstrap: str,
        topics: Sequence[str],
        groups: Sequence[str],
        interval: float = 0.5,
        confirm_seconds: float = 2.0,
        roll_records: int | None = None,
        roll: Callable[[], None] | None = None,
    ) -> None:
        from confluent_kafka import Producer

        self.directory = directory
        self.bootstrap = bootstrap
        self.topics = tuple(topics)
        self.groups = tuple(groups)
        self.interval = interval
        self.confirm_seconds = confirm_seconds
        # the in-memory broker deletes nothing: once its log holds ``roll_records`` and the journal
        # (what would be sent again) less than half that, ``roll`` restarts it (a new, empty log)
        self.roll_records = roll_records
        self.roll = roll
        self.rolls = 0
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": 10_000,
                "reconnect.backoff.max.ms": 1000,
                "logger": logging.getLogger("fraudsys.kafka"),
            }
        )
        self._consumers: dict[str, Any] = {}
        self.cluster: str | None = None
        self.epoch = 0
        self.segments: dict[Path, _Segment] = {}
        # counters (tests, logs)
        self.incarnations = 0
        self.resent = 0  # records sent again (after a failure, a lost broker, a dead writer)
        self.trimmed = 0  # records deleted with their segments
        self.rounds = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------- thread

    def start(self) -> "JournalRelay":
        self._thread = threading.Thread(target=self._run, name="journal-relay", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # the broker gone mid-round...: the next round tries again
                log.warning("journal relay: %s: %s", type(exc).__name__, exc)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
            self._thread = None
        self.producer.flush(5)
        self._close_consumers()

    def _close_consumers(self) -> None:
        for consumer in self._consumers.values():
            with contextlib.suppress(Exception):
                consumer.close()
        self._consumers.clear()

    # -------------------------------------------------------------------------------- rounds

    def cluster_id(self) -> str | None:
        """The broker's cluster id, or None while it (or one of the topics) is missing."""
        try:
            return cluster_id(self.producer, self.topics, timeout=2)
        except Exception as exc:
            log.debug("journal relay: no broker (or no topics): %s", exc)
            return None

    def run_once(self) -> None:
        cluster = self.cluster_id()
        if cluster is None:
            return
        self.rounds += 1
        self._scan()
        if cluster != self.cluster:
            self._new_incarnation(cluster)
        for segment in self.segments.values():
            if segment.closed and PENDING in segment.status:  # its writer died or rolled over first
                segment.status = segment.status.replace(bytes([PENDING]), bytes([DUE]))
        self._send()
        self._trim(cluster)
        if self.roll_records and self.roll is not None and self.rounds % ROLL_CHECK_ROUNDS == 0:
            self._roll_when_full(self.roll_records, self.roll)

    def broker_records(self) -> int:
        """Records in the broker's log (its partitions' high watermarks: tansu's count a last
        batch as one record, close enough for a bound)."""
        from confluent_kafka import TopicPartition

        metadata = self.producer.list_topics(timeout=5)
        consumer = self._consumer(group_of(self.groups[0], self.cluster or ""))
        total = 0
        for topic in self.topics:
            for partition in metadata.topics[topic].partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)
                total += max(high, 0)
        return total

    def _roll_when_full(self, bound: int, roll: Callable[[], None]) -> None:
        if self.journaled() > bound // 2:
            return
        held = self.broker_records()
        if held < bound:
            return
        log.warning(
            "journal relay: the broker holds %d records (bound %d), %d of them in the journal: "
            "rolling it (a new, empty log; the journal's records are sent again)",
            held,
            bound,
            self.journaled(),
        )
        roll()
        self.rolls += 1

    def _new_incarnation(self, cluster: str) -> None:
        records = self.journaled()
        if self.cluster is not None:
            self.incarnations += 1
            log.warning(
                "journal relay: the broker restarted without its log (cluster %s, was %s): "
                "sending the journal's %d records again",
                cluster,
                self.cluster,
                records,
            )
        elif records:
            log.info("journal relay: %d records in the journal: sending them to the new broker", records)
        self.cluster, self.epoch = cluster, self.epoch + 1
        self._close_consumers()  # of the older incarnation's group names
        for segment in self.segments.values():
            segment.status[:] = bytes([DUE]) * len(segment.status)
            segment.ends.clear()
            segment.consumed_since = None

    def _scan(self) -> None:
        for path in journal.segments(self.directory):
            segment = self.segments.get(path)
            if segment is None:
                segment = self.segments[path] = _Segment(path)
            if segment.closed:
                continue
            closed = journal.closed(path)  # before the read: then the read gets all of it
            self._read(segment)
            segment.closed = closed

    def _read(self, segment: _Segment) -> None:
        try:
            with segment.path.open("rb") as f:
                f.seek(segment.pos)
                data = f.read()
        except FileNotFoundError:
            return
        end = 0
        for entry in journal.read_entries(data, 0, len(segment.status)):
            end = entry.end
            if entry.record is not None:  # a record
                segment.status.append(PENDING)
                segment.topics.append(entry.record[0])
            elif entry.kind == journal.ACKED:
                for i, (partition, offset) in enumerate(entry.offsets, start=entry.index):
                    if i < len(segment.status) and segment.status[i] == PENDING:
                        segment.delivered(i, ACKED, partition, offset)
            else:
                for i in range(entry.index, min(entry.index + entry.count, len(segment.status))):
                    if segment.status[i] == PENDING:
                        segment.status[i] = DUE
        segment.pos += end

    def _send(self) -> None:
        due = [s for s in self.segments.values() if DUE in s.status]
        sent = 0
        for segment in due:
            try:
                data = segment.path.read_bytes()
            except FileNotFoundError:
                continue
            for entry in journal.read_entries(data, 0, 0):
                if entry.record is None or entry.index >= len(segment.status):
                    continue  # a marker, or a record read after this round's scan
                if segment.status[entry.index] != DUE:
                    continue
                topic, key, value = entry.record
                segment.status[entry.index] = SENDING
                report = functools.partial(self._delivered, segment, entry.index, self.epoch)
                while True:
                    try:
                        self.producer.produce(topic, value=value, key=key, on_delivery=report)
                        break
                    except BufferError:  # librdkafka's queue is full: let it drain
                        self.producer.poll(0.1)
                sent += 1
        if sent:
            self.resent += sent
            left = self.producer.flush(30)
            log.warning("journal relay: sent %d records again (%d not acknowledged yet)", sent, left)

    def _delivered(self, segment: _Segment, i: int, epoch: int, error: Any, message: Any) -> None:
        if epoch != self.epoch or segment.status[i] != SENDING:
            return  # sent to an earlier incarnation: due again already
        if error is not None:
            segment.status[i] = DUE
            return
        segment.delivered(i, RELAYED, message.partition(), message.offset())

    # -------------------------------------------------------------------------------- trimming

    def _trim(self, cluster: str) -> None:
        done = [
            s
            for s in self.segments.values()
            if s.closed and s.status.count(ACKED) + s.status.count(RELAYED) == len(s.status)
        ]
        if not done:
            return
        partitions = sorted({tp for s in done for tp in s.ends})
        # each group's commits as this incarnation's (a raced commit of an older one is under
        # another name), read from this incarnation (the same cluster id before and after)
        committed = {group: self._committed(group_of(group, cluster), partitions) for group in self.groups}
        if self.cluster_id() != cluster:
            return  # read from a newer incarnation: what is there under this name may be anything
        now = time.monotonic()
        for segment in done:
            consumed = all(
                committed[group].get(tp, -1) > offset
                for group in self.groups
                for tp, offset in segment.ends.items()
            )
            if not consumed:
                segment.consumed_since = None
            elif segment.consumed_since is None:
                segment.consumed_since = now
            elif now - segment.consumed_since >= self.confirm_seconds:
                segment.path.unlink(missing_ok=True)
                del self.segments[segment.path]
                self.trimmed += len(segment.status)

    def _committed(self, group: str, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        from confluent_kafka import TopicPartition

        if not partitions:
            return {}
        answer = self._consumer(group).committed([TopicPartition(t, p) for t, p in partitions], timeout=5)
        return {(tp.topic, tp.partition): tp.offset for tp in answer if tp.error is None}

    def _consumer(self, group: str) -> Any:
        """A consumer of ``group`` (a group's name for an incarnation) that never subscribes: it
        reads the group's offsets."""
        from confluent_kafka import Consumer

        consumer = self._consumers.get(group)
        if consumer is None:
            consumer = self._consumers[group] = Consumer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "group.id": group,
                    "enable.auto.commit": False,
                    "logger": logging.getLogger("fraudsys.kafka"),
                }
            )
        return consumer

    # ---------------------------------------------------------------------------------- state

    def journaled(self) -> int:
        """Records in the journal (not yet deleted) as of the last round."""
        return sum(len(s.status) for s in self.segments.values())
