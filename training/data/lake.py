"""The event lake as a training source (layout and schema: ``fraud_adapters.lake``, ``docs/data.md``).

``read_lake`` gives the canonical transaction frame (``cc_num`` holds the card hash) and the
label-event frame (``LABEL_EVENT_COLUMNS``), after the read-time dedupe:

- transactions: one row per ``trans_num``, the earliest arrival (then the earliest ingest, then
  the smallest source) wins;
- labels: one per (``trans_num``, ``label_time``, ``is_fraud``);
- a transaction's ``is_fraud`` is its latest label by arrival known at the read cutoff
  (same-second labels: fraud wins), 0 when it has none.

``training.dataset.label_events_at_delay`` gives the same label-event frame for sources without
arrival times (the Kaggle CSV, the simulator).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fraud_adapters.lake import EVENTS_PREFIX, SCHEMA_VERSION, lake_schema
from fraud_core import spec
from training.data.schema import CANONICAL_COLUMNS, CANONICAL_DTYPES, format_timestamps, sort_frame
from training.dataset import LABEL_EVENT_COLUMNS

if TYPE_CHECKING:
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs


# canonical columns the lake does not hold (the stream's events do not carry them)
_ABSENT_TEXT: Final = ("first", "last", "gender", "street", "city", "state", "job")


@dataclass(frozen=True)
class LakeData:
    transactions: pd.DataFrame  # canonical frame (training.data.schema), cc_num = card hash
    labels: pd.DataFrame  # LABEL_EVENT_COLUMNS


def read_lake(
    uri: str,
    start: date | None = None,
    end: date | None = None,
    cutoff: int | None = None,
) -> LakeData:
    """Transactions dated ``start``..``end`` (days, inclusive; None: open) and every label that
    arrived by ``cutoff`` (epoch seconds; None: all), deduplicated; see the module docstring.

    ``uri``: the lake root (a local folder or ``s3://bucket/prefix``; the ``events/`` folder
    is below it). Only the transaction partitions of the range and the label partitions up to
    the cutoff's day are read.
    """
    dataset = _dataset(uri)
    tx_filter = _day_filter("transaction", start, end)
    cutoff_day = datetime.fromtimestamp(cutoff, UTC).date() if cutoff is not None else None
    label_filter = _day_filter("label", None, cutoff_day)
    if cutoff is not None:
        label_filter &= pc.field("arrival_time") <= cutoff
    transactions = _read(dataset, tx_filter)
    labels = label_frame(_read(dataset, label_filter))
    frame = transaction_frame(transactions)
    return LakeData(with_targets(frame, labels), labels)


def read_lake_transactions(uri: str, start: date | None = None, end: date | None = None) -> pd.DataFrame:
    """The canonical frame of ``read_lake`` (``is_fraud`` = the latest label known now)."""
    return read_lake(uri, start, end).transactions


def empty_label_frame() -> pd.DataFrame:
    return _typed_labels(pd.DataFrame({c: [] for c in LABEL_EVENT_COLUMNS}))


def latest_labels(labels: pd.DataFrame, cutoff: int | None = None) -> pd.Series:
    """``trans_num`` -> 0/1: the latest label by arrival at ``cutoff`` (same second: fraud wins)."""
    known = labels if cutoff is None else labels.loc[labels["label_time"].to_numpy() <= cutoff]
    ordered = known.sort_values(["trans_num", "label_time", "is_fraud"], kind="stable")
    last = ordered.drop_duplicates("trans_num", keep="last")
    return pd.Series(last["is_fraud"].to_numpy(dtype=np.int8), index=last["trans_num"].to_numpy())


def with_targets(frame: pd.DataFrame, labels: pd.DataFrame, cutoff: int | None = None) -> pd.DataFrame:
    """``frame`` with ``is_fraud`` set from ``labels`` (``latest_labels``), 0 where unlabelled."""
    latest = latest_labels(labels, cutoff)
    target = frame["trans_num"].map(latest).fillna(0).to_numpy(dtype=np.int8)
    return frame.assign(is_fraud=target)


def newest_transaction_day(uri: str) -> date | None:
    """The newest day (partition) holding transactions, from the partition names alone: nothing
    is read (``fraudsys backfill`` then reads only the days its window needs)."""
    dataset = _dataset(uri)
    if dataset is None:
        return None
    days = [
        part.removeprefix("dt=")
        for path in dataset.files
        if "kind=transaction/" in path
        for part in path.split("/")
        if part.startswith("dt=")
    ]
    return date.fromisoformat(max(days)) if days else None


def latest_dob_transactions(uri: str, before: date) -> pd.DataFrame:
    """Each card's latest transaction (by time, then ``trans_num``) with a date of birth among
    those dated before ``before`` (the canonical frame): what the online card profile holds for a
    card whose dob came before the store's window (``fraudsys backfill``). Reads three columns
    of the older partitions, then only the rows it keeps."""
    dataset = _dataset(uri)
    if dataset is None:
        return transaction_frame(lake_schema().empty_table())
    # a dob older than spec.DOB_RETENTION before the window is forgotten in both paths
    since = before - timedelta(seconds=spec.DOB_RETENTION + spec.MAX_CARD_WINDOW + spec.HISTORY_SLACK)
    older = _day_filter("transaction", since, before - timedelta(days=1)) & pc.field("dob").is_valid()
    keys = dataset.to_table(columns=["card", "event_time", "trans_num"], filter=older).to_pandas()
    if keys.empty:
        return transaction_frame(lake_schema().empty_table())
    latest = keys.sort_values(["card", "event_time", "trans_num"]).drop_duplicates("card", keep="last")
    wanted = pa.array(latest["trans_num"].astype(str).tolist())
    return transaction_frame(_read(dataset, older & pc.field("trans_num").isin(wanted)))


def transaction_frame(table: pa.Table) -> pd.DataFrame:
    """Lake rows of kind transaction -> the canonical frame, one row per ``trans_num``."""
    if table.num_rows == 0:
        return sort_frame(_canonical({}, 0))
    table = first_arrivals(table)
    columns = {name: table[name] for name in table.column_names}
    return sort_frame(_canonical(columns, table.num_rows))


def first_arrivals(table: pa.Table) -> pa.Table:
    """Lake rows of kind transaction, one per ``trans_num``: the earliest arrival (then ingest,
    then source) wins; ordered by ``trans_num``."""
    if table.num_rows == 0:
        return table
    order = pc.sort_indices(
        table,
        sort_keys=[
            ("trans_num", "ascending"),
            ("arrival_time", "ascending"),
            ("ingest_time", "ascending"),
            ("source", "ascending"),
        ],
    )
    table = table.take(order)
    trans_num = table["trans_num"].combine_chunks()
    first = np.ones(table.num_rows, dtype=bool)
    first[1:] = pc.not_equal(trans_num[1:], trans_num[:-1]).to_numpy(zero_copy_only=False)
    return table.filter(pa.array(first))


def read_lake_tables(
    uri: str, start: date | None = None, end: date | None = None
) -> tuple[pa.Table, pd.DataFrame]:
    """``read_lake`` without the canonical frame: the transactions dated ``start``..``end`` as the
    lake's own columns (deduplicated, ``first_arrivals``) and every label (``label_frame``), for
    ``fraudsys backfill``, which writes Arrow columns."""
    dataset = _dataset(uri)
    transactions = first_arrivals(_read(dataset, _day_filter("transaction", start, end)))
    return transactions, label_frame(_read(dataset, _day_filter("label", None, None)))


def label_frame(table: pa.Table) -> pd.DataFrame:
    """Lake rows of kind label -> the label-event frame, one row per (trans_num, label_time, is_fraud)."""
    if table.num_rows == 0:
        return empty_label_frame()
    out = pd.DataFrame(
        {
            "trans_num": table["trans_num"].to_pandas(),
            "merchant": table["merchant"].to_pandas(),
            "event_time": table["event_time"].to_numpy(),
            "label_time": table["arrival_time"].to_numpy(),
            "is_fraud": pc.cast(table["is_fraud"], pa.int8()).to_numpy(),
        }
    )
    out = out.drop_duplicates(["trans_num", "label_time", "is_fraud"], keep="first")
    return _typed_labels(out)


def _typed_labels(out: pd.DataFrame) -> pd.DataFrame:
    typed = pd.DataFrame(
        {
            "trans_num": out["trans_num"].astype("str"),
            "merchant": out["merchant"].astype("str"),
            "event_time": out["event_time"].astype("int64"),
            "label_time": out["label_time"].astype("int64"),
            "is_fraud": out["is_fraud"].astype("int8"),
        }
    )
    return typed.sort_values(["label_time", "trans_num", "is_fraud"], kind="stable").reset_index(drop=True)


def _canonical(columns: dict[str, pa.ChunkedArray], n: int) -> pd.DataFrame:
    def text(name: str) -> pd.Series:
        return pd.Series(columns[name].to_pandas() if n else [], dtype="str")

    def number(name: str, dtype: str) -> pd.Series:
        return pd.Series(columns[name].to_numpy() if n else [], dtype=dtype)

    event_time = number("event_time", "int64")
    dob = (
        pd.Series(pc.strftime(columns["dob"], format="%Y-%m-%d").fill_null("").to_pandas(), dtype="str")
        if n
        else pd.Series([], dtype="str")
    )
    data: dict[str, pd.Series] = {
        "trans_date_trans_time": format_timestamps(event_time.to_numpy()),
        "cc_num": text("card"),
        "merchant": text("merchant"),
        "category": text("category"),
        "amt": number("amt", "float64"),
        "zip": pd.Series(np.zeros(n, dtype=np.int64)),
        "lat": number("lat", "float64"),
        "long": number("long", "float64"),
        "city_pop": number("city_pop", "int64"),
        "dob": dob,
        "trans_num": text("trans_num"),
        "unix_time": event_time,
        "merch_lat": number("merch_lat", "float64"),
        "merch_long": number("merch_long", "float64"),
        "is_fraud": pd.Series(np.zeros(n, dtype=np.int8)),
        "event_time": event_time,
    }
    for name in _ABSENT_TEXT:
        data[name] = pd.Series([""] * n, dtype="str")
    frame = pd.DataFrame({name: data[name].reset_index(drop=True) for name in CANONICAL_COLUMNS})
    return frame.astype({name: CANONICAL_DTYPES[name] for name in CANONICAL_COLUMNS})


def _day_filter(kind: str, start: date | None, end: date | None) -> ds.Expression:
    expression = pc.field("kind") == kind
    if start is not None:
        expression &= pc.field("dt") >= start.isoformat()
    if end is not None:
        expression &= pc.field("dt") <= end.isoformat()
    return expression


def _read(dataset: ds.Dataset | None, expression: ds.Expression) -> pa.Table:
    schema = lake_schema()
    if dataset is None:
        return schema.empty_table()
    table = dataset.to_table(columns=schema.names, filter=expression)
    newer = pc.greater(table["schema_version"], SCHEMA_VERSION)
    if table.num_rows and pc.any(newer).as_py():
        raise ValueError(f"the lake holds rows of schema version > {SCHEMA_VERSION}: upgrade the reader")
    return table


def _dataset(uri: str) -> ds.Dataset | None:
    import pyarrow.dataset as ds

    filesystem, root = _filesystem(uri)
    base = f"{root.rstrip('/')}/{EVENTS_PREFIX}" if root else EVENTS_PREFIX
    import pyarrow.fs as pafs

    if filesystem.get_file_info(base).type == pafs.FileType.NotFound:
        return None
    partitioning = ds.partitioning(pa.schema([("kind", pa.string()), ("dt", pa.string())]), flavor="hive")
    return ds.dataset(
        base,
        filesystem=filesystem,
        format="parquet",
        partitioning=partitioning,
        schema=lake_schema().append(pa.field("dt", pa.string())),
        exclude_invalid_files=False,
        ignore_prefixes=[".", "_"],
    )


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    import pyarrow.fs as pafs

    if uri.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            fs = pafs.S3FileSystem(endpoint_override=host, scheme=scheme, region=region)
        else:
            fs = pafs.S3FileSystem(region=region)
        return fs, uri.removeprefix("s3://").rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri.removeprefix("file://"))
