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
    CardAggregates,
    CardEvents,
    FraudIntervals,
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


#: The feature columns that depend on the merchant: its transactions and its label events.
MERCHANT_FEATURES: tuple[str, ...] = tuple(name for name in spec.FEATURE_NAMES if name.startswith("merch_"))
#: The others depend on the row itself and on its card's transactions only (``age_years``: the
#: card's earlier dates of birth). A distributed engine computes the two sets in separate passes,
#: one grouped by card and one by merchant, each with the functions below.
CARD_FEATURES: tuple[str, ...] = tuple(name for name in spec.FEATURE_NAMES if name not in MERCHANT_FEATURES)


def label_chains(labels: pd.DataFrame, merchant_codes: np.ndarray) -> FraudIntervals:
    """The label events' fraud intervals (``fraud_core.features.fraud_intervals``), ``merchant_codes``
    the labels' merchants as integer codes. A label chain is one transaction as its labels place it
    (merchant, id, time), like the online store, which keeps a merchant's labels by transaction
    time."""
    key = merchant_codes.astype(np.int64)
    return fraud_intervals(
        key=key,
        trans=pd.MultiIndex.from_arrays(
            [key, labels["trans_num"].astype(str), labels["event_time"].astype(np.int64)]
        )
        .factorize()[0]
        .astype(np.int64),
        trans_t=labels["event_time"].to_numpy(dtype=np.int64),
        arrival=labels["label_time"].to_numpy(dtype=np.int64),
        is_fraud=labels["is_fraud"].to_numpy(dtype=bool),
    )


def build_features(
    df: pd.DataFrame, label_delay: int = spec.DEFAULT_LABEL_DELAY, labels: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Feature rows for every transaction of ``df`` (canonical frame, any order).

    ``labels``: label events (``LABEL_EVENT_COLUMNS``, any order, duplicates allowed); default
    ``label_events_at_delay(df, label_delay)``. A label places its transaction by its own
    merchant and transaction time, like the online store. Returns ``ID_COLUMNS``, ``is_fraud``
    (when present) and ``spec.FEATURE_NAMES``, in the order of ``df``.

    With unique ``trans_num`` (the canonical frame's contract) every row depends only on the
    rows of its card (``CARD_FEATURES``) and of its merchant with the merchant's label events
    (``MERCHANT_FEATURES``), never on the order of ``df``: ``card_features`` and
    ``merchant_features`` give the same values from any subset holding whole cards / merchants.
    """
    return _features(df, label_delay, labels, card=True, merchant=True)


def card_features(df: pd.DataFrame) -> pd.DataFrame:
    """``build_features`` restricted to ``CARD_FEATURES`` (the row's own and its card's): exact for
    every row whose card's earlier transactions are all in ``df``. ``ID_COLUMNS``, ``is_fraud``
    (when present), then ``CARD_FEATURES``."""
    return _features(df, spec.DEFAULT_LABEL_DELAY, None, card=True, merchant=False)


def merchant_features(
    df: pd.DataFrame, label_delay: int = spec.DEFAULT_LABEL_DELAY, labels: pd.DataFrame | None = None
) -> pd.DataFrame:
    """``build_features`` restricted to ``MERCHANT_FEATURES``: exact for every row whose merchant's
    transactions of its windows (``[t - label_delay - 30 days, t)``) and their label events are
    in ``df`` and ``labels``. ``trans_num``, then ``MERCHANT_FEATURES``."""
    return _features(df, label_delay, labels, card=False, merchant=True)


def _empty_card(n: int) -> CardAggregates:
    windows = np.zeros((len(spec.CARD_WINDOWS), n), dtype=np.int64)
    zeros, floats = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.float64)
    return CardAggregates(
        count=windows,
        sum_cents=windows,
        sumsq_hi=windows,
        sumsq_lo=windows,
        max_cents=windows,
        prev_t=np.full(n, -1, dtype=np.int64),
        prev_merch_lat=floats,
        prev_merch_long=floats,
        distinct_merchants=zeros,
        distinct_categories=zeros,
    )


def _empty_merchant(n: int) -> MerchantAggregates:
    volume = np.zeros((len(spec.MERCHANT_VOLUME_WINDOWS), n), dtype=np.int64)
    risk = np.zeros((len(spec.MERCHANT_RISK_WINDOWS), n), dtype=np.int64)
    return MerchantAggregates(volume, risk, risk)


def _features(
    df: pd.DataFrame, label_delay: int, labels: pd.DataFrame | None, *, card: bool, merchant: bool
) -> pd.DataFrame:
    """The rows of ``build_features``; without ``card`` (``merchant``) the card (merchant)
    aggregates are not computed and only the other part's columns are returned."""
    names = list(spec.FEATURE_NAMES if card and merchant else CARD_FEATURES if card else MERCHANT_FEATURES)
    n = len(df)
    if n == 0:
        ids = [*ID_COLUMNS, *([LABEL_COLUMN] if LABEL_COLUMN in df else [])] if card else ["trans_num"]
        return pd.DataFrame(columns=[*ids, *names], index=df.index)
    t = df["event_time"].to_numpy(dtype=np.int64)
    card_code = pd.factorize(df["cc_num"].astype(str))[0].astype(np.int64)
    if merchant and labels is None:
        labels = label_events_at_delay(df, label_delay)
    events_of_labels = (
        labels if merchant and labels is not None else pd.DataFrame(columns=LABEL_EVENT_COLUMNS)
    )
    label_merchants = events_of_labels["merchant"].astype(str).to_numpy()
    merchant_codes = pd.factorize(np.concatenate([df["merchant"].astype(str).to_numpy(), label_merchants]))[
        0
    ].astype(np.int64)
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
        if card
        else np.arange(n)
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
        dob_t=_known_dob(df, order) if card and "dob" in df else np.full(n, np.nan),
    )
    if card:
        events = CardEvents(
            key=card_code[order],
            t=t[order],
            cents=amount_cents[order],
            merchant=merchant_code[order],
            category=category_code[order],
            merch_lat=queries.merch_lat[order],
            merch_long=queries.merch_long[order],
        )
        card_aggs = card_aggregates(events, card_code, t)
    else:
        card_aggs = _empty_card(n)

    if merchant:
        labels = events_of_labels
        m_order = np.lexsort((t, merchant_code))
        volume, risk = merchant_volume(merchant_code[m_order], t[m_order], merchant_code, t, label_delay)
        intervals = label_chains(labels, merchant_codes[n:])
        frauds = merchant_frauds(intervals, merchant_code, t, label_delay)
        merchant_aggs = MerchantAggregates(volume, risk, frauds)
    else:
        merchant_aggs = _empty_merchant(n)
    matrix = assemble_features(queries, card_aggs, merchant_aggs)

    if not (card and merchant):
        matrix = matrix[:, [spec.FEATURE_NAMES.index(name) for name in names]]
    out = pd.DataFrame(matrix, columns=names, index=df.index)
    ids = [c for c in (*ID_COLUMNS, LABEL_COLUMN) if c in df] if card else ["trans_num"]
    return pd.concat([df.loc[:, ids].copy(), out], axis=1)
