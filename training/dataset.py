"""Point-in-time feature rows for a transaction table (the offline side of the feature spec).

Every row's features use only events strictly before it (``fraud_core.spec``); labels count
from their arrival (``label_time``), with the rule of ``fraud_core.features.fraud_intervals``
(the latest label by arrival holds; corrections count from their own arrival). Sources without
label events (the Kaggle CSV, the simulator) get one per fraud at ``event_time + label_delay``
(``label_events_at_delay``), so every source goes through the same code.
"""

import numpy as np
import pandas as pd

from fraud_core import spec
from fraud_core.features import (
    CardEvents,
    MerchantAggregates,
    Queries,
    assemble_features,
    card_aggregates,
    fraud_intervals,
    merchant_frauds,
    merchant_volume,
)
from fraud_core.schemas import to_cents_array

ID_COLUMNS = ("trans_num", "cc_num", "merchant", "event_time")
LABEL_COLUMN = "is_fraud"
#: A label event frame: the labelled transaction (id, merchant, time), arrival, value.
LABEL_EVENT_COLUMNS = ("trans_num", "merchant", "event_time", "label_time", "is_fraud")


def label_events_at_delay(df: pd.DataFrame, label_delay: int) -> pd.DataFrame:
    """One fraud label per ``is_fraud == 1`` row, arriving ``label_delay`` after its transaction
    (sources that record no label arrivals); ``LABEL_EVENT_COLUMNS``, ``is_fraud`` int8."""
    fraud = df.loc[df[LABEL_COLUMN].to_numpy() == 1] if LABEL_COLUMN in df else df.iloc[:0]
    t = fraud["event_time"].to_numpy(dtype=np.int64)
    return pd.DataFrame(
        {
            "trans_num": fraud["trans_num"].astype(str).to_numpy(),
            "merchant": fraud["merchant"].astype(str).to_numpy(),
            "event_time": t,
            "label_time": t + int(label_delay),
            "is_fraud": np.ones(len(fraud), dtype=np.int8),
        }
    )


def dob_seconds(dob: pd.Series) -> np.ndarray:
    """Dates of birth (``YYYY-MM-DD`` or dates) as epoch seconds; NaN where unknown."""
    parsed = pd.to_datetime(dob, errors="coerce", format="%Y-%m-%d")
    days = (parsed - pd.Timestamp("1970-01-01")).dt.days
    return (days.astype("float64") * spec.DAY).to_numpy()


def cents(amount: pd.Series | np.ndarray) -> np.ndarray:
    """Amounts in USD to integer cents, rounding exactly like ``fraud_core.schemas.to_cents``."""
    return to_cents_array(np.asarray(amount, dtype=np.float64))


def _known_dob(df: pd.DataFrame, order: np.ndarray) -> np.ndarray:
    """The row's date of birth, else the latest one of the card's transactions in earlier
    seconds if that transaction is at most ``spec.DOB_RETENTION`` old (what the online card
    profile holds when the scorer runs); epoch seconds or NaN."""
    own = dob_seconds(df["dob"])
    card = pd.factorize(df["cc_num"].astype(str))[0][order]
    t = df["event_time"].to_numpy(dtype=np.int64)[order]
    sorted_own = own[order]
    known = pd.Series(sorted_own).groupby(card, sort=False).ffill().to_numpy()
    # the time of the transaction each known dob came from
    known_t = (
        pd.Series(np.where(np.isnan(sorted_own), np.nan, t.astype(np.float64)))
        .groupby(card, sort=False)
        .ffill()
        .to_numpy()
    )
    position = np.arange(len(order))
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = (card[1:] != card[:-1]) | (t[1:] != t[:-1])
    first_of_second = np.maximum.accumulate(np.where(starts, position, 0))
    before = first_of_second - 1
    same_card = (before >= 0) & (card[np.maximum(before, 0)] == card)
    source_t = known_t[np.maximum(before, 0)]
    fresh = same_card & (t - source_t <= spec.DOB_RETENTION)  # NaN compares false: no dob
    earlier = np.where(fresh, known[np.maximum(before, 0)], np.nan)
    filled = np.empty_like(own)
    filled[order] = np.where(np.isnan(own[order]), earlier, own[order])
    return filled


def build_features(
    df: pd.DataFrame, label_delay: int = spec.DEFAULT_LABEL_DELAY, labels: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Feature rows for every transaction of ``df`` (canonical frame, any order).

    ``labels``: label events (``LABEL_EVENT_COLUMNS``, any order, duplicates allowed); default
    ``label_events_at_delay(df, label_delay)``. A label places its transaction by its own
    merchant and transaction time, like the online store. Returns ``ID_COLUMNS``, ``is_fraud``
    (when present) and ``spec.FEATURE_NAMES``, in the order of ``df``.
    """
    n = len(df)
    if n == 0:
        label = [LABEL_COLUMN] if LABEL_COLUMN in df else []
        return pd.DataFrame(columns=[*ID_COLUMNS, *label, *spec.FEATURE_NAMES], index=df.index)
    t = df["event_time"].to_numpy(dtype=np.int64)
    card_code = pd.factorize(df["cc_num"].astype(str))[0].astype(np.int64)
    if labels is None:
        labels = label_events_at_delay(df, label_delay)
    merchant_codes = pd.factorize(
        np.concatenate([df["merchant"].astype(str).to_numpy(), labels["merchant"].astype(str).to_numpy()])
    )[0].astype(np.int64)
    merchant_code = merchant_codes[:n]
    category = df["category"].map(spec.CATEGORY_CODE)
    if category.isna().any():
        bad = df.loc[category.isna(), "category"].iloc[0]
        raise ValueError(f"unknown category {bad!r}; expected one of {spec.CATEGORIES}")
    category_code: np.ndarray[tuple[int], np.dtype[np.int64]] = np.asarray(category, dtype=np.int64)
    amount_cents = cents(df["amt"])

    order = (
        pd.DataFrame({"card": card_code, "t": t, "trans_num": df["trans_num"].astype(str).to_numpy()})
        .sort_values(["card", "t", "trans_num"], kind="stable")
        .index.to_numpy()
    )
    events = CardEvents(
        key=card_code[order],
        t=t[order],
        cents=amount_cents[order],
        merchant=merchant_code[order],
        category=category_code[order],
        merch_lat=df["merch_lat"].to_numpy(dtype=np.float64)[order],
        merch_long=df["merch_long"].to_numpy(dtype=np.float64)[order],
    )
    queries = Queries(
        card_key=card_code,
        t=t,
        cents=amount_cents,
        category=category_code,
        lat=df["lat"].to_numpy(dtype=np.float64),
        long=df["long"].to_numpy(dtype=np.float64),
        merch_lat=df["merch_lat"].to_numpy(dtype=np.float64),
        merch_long=df["merch_long"].to_numpy(dtype=np.float64),
        city_pop=df["city_pop"].to_numpy(dtype=np.float64),
        dob_t=_known_dob(df, order) if "dob" in df else np.full(n, np.nan),
    )
    card = card_aggregates(events, card_code, t)

    m_order = np.lexsort((t, merchant_code))
    volume, risk = merchant_volume(merchant_code[m_order], t[m_order], merchant_code, t, label_delay)
    intervals = fraud_intervals(
        key=merchant_codes[n:],
        # a label chain is one transaction as its labels place it (merchant, id, time), like the
        # online store, which keeps a merchant's labels by transaction time
        trans=pd.MultiIndex.from_arrays(
            [merchant_codes[n:], labels["trans_num"].astype(str), labels["event_time"].astype(np.int64)]
        )
        .factorize()[0]
        .astype(np.int64),
        trans_t=labels["event_time"].to_numpy(dtype=np.int64),
        arrival=labels["label_time"].to_numpy(dtype=np.int64),
        is_fraud=labels["is_fraud"].to_numpy(dtype=bool),
    )
    frauds = merchant_frauds(intervals, merchant_code, t, label_delay)
    matrix = assemble_features(queries, card, MerchantAggregates(volume, risk, frauds))

    out = pd.DataFrame(matrix, columns=list(spec.FEATURE_NAMES), index=df.index)
    ids = df.loc[:, [c for c in (*ID_COLUMNS, LABEL_COLUMN) if c in df]].copy()
    return pd.concat([ids, out], axis=1)
