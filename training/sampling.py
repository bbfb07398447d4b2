"""Training past one machine's memory: time-stratified sampling of legitimate rows, re-weighted.

Frauds are ~0.5 % of the rows. The single-node fit keeps every fraud and, for each UTC day, a
fixed share ``rate`` of that day's legitimate rows (the rows with the smallest seeded hash of
their ``trans_num``: deterministic, independent of row order and of how the table was split into
files). Each kept legitimate row weighs ``n / k`` (``n`` legitimate rows that day, ``k`` kept), so
every day's weighted legitimate count is exactly its real count: the class balance
(``scale_pos_weight``), the fit's loss and the weighted early-stopping metric estimate the
unsampled ones, and no day or season is over- or under-represented.

Rows dated at or after ``keep_from`` (the validation and test days) are never sampled: the
threshold, the evaluation and the champion gate see every row, as before. Measured against
distributed XGBoost on Spark in ``docs/benchmarks.md`` ("Training at scale").

``read_feature_table`` applies the sampling while it reads the Spark job's day-partitioned table
(``training.spark_features``), one day at a time: the peak is the kept rows plus one day.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fraud_core import spec
from training.dataset import LABEL_COLUMN

#: The per-row weight column (1.0 for frauds and unsampled rows); ``training.train.matrix`` uses it.
WEIGHT_COLUMN = "sample_weight"
_DAY_PARTITION = re.compile(r"(?:^|/)dt=(\d{4}-\d{2}-\d{2})(?:/|$)")


def _hash_key(seed: int) -> str:
    """pandas' 16-character hash key from a seed."""
    return f"fraudsys{seed % 10**8:08d}"


def sample_legitimate(
    rows: pd.DataFrame, rate: float, seed: int = 0, keep_from: int | None = None
) -> pd.DataFrame:
    """``rows`` with every fraud, ``rate`` of each UTC day's legitimate rows dated before
    ``keep_from`` (None: all days), every row from ``keep_from`` on, and ``WEIGHT_COLUMN``.

    A day with ``n`` legitimate rows keeps ``k = max(1, round(rate * n))`` of them, each of weight
    ``n / k``. ``rate`` 1 keeps everything (weights 1). The order of ``rows`` is kept.
    """
    if not 0 < rate <= 1:
        raise ValueError(f"the sampling rate must be in (0, 1]: {rate}")
    t = rows["event_time"].to_numpy(dtype=np.int64)
    legit = rows[LABEL_COLUMN].to_numpy() == 0
    candidates = legit if keep_from is None else legit & (t < keep_from)
    weight = np.ones(len(rows), dtype=np.float64)
    keep = np.ones(len(rows), dtype=bool)
    if rate < 1 and candidates.any():
        index = np.flatnonzero(candidates)
        day = t[index] // spec.DAY
        digest = pd.util.hash_pandas_object(
            rows["trans_num"].iloc[index].astype(str), index=False, hash_key=_hash_key(seed)
        ).to_numpy()
        order = np.lexsort((digest, day))
        day_sorted = day[order]
        starts = np.flatnonzero(np.r_[True, day_sorted[1:] != day_sorted[:-1]])
        sizes = np.diff(np.r_[starts, len(order)])
        kept = np.maximum(1, np.rint(rate * sizes)).astype(np.int64)
        group = np.repeat(np.arange(len(starts)), sizes)
        rank = np.arange(len(order)) - starts[group]
        chosen = rank < kept[group]
        keep[index[order]] = chosen
        weight[index[order]] = np.where(chosen, sizes[group] / kept[group], 0.0)
    out = rows.loc[keep].copy()
    out[WEIGHT_COLUMN] = weight[keep]
    return out


def row_weights(rows: pd.DataFrame) -> np.ndarray | None:
    """The rows' sampling weights, or None for unsampled rows (no ``WEIGHT_COLUMN``)."""
    if WEIGHT_COLUMN not in rows.columns:
        return None
    return rows[WEIGHT_COLUMN].to_numpy(dtype=np.float64)


@dataclass(frozen=True)
class FeatureTable:
    """What ``read_feature_table`` read: the (sampled) rows and the table's own size."""

    rows: pd.DataFrame
    table_rows: int
    table_frauds: int
    days: int


def table_days(uri: str) -> list[str]:
    """The ``dt=YYYY-MM-DD`` partitions of a feature table (a local folder or an ``s3://`` URI)."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(uri, format="parquet", partitioning="hive")
    days = {m.group(1) for path in dataset.files if (m := _DAY_PARTITION.search(path))}
    if not days:
        raise ValueError(f"{uri} holds no day partitions (dt=YYYY-MM-DD): not a feature table")
    return sorted(days)


def read_feature_table(
    uri: str, rate: float, seed: int = 0, whole_days: int = 0, days: list[str] | None = None
) -> FeatureTable:
    """The Spark job's feature table, day by day, each day's legitimate rows sampled at ``rate``
    except in the last ``whole_days`` days (the validation and test windows, read whole).

    The kept rows are ``build_features``' columns plus ``WEIGHT_COLUMN``; the day column ``dt``
    is dropped.
    """
    import pyarrow.dataset as ds

    names = days if days is not None else table_days(uri)
    dataset = ds.dataset(uri, format="parquet", partitioning="hive")
    first_whole = names[-whole_days] if 0 < whole_days <= len(names) else None
    parts: list[pd.DataFrame] = []
    total = frauds = 0
    for day in names:
        frame = dataset.to_table(filter=ds.field("dt") == day).to_pandas().drop(columns=["dt"])
        total += len(frame)
        frauds += int(frame[LABEL_COLUMN].sum())
        whole = first_whole is not None and day >= first_whole
        parts.append(sample_legitimate(frame, 1.0 if whole else rate, seed))
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return FeatureTable(rows=rows, table_rows=total, table_frauds=frauds, days=len(names))
