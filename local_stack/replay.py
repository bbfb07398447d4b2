"""``fraudsys local replay``: a transaction stream into the broker at a given rate, with labels
(chargebacks) following their transactions after the label delay (in event time)."""

import heapq
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import pandas as pd

from fraud_core.schemas import LabelEvent, TransactionEvent

Event = TransactionEvent | LabelEvent


@dataclass(frozen=True)
class ReplayStats:
    transactions: int
    labels: int
    seconds: float

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


def replay(
    frame: pd.DataFrame,
    publish: Callable[[list[Event]], None],
    rate: float,
    label_delay: int,
    chunk: int = 200,
    on_progress: Callable[[int, int], None] | None = None,
) -> ReplayStats:
    """Send ``frame`` as a stream at ``rate`` transactions per second (wall clock)."""
    started = time.perf_counter()
    sent_tx = sent_labels = 0
    batch: list[Event] = []

    def flush() -> None:
        if batch:
            publish(batch)
            batch.clear()
            if on_progress is not None:
                on_progress(sent_tx, sent_labels)

    for _, event in timeline(frame, label_delay):
        batch.append(event)
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
    return ReplayStats(sent_tx, sent_labels, time.perf_counter() - started)
