"""Features for one scoring request from the state the feature store returned.

This only adapts the online state to the shared vectorized core in ``fraud_core.features``;
no feature is defined here.
"""

from dataclasses import dataclass, field
from datetime import date

import numpy as np

from fraud_core import spec
from fraud_core.features import (
    F64,
    CardEvents,
    MerchantAggregates,
    Queries,
    assemble_features,
    card_aggregates,
    merchant_frauds,
)
from fraud_core.schemas import PredictRequest, epoch_seconds, to_cents


@dataclass(frozen=True, slots=True)
class CardEvent:
    """One earlier card transaction as stored online."""

    t: int
    trans_num: str
    cents: int
    merchant: str
    category: int
    merch_lat: float
    merch_long: float


@dataclass(frozen=True, slots=True)
class OnlineState:
    """Everything the scorer reads for one request (one Redis round trip)."""

    card_events: list[CardEvent] = field(default_factory=list)  # sorted by (t, trans_num)
    dob: date | None = None
    merchant_volume: tuple[int, ...] = (0,) * len(spec.MERCHANT_VOLUME_WINDOWS)
    merchant_risk: tuple[int, ...] = (0,) * len(spec.MERCHANT_RISK_WINDOWS)
    label_trans_t: list[int] = field(default_factory=list)  # fraud labels, by transaction time
    label_arrival_t: list[int] = field(default_factory=list)


def dob_epoch(dob: date | None) -> float:
    return float("nan") if dob is None else float((dob - date(1970, 1, 1)).days * spec.DAY)


def request_features(
    request: PredictRequest, state: OnlineState, label_delay: int = spec.DEFAULT_LABEL_DELAY
) -> F64:
    """The (1 x features) row for ``request`` as of its ``transaction_time``."""
    t = np.array([epoch_seconds(request.transaction_time)], dtype=np.int64)
    key = np.zeros(1, dtype=np.int64)
    events = state.card_events
    n = len(events)
    merchants = {name: code for code, name in enumerate({e.merchant for e in events})}
    card = card_aggregates(
        CardEvents(
            key=np.zeros(n, dtype=np.int64),
            t=np.fromiter((e.t for e in events), dtype=np.int64, count=n),
            cents=np.fromiter((e.cents for e in events), dtype=np.int64, count=n),
            merchant=np.fromiter((merchants[e.merchant] for e in events), dtype=np.int64, count=n),
            category=np.fromiter((e.category for e in events), dtype=np.int64, count=n),
            merch_lat=np.fromiter((e.merch_lat for e in events), dtype=np.float64, count=n),
            merch_long=np.fromiter((e.merch_long for e in events), dtype=np.float64, count=n),
        ),
        key,
        t,
    )
    n_labels = len(state.label_trans_t)
    frauds = merchant_frauds(
        np.zeros(n_labels, dtype=np.int64),
        np.asarray(state.label_trans_t, dtype=np.int64),
        np.asarray(state.label_arrival_t, dtype=np.int64),
        key,
        t,
        label_delay,
    )
    merchant = MerchantAggregates(
        volume=np.asarray(state.merchant_volume, dtype=np.int64).reshape(-1, 1),
        risk_count=np.asarray(state.merchant_risk, dtype=np.int64).reshape(-1, 1),
        risk_frauds=frauds,
    )
    dob = request.dob if request.dob is not None else state.dob
    queries = Queries(
        card_key=key,
        t=t,
        cents=np.array([to_cents(request.amount_usd)], dtype=np.int64),
        category=np.array([spec.CATEGORY_CODE[request.category]], dtype=np.int64),
        lat=np.array([request.lat]),
        long=np.array([request.long]),
        merch_lat=np.array([request.merch_lat]),
        merch_long=np.array([request.merch_long]),
        city_pop=np.array([float(request.city_pop)]),
        dob_t=np.array([dob_epoch(dob)]),
    )
    return assemble_features(queries, card, merchant)
