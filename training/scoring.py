"""Batch scoring with the published champion, streamed by day: memory does not grow with the file.

Point-in-time features need history: a card's 30-day windows, a merchant's risk windows
(30 days, delayed by the label delay). ``score_stream`` reads the transactions chunk by chunk
and scores them in blocks of whole UTC days, each with only ``context_seconds`` of history
before it, so it holds about (history + block) days of transactions at a time, whatever the
size of the file. The scores equal those of scoring the whole file at once, except that a row
without a date of birth takes the card's latest one only from within that history.

The input must be ordered by day (the Kaggle files are ordered by time; rows of one day may
come in any order): a row dated before a day already scored is an error. The output
columns, ``SCORE_COLUMNS``, cannot be mistaken for labels.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb

from fraud_core import spec
from training.dataset import build_features
from training.train import predict

SCORE_COLUMNS = ("trans_num", "predicted_fraud", "fraud_probability", "model_version")
DEFAULT_BLOCK_DAYS = 7
DEFAULT_CHUNK_ROWS = 100_000


@dataclass(frozen=True)
class Champion:
    booster: xgb.Booster
    version: str
    threshold: float
    feature_names: list[str]
    label_delay: int


def load_champion(store_uri: str, model_name: str) -> Champion:
    """The champion published in the model store (``ModelNotFoundError`` when there is none)."""
    from fraud_adapters.blobs import open_blob_store
    from fraud_adapters.model_store import ModelNotFoundError, ModelStore

    store = ModelStore(open_blob_store(store_uri), model_name)
    version = store.champion_version()
    if version is None:
        raise ModelNotFoundError(f"no champion published in {store_uri}: run `fraudsys pipeline` first")
    files = store.load(version)
    booster = xgb.Booster()
    booster.load_model(bytearray(files.model))
    manifest = files.manifest
    return Champion(
        booster, version, manifest.threshold, list(manifest.feature_names), manifest.label_delay_seconds
    )


def scores_of(model: "Champion", rows: pd.DataFrame) -> pd.DataFrame:
    """``SCORE_COLUMNS`` of feature rows (``build_features``'s), in their order: the one place the
    score table is laid out, for both engines."""
    p = predict(model.booster, rows, model.feature_names)
    return pd.DataFrame(
        {
            "trans_num": rows["trans_num"].to_numpy(),
            "predicted_fraud": (p >= model.threshold).astype(np.int8),
            "fraud_probability": p,
            "model_version": model.version,
        }
    )


def context_seconds(label_delay: int) -> int:
    """History every feature of a row needs: card windows, delayed merchant risk windows, a day's slack."""
    return max(spec.MAX_CARD_WINDOW, label_delay + spec.MAX_MERCHANT_RISK_WINDOW) + spec.DAY


def score_stream(
    chunks: Iterable[pd.DataFrame],
    model: Champion,
    start: int | None = None,
    end: int | None = None,
    block_days: int = DEFAULT_BLOCK_DAYS,
) -> Iterator[pd.DataFrame]:
    """Scores (``SCORE_COLUMNS``) of the transactions dated in ``[start, end)`` (epoch seconds,
    None: open) of ``chunks`` (canonical frames, ordered by day across chunks), block by block."""
    if block_days < 1:
        raise ValueError(f"block_days must be positive, got {block_days}")
    context = context_seconds(model.label_delay)
    history = pd.DataFrame()
    pending: list[pd.DataFrame] = []
    scored_until: int | None = None  # every row before this day start has been scored
    newest_day: int | None = None

    def flush(block: pd.DataFrame, until: int) -> Iterator[pd.DataFrame]:
        nonlocal history
        frame = pd.concat([history, block], ignore_index=True) if len(history) else block
        if len(block) and (start is None or int(block["event_time"].max()) >= start):
            yield from _scores(frame, len(history))
        keep = frame["event_time"].to_numpy() >= until - context
        history = frame.loc[keep].reset_index(drop=True)

    def _scores(frame: pd.DataFrame, first: int) -> Iterator[pd.DataFrame]:
        rows = build_features(frame, model.label_delay).iloc[first:]
        if start is not None:
            rows = rows.loc[rows["event_time"].to_numpy() >= start]
        if len(rows):
            yield scores_of(model, rows)

    for raw in chunks:
        t = raw["event_time"].to_numpy(dtype=np.int64)
        wanted = np.ones(len(t), dtype=bool)
        if end is not None:
            wanted &= t < end
        if start is not None:
            wanted &= t >= start - context
        if not wanted.any():
            continue
        chunk, t = raw.loc[wanted], t[wanted]
        if scored_until is not None and int(t.min()) < scored_until:
            raise ValueError(
                "the transactions are not ordered by day: a row dated "
                f"{pd.Timestamp(int(t.min()), unit='s')} comes after its day was scored "
                "(sort the file by time)"
            )
        pending.append(chunk)
        newest_day = max(newest_day or 0, int(t.max()) // spec.DAY * spec.DAY)
        oldest = min(int(part["event_time"].min()) for part in pending) // spec.DAY * spec.DAY
        if newest_day - oldest < block_days * spec.DAY:
            continue
        # the days before the newest one are complete (later chunks may still add to the newest):
        # score them block by block
        rest = pd.concat(pending, ignore_index=True)
        while newest_day - oldest >= block_days * spec.DAY:
            block_end = oldest + block_days * spec.DAY
            in_block = rest["event_time"].to_numpy() < block_end
            block, rest = rest.loc[in_block].reset_index(drop=True), rest.loc[~in_block]
            scored_until = oldest = block_end
            yield from flush(block, block_end)
        pending = [rest]
    if pending and newest_day is not None:
        rest = pd.concat(pending, ignore_index=True)
        if len(rest):
            yield from flush(rest, newest_day + spec.DAY)


def csv_chunks(path: Path, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """A Kaggle-schema CSV as canonical frames of ``chunk_rows`` rows (validated chunk by chunk)."""
    from training.data.kaggle import iter_transactions_csv

    return iter_transactions_csv(path, chunk_rows)


def parquet_chunks(root: Path, start: int | None, end: int | None) -> Iterator[pd.DataFrame]:
    """An ingested Parquet dataset month by month, only the months of ``[start, end)``."""
    from training.data.kaggle import PARTITION_PREFIX, read_parquet_dataset

    months = sorted({p.name.removeprefix(PARTITION_PREFIX) for p in root.glob(f"{PARTITION_PREFIX}*")})
    for month in months:
        frame = read_parquet_dataset(root, months=[month], start=start, end=end)
        if len(frame):
            yield frame


def score_frame(frame: pd.DataFrame, model: Champion) -> pd.DataFrame:
    """Scores of every transaction of a frame (in memory already), in the frame's order by time."""
    parts = list(score_stream([frame.sort_values(["event_time", "trans_num"], kind="stable")], model))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(SCORE_COLUMNS))
