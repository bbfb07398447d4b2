"""``fraudsys backfill``: materialize the online store from the event lake.

For go-live, after a Redis loss, or after a layout change: the events of the last
``delay + 30 days + slack`` (the longest retention of the store) are read from the lake and
applied through the store's own write path (``RedisFeatureStore.apply``, the updater's), so the
state is the one the updater would have built. Safe to run while the stream is live and to run
again: the store's writes are idempotent (a redelivered event changes nothing) and order
independent, so an event both backfilled and streamed counts once. The transaction index (label
intake) is rebuilt with the same transactions. Once every event is applied, the store's fill
marker is written (``fraud_adapters.store_marker``): the scorer serves full features again.
"""

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from itertools import batched

import numpy as np
import pandas as pd

from fraud_adapters.redis_store import ApplyResult, RedisFeatureStore
from fraud_adapters.store_marker import StoreMarker
from fraud_adapters.tx_index import TransactionIndex
from fraud_core.schemas import LabelEvent, TransactionEvent


@dataclass(frozen=True)
class BackfillStats:
    transactions: int
    labels: int
    applied: int
    duplicates: int
    late: int
    seconds: float
    since: int  # epoch seconds: the oldest transaction time backfilled

    @property
    def rate(self) -> float:
        return (self.transactions + self.labels) / self.seconds if self.seconds > 0 else float("inf")


def backfill_window(store: RedisFeatureStore, newest: int) -> int:
    """The oldest transaction time any key of the store keeps when its newest event is ``newest``."""
    return newest - max(store.card_keep, store.merchant_keep)


def lake_start_day(store: RedisFeatureStore, now: int) -> date:
    """The first lake partition (day) a backfill ending at ``now`` needs."""
    return datetime.fromtimestamp(backfill_window(store, now), UTC).date()


def _when(seconds: np.ndarray) -> list[datetime]:
    return [datetime.fromtimestamp(int(t), UTC) for t in seconds.tolist()]


def transaction_events(frame: pd.DataFrame) -> Iterator[TransactionEvent]:
    """Events of the lake's canonical frame, unvalidated (they were validated on the way in):
    ``cc_num`` holds the card hash."""
    dobs = frame["dob"].astype("string").fillna("").tolist() if "dob" in frame else [""] * len(frame)
    columns = zip(
        frame["trans_num"].astype(str).tolist(),
        frame["cc_num"].astype(str).tolist(),
        frame["merchant"].astype(str).tolist(),
        frame["category"].astype(str).tolist(),
        frame["amt"].to_numpy(dtype=np.float64).tolist(),
        _when(frame["event_time"].to_numpy(dtype=np.int64)),
        frame["lat"].to_numpy(dtype=np.float64).tolist(),
        frame["long"].to_numpy(dtype=np.float64).tolist(),
        frame["city_pop"].to_numpy(dtype=np.int64).tolist(),
        frame["merch_lat"].to_numpy(dtype=np.float64).tolist(),
        frame["merch_long"].to_numpy(dtype=np.float64).tolist(),
        dobs,
        strict=True,
    )
    for trans_num, card, merchant, category, amt, when, lat, long, pop, mlat, mlong, dob in columns:
        yield TransactionEvent.model_construct(
            trans_num=trans_num,
            cc_num=card,
            merchant=merchant,
            category=category,
            amt=amt,
            transaction_time=when,
            lat=lat,
            long=long,
            city_pop=pop,
            merch_lat=mlat,
            merch_long=mlong,
            dob=date.fromisoformat(dob[:10]) if dob else None,
            received_at=None,
        )


def label_events(labels: pd.DataFrame) -> Iterator[LabelEvent]:
    """Events of a label-event frame (``training.dataset.LABEL_EVENT_COLUMNS``), unvalidated."""
    columns = zip(
        labels["trans_num"].astype(str).tolist(),
        labels["merchant"].astype(str).tolist(),
        _when(labels["event_time"].to_numpy(dtype=np.int64)),
        _when(labels["label_time"].to_numpy(dtype=np.int64)),
        labels["is_fraud"].to_numpy(dtype=bool).tolist(),
        strict=True,
    )
    for trans_num, merchant, trans_time, arrival, is_fraud in columns:
        yield LabelEvent.model_construct(
            trans_num=trans_num,
            merchant=merchant,
            transaction_time=trans_time,
            label_time=arrival,
            is_fraud=is_fraud,
            cc_num=None,
            reported_at=None,
        )


def backfill(
    transactions: pd.DataFrame,
    labels: pd.DataFrame,
    store: RedisFeatureStore,
    index: TransactionIndex | None = None,
    newest: int | None = None,
    batch: int = 5000,
    on_progress: Callable[[int, int], None] | None = None,
    profiles: pd.DataFrame | None = None,
) -> BackfillStats:
    """Apply the lake's events that the store keeps (transactions dated after
    ``newest - retention``, ``newest`` default: the latest transaction) in batches of ``batch``.

    ``transactions``: the lake's canonical frame (``cc_num`` = card hash); ``labels``: its
    label-event frame; ``profiles``: each card's latest transaction with a date of birth before
    the window (``training.data.lake.latest_dob_transactions``), applied after it: older than
    their card's retention, they are not kept, but they set the card's dob profile as the
    updater's did. ``on_progress(done, total)`` after every batch.
    """
    started = time.perf_counter()
    if newest is None:
        newest = int(transactions["event_time"].max()) if len(transactions) else 0
    since = backfill_window(store, newest)
    tx = transactions.loc[transactions["event_time"].to_numpy(dtype=np.int64) >= since]
    tx = tx.sort_values(["event_time", "trans_num"], kind="stable")
    lab = labels.loc[labels["event_time"].to_numpy(dtype=np.int64) >= since]
    lab = lab.sort_values(["label_time", "trans_num"], kind="stable")
    total, done = len(tx) + len(lab), 0
    applied = duplicates = late = 0

    def count(result: ApplyResult, n: int) -> None:
        nonlocal applied, duplicates, late, done
        applied, duplicates, late = (
            applied + result.applied,
            duplicates + result.duplicates,
            late + len(result.late),
        )
        done += n
        if on_progress is not None:
            on_progress(done, total)

    for transaction_chunk in batched(transaction_events(tx), batch, strict=False):
        count(store.apply(transaction_chunk, [], cards_hashed=True), len(transaction_chunk))
        if index is not None:
            index.put(transaction_chunk, cards_hashed=True)
    for label_chunk in batched(label_events(lab), batch, strict=False):
        count(store.apply([], label_chunk, cards_hashed=True), len(label_chunk))
    if profiles is not None and len(profiles):
        older = profiles.loc[profiles["event_time"].to_numpy(dtype=np.int64) < since]
        for profile_chunk in batched(transaction_events(older), batch, strict=False):
            store.apply(profile_chunk, [], cards_hashed=True)  # late: the profile only
    StoreMarker(store.client, store.prefix).mark("fraudsys backfill")  # complete: full features again
    return BackfillStats(
        transactions=len(tx),
        labels=len(lab),
        applied=applied,
        duplicates=duplicates,
        late=late,
        seconds=time.perf_counter() - started,
        since=since,
    )
