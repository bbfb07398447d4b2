"""``fraudsys local replay``: a transaction stream into the broker at a given rate, with labels
(chargebacks) following their transactions after the label delay (in event time).

A replay compresses time: months of history pass in a minute. The stream's partitions are
consumed independently (on AWS each partition's batches are their own invocations), so if the
consumer of one partition fell behind the other by more than a key's retention (30 days + the
1-day slack, in event time: seconds of a fast replay), a merchant that has events on both
partitions would see the lagging partition's events as *late* and dead-letter them. A replay
therefore runs at most ``max_ahead`` (default ``spec.HISTORY_SLACK``) of event time ahead of
what the updater has applied, measured by the updater's committed offsets
(``ConsumerProgress``): within the slack, out-of-order events are applied exactly.
"""

import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import pandas as pd

from fraud_core import spec
from fraud_core.schemas import LabelEvent, TransactionEvent
from local_stack.incarnation import cluster_id, group_of

log = logging.getLogger(__name__)

Event = TransactionEvent | LabelEvent


@dataclass(frozen=True)
class ReplayStats:
    transactions: int
    labels: int
    seconds: float
    #: wall seconds the replay waited for the updater (``applied``) to come within ``max_ahead``
    held_seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.transactions / self.seconds if self.seconds > 0 else float("inf")


def _when(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def transaction_event(row: Mapping[Any, Any]) -> TransactionEvent:
    return TransactionEvent(
        trans_num=str(row["trans_num"]),
        cc_num=str(row["cc_num"]),
        merchant=str(row["merchant"]),
        category=row["category"],
        amt=float(row["amt"]),
        transaction_time=_when(int(row["event_time"])),
        lat=float(row["lat"]),
        long=float(row["long"]),
        city_pop=int(row["city_pop"]),
        merch_lat=float(row["merch_lat"]),
        merch_long=float(row["merch_long"]),
        dob=date.fromisoformat(row["dob"]) if isinstance(row.get("dob"), str) and row["dob"] else None,
    )


def label_event(row: Mapping[Any, Any], label_delay: int) -> LabelEvent:
    t = int(row["event_time"])
    return LabelEvent(
        trans_num=str(row["trans_num"]),
        cc_num=str(row["cc_num"]),
        merchant=str(row["merchant"]),
        transaction_time=_when(t),
        label_time=_when(t + label_delay),
    )


def timeline(
    frame: pd.DataFrame, label_delay: int, labels_until: int | None = None
) -> Iterator[tuple[int, Event]]:
    """Transactions at their time and fraud labels at time + delay, merged in time order.
    Labels arriving after ``labels_until`` (default: the last transaction) are not sent."""
    ordered = frame.sort_values(["event_time", "trans_num"])
    end = int(ordered["event_time"].max()) if labels_until is None else labels_until
    pending: list[tuple[int, str, LabelEvent]] = []
    for row in ordered.to_dict("records"):
        t = int(row["event_time"])
        while pending and pending[0][0] <= t:
            arrival, _, label = heapq.heappop(pending)
            yield arrival, label
        yield t, transaction_event(row)
        if int(row["is_fraud"]) == 1 and t + label_delay <= end:
            heapq.heappush(pending, (t + label_delay, str(row["trans_num"]), label_event(row, label_delay)))
    while pending:
        arrival, _, label = heapq.heappop(pending)
        yield arrival, label


class ConsumerProgress:
    """Records of ``topics`` a consumer group has committed since this object was made (offsets
    past each partition's end at that moment): what the group has handled of what was published
    after it. Other producers' records in the meantime count too (the measure is then generous).

    A new broker incarnation (the in-memory broker restarted or rolled: a new cluster id, a new
    log into which the journal's relay sends what was not consumed, ``local_stack.relay``) keeps
    what was counted before and counts the new log's commits from its first offset: generous
    again (records handled before and sent again count twice), never a count that stalls the
    replay. The group's commits are read under its name for the incarnation answering
    (``local_stack.incarnation.group_of``), the name the poller commits under. While the broker
    cannot answer, the last count stands (no progress)."""

    def __init__(self, bootstrap: str, group: str, topics: Sequence[str]) -> None:
        from confluent_kafka.admin import AdminClient
        from kafka import KafkaConsumer, TopicPartition
        from kafka.admin import KafkaAdminClient

        self.group = group
        self._admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="fraudsys-replay")
        metadata: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": log}
        self._metadata = AdminClient(metadata)
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        try:
            parts = [
                TopicPartition(topic, p)
                for topic in topics
                for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            if not parts:
                raise RuntimeError(f"no partitions for topics {list(topics)} at {bootstrap}")
            self._start: dict[Any, int] = dict(consumer.end_offsets(parts))
        finally:
            consumer.close()
        self._cluster = self._cluster_id()
        self._carried = 0  # counted in earlier incarnations
        self._last = 0
        self.incarnations = 0  # new incarnations seen

    def _cluster_id(self) -> str:
        return cluster_id(self._metadata)

    def __call__(self) -> int:
        try:
            cluster = self._cluster_id()
            if cluster != self._cluster:
                self._carried, self._cluster = self._last, cluster
                self._start = dict.fromkeys(self._start, 0)
                self.incarnations += 1
            group = group_of(self.group, cluster)
            committed = self._admin.list_group_offsets({group: list(self._start)}).get(group, {})
        except Exception as exc:  # the broker away (a restart): no progress until it answers
            log.debug("replay guard: no reading: %s", exc)
            return self._last
        done = self._carried
        for tp, start in self._start.items():
            meta = committed.get(tp)
            if meta is not None and meta.offset >= 0:
                done += max(meta.offset - start, 0)
        self._last = max(self._last, done)
        return self._last

    def close(self) -> None:
        self._admin.close()


def replay(
    frame: pd.DataFrame,
    publish: Callable[[list[Event]], None],
    rate: float,
    label_delay: int,
    chunk: int = 200,
    on_progress: Callable[[int, int], None] | None = None,
    applied: Callable[[], int] | None = None,
    max_ahead: int = spec.HISTORY_SLACK,
    stall_timeout: float = 300.0,
) -> ReplayStats:
    """Send ``frame`` as a stream at ``rate`` transactions per second (wall clock).

    ``applied``: how many of the records sent so far the updater has handled (for example a
    ``ConsumerProgress``). With it, no event is sent while a record more than ``max_ahead``
    seconds older (event time) is still unhandled; ``TimeoutError`` if the updater makes no
    progress for ``stall_timeout`` seconds while the replay waits for it."""
    started = time.perf_counter()
    sent_tx = sent_labels = 0  # taken into the batch (all published once it is flushed)
    batch: list[Event] = []
    last = 0  # event time of the batch's last record
    marks: deque[tuple[int, int]] = deque()  # (event time of a flush's last record, records sent up to it)
    need = done = 0  # records that must be handled before the next send; last reading of applied()
    held = 0.0

    def flush() -> None:
        if batch:
            publish(batch)
            marks.append((last, sent_tx + sent_labels))
            batch.clear()
            if on_progress is not None:
                on_progress(sent_tx, sent_labels)

    def hold(t: int) -> None:
        nonlocal need, done, held
        while marks and marks[0][0] < t - max_ahead:
            need = marks.popleft()[1]
        if applied is None or done >= need:
            return
        began = last_move = time.perf_counter()
        while (now := applied()) < need:
            moment = time.perf_counter()
            if now > done:
                done, last_move = now, moment
            elif moment - last_move > stall_timeout:
                raise TimeoutError(
                    f"the updater handled {now:,} of the {need:,} records the replay waits for "
                    f"and made no progress for {stall_timeout:.0f} s"
                )
            time.sleep(0.05)
        done = now
        held += time.perf_counter() - began

    for t, event in timeline(frame, label_delay):
        hold(t)
        batch.append(event)
        last = t
        if isinstance(event, TransactionEvent):
            sent_tx += 1
            ahead = started + sent_tx / rate - time.perf_counter()
            if ahead > 0.05:
                flush()
                time.sleep(ahead)
        else:
            sent_labels += 1
        if len(batch) >= chunk:
            flush()
    flush()
    return ReplayStats(sent_tx, sent_labels, time.perf_counter() - started, held)
