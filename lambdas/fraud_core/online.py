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
    I64,
    CardEvents,
    MerchantAggregates,
    Queries,
    assemble_features,
    card_aggregates,
    merchant_frauds,
)
from fraud_core.schemas import PredictRequest, epoch_seconds, to_cents

_NO_INTS: I64 = np.zeros(0, dtype=np.int64)
_NO_FLOATS: F64 = np.zeros(0, dtype=np.float64)


def card_events(
    t: I64, cents: I64, merchant: I64, category: I64, merch_lat: F64, merch_long: F64
) -> CardEvents:
    """One card's earlier transactions, sorted by (t, trans_num); merchant codes compare equal."""
    return CardEvents(
        key=np.zeros(len(t), dtype=np.int64),
        t=t,
        cents=cents,
        merchant=merchant,
        category=category,
        merch_lat=merch_lat,
        merch_long=merch_long,
    )


NO_CARD_EVENTS = card_events(_NO_INTS, _NO_INTS, _NO_INTS, _NO_INTS, _NO_FLOATS, _NO_FLOATS)


@dataclass(frozen=True, slots=True, eq=False)
class OnlineState:
    """Everything the scorer reads for one request (one Redis round trip), as columns."""

    card_events: CardEvents = NO_CARD_EVENTS
    dob: date | None = None
    merchant_volume: tuple[int, ...] = (0,) * len(spec.MERCHANT_VOLUME_WINDOWS)
    merchant_risk: tuple[int, ...] = (0,) * len(spec.MERCHANT_RISK_WINDOWS)
    label_trans_t: I64 = field(default_factory=lambda: _NO_INTS)  # fraud labels, by transaction time
    label_arrival_t: I64 = field(default_factory=lambda: _NO_INTS)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OnlineState) and self.plain() == other.plain()

    __hash__ = object.__hash__

    def plain(self) -> dict[str, object]:
        """The state as plain Python values (numpy arrays do not compare with ``==``)."""
        events = self.card_events
        return {
            "card_events": [
                (int(t), int(c), int(m), int(k), float(la), float(lo))
                for t, c, m, k, la, lo in zip(
                    events.t,
                    events.cents,
                    events.merchant,
                    events.category,
                    events.merch_lat,
                    events.merch_long,
                    strict=True,
                )
            ],
            "dob": self.dob,
            "merchant_volume": self.merchant_volume,
            "merchant_risk": self.merchant_risk,
            "labels": list(zip(self.label_trans_t.tolist(), self.label_arrival_t.tolist(), strict=True)),
        }


def dob_epoch(dob: date | None) -> float:
    return float("nan") if dob is None else float((dob - date(1970, 1, 1)).days * spec.DAY)


_ONE_KEY = np.zeros(1, dtype=np.int64)


def request_features(
    request: PredictRequest, state: OnlineState, label_delay: int = spec.DEFAULT_LABEL_DELAY
) -> F64:
    """The (1 x features) row for ``request`` as of its ``transaction_time``."""
    t = np.array([epoch_seconds(request.transaction_time)], dtype=np.int64)
    card = card_aggregates(state.card_events, _ONE_KEY, t)
    labels_t = state.label_trans_t
    frauds = merchant_frauds(
        np.zeros(len(labels_t), dtype=np.int64), labels_t, state.label_arrival_t, _ONE_KEY, t, label_delay
    )
    merchant = MerchantAggregates(
        volume=np.array(state.merchant_volume, dtype=np.int64).reshape(-1, 1),
        risk_count=np.array(state.merchant_risk, dtype=np.int64).reshape(-1, 1),
        risk_frauds=frauds,
    )
    dob = request.dob if request.dob is not None else state.dob
    floats = np.array(
        [
            request.lat,
            request.long,
            request.merch_lat,
            request.merch_long,
            float(request.city_pop),
            dob_epoch(dob),
        ]
    ).reshape(-1, 1)
    queries = Queries(
        card_key=_ONE_KEY,
        t=t,
        cents=np.array([to_cents(request.amount_usd)], dtype=np.int64),
        category=np.array([spec.CATEGORY_CODE[request.category]], dtype=np.int64),
        lat=floats[0],
        long=floats[1],
        merch_lat=floats[2],
        merch_long=floats[3],
        city_pop=floats[4],
        dob_t=floats[5],
    )
    return assemble_features(queries, card, merchant)
