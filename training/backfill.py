"""``fraudsys backfill``: materialize the online store from the event lake.

For go-live, after a Redis loss, or after a layout change: the events of the last
``delay + 30 days + slack`` (the longest retention of the store) are read from the lake and
written in bulk (``fraud_adapters.bulk``): each card's and merchant's members with one ZADD, then
the store's own apply scripts derive the rest from the sets in the same MULTI/EXEC, so the state
is the one the updater builds from the same events. Labels go through the store's write path
(``RedisFeatureStore.apply``, the updater's). Safe to run while the stream is live and to run
again: members are deterministic (a ZADD of a member already there adds nothing), the derived
keys are functions of the sets, and no updater call runs between a key's ZADD and its script,
so an event both backfilled and streamed counts once. The transaction index (label intake) is
rebuilt with the same transactions and the updater's values. Once every event is written, the
store's fill marker is set (``fraud_adapters.store_marker``): the scorer serves full features again.
"""

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from itertools import batched

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fraud_adapters.bulk import CHUNK, TRANSACTION_COLUMNS, TRANSACTION_SCHEMA, BulkWriter
from fraud_adapters.redis_store import RedisFeatureStore
from fraud_adapters.store_marker import StoreMarker
from fraud_adapters.tx_index import TransactionIndex
from fraud_core.schemas import LabelEvent


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


def lake_columns(frame: pd.DataFrame | pa.Table) -> pa.Table:
    """The columns the bulk writer reads (``fraud_adapters.bulk.TRANSACTION_COLUMNS``): a lake
    table as is, or the lake's canonical frame (``cc_num`` = card hash, ``dob`` ISO text or '')."""
    if isinstance(frame, pa.Table):
        return frame.select(list(TRANSACTION_COLUMNS)).cast(TRANSACTION_SCHEMA)
    columns: dict[str, pa.Array] = {}
    for name in TRANSACTION_COLUMNS:
        values = frame["cc_num" if name == "card" else name]
        if name == "dob":
            text = pc.utf8_slice_codeunits(pa.array(values.astype("string"), pa.string()), 0, 10)
            text = pc.if_else(pc.equal(pc.fill_null(text, ""), ""), pa.scalar(None, pa.string()), text)
            columns[name] = pc.cast(text, pa.date32())
        elif name in ("trans_num", "card", "merchant", "category"):
            columns[name] = pa.array(values.astype("string"), pa.string())
        else:
            columns[name] = pa.array(values.to_numpy())
    return pa.table(columns).cast(TRANSACTION_SCHEMA)


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
    transactions: pd.DataFrame | pa.Table,
    labels: pd.DataFrame,
    store: RedisFeatureStore,
    index: TransactionIndex | None = None,
    newest: int | None = None,
    batch: int = CHUNK,
    on_progress: Callable[[int, int], None] | None = None,
    profiles: pd.DataFrame | pa.Table | None = None,
) -> BackfillStats:
    """Write the lake's events that the store keeps (transactions dated after
    ``newest - retention``, ``newest`` default: the latest transaction), at most ``batch`` events
    per Redis transaction.

    ``transactions``: the lake's canonical frame (``cc_num`` = card hash) or a table of
    ``lake_columns``; ``labels``: its label-event frame; ``profiles``: each card's latest
    transaction with a date of birth before the window (``training.data.lake.latest_dob_transactions``):
    older than their card's retention, they are not kept, but they set the card's dob profile as
    the updater's did. ``on_progress(done, total)`` as the writes are answered.
    """
    started = time.perf_counter()
    table = lake_columns(transactions)
    times = table["event_time"].to_numpy()
    if newest is None:
        newest = int(times.max()) if len(times) else 0
    since = backfill_window(store, newest)
    kept = times >= since
    tx = table if kept.all() else table.filter(pa.array(kept))
    lab = labels.loc[labels["event_time"].to_numpy(dtype=np.int64) >= since]
    lab = lab.sort_values(["label_time", "trans_num"], kind="stable")
    older = lake_columns(profiles) if profiles is not None else None
    if older is not None:
        older = older.filter(pa.array(older["event_time"].to_numpy() < since))
    rows = pa.concat_tables([tx, older]) if older is not None and older.num_rows else tx
    n_indexed = tx.num_rows if index is not None else 0
    total = 2 * rows.num_rows + n_indexed + len(lab)

    with BulkWriter(
        store,
        index,
        chunk=batch,
        on_progress=None if on_progress is None else lambda done: on_progress(done, total),
    ) as writer:
        writer.transactions(rows, indexed=np.arange(rows.num_rows) < tx.num_rows)
    counts = writer.counts
    applied, duplicates, late = counts.applied, counts.duplicates, counts.late
    done = writer.progress()
    for label_chunk in batched(label_events(lab), 5000, strict=False):
        result = store.apply([], label_chunk, cards_hashed=True)
        applied, duplicates, late = (
            applied + result.applied,
            duplicates + result.duplicates,
            late + len(result.late),
        )
        done += len(label_chunk)
        if on_progress is not None:
            on_progress(done, total)
    StoreMarker(store.client, store.prefix).mark("fraudsys backfill")  # complete: full features again
    return BackfillStats(
        transactions=tx.num_rows,
        labels=len(lab),
        applied=applied,
        duplicates=duplicates,
        late=late,
        seconds=time.perf_counter() - started,
        since=since,
    )
