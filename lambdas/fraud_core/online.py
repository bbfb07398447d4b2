"""Features for one scoring request from the state the feature store returned.

``row_features`` is the single-row kernel of the definitions in ``fraud_core.spec`` (the
vectorized kernel in ``fraud_core.features`` serves the offline pipeline); windows, constants
and feature order come from ``spec`` only, and tests hold the two kernels equal.
"""

import math
from bisect import bisect_left
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fraud_core import spec
from fraud_core.features import (
    EARTH_RADIUS_KM,
    F64,
    I64,
    NEVER,
    NO_FRAUD_INTERVALS,
    CardAggregates,
    CardEvents,
    FraudIntervals,
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


@dataclass(frozen=True, slots=True)
class CardSummary:
    """A card's exact aggregates as of one request time ``t``: per window of
    ``spec.CARD_WINDOWS`` (shortest first) over its events in ``[t - w, t)``, the latest event
    before ``t`` within the longest window, and the distinct counts of ``[t - 24h, t)``.

    ``summarize_card`` computes it from the card's events; the store's tiled read (a busy card)
    computes the same numbers inside Redis from time tiles, and ``row_features`` turns either
    into features with one set of formulas.
    """

    count: tuple[int, ...]
    total: tuple[int, ...]  # cents
    sumsq: tuple[int, ...]  # cents squared
    max_cents: tuple[int, ...]
    prev_t: int  # -1: no event in the longest window
    prev_merch_lat: float
    prev_merch_long: float
    #: distinct merchants, exact or any value >= spec.DISTINCT_MERCHANTS_CAP (the feature caps it)
    distinct_merchants: int
    distinct_categories: int


def summarize_card(events: CardEvents, t: int) -> CardSummary:
    """The ``CardSummary`` of a card's events (sorted by time) for a request at ``t``."""
    times: list[int] = events.t.tolist()
    hi = bisect_left(times, t)  # events strictly before t (sorted by time)
    amounts: list[int] = events.cents[:hi].tolist()
    count, total, sumsq, top = [], [], [], []
    for seconds in _CARD_WINDOW_SECONDS:
        window = amounts[bisect_left(times, t - seconds, 0, hi) :]
        count.append(len(window))
        total.append(sum(window))
        sumsq.append(sum(c * c for c in window))
        top.append(max(window) if window else 0)
    lo_d = bisect_left(times, t - spec.DISTINCT_WINDOW, 0, hi)
    has_prev = count[-1] > 0
    return CardSummary(
        count=tuple(count),
        total=tuple(total),
        sumsq=tuple(sumsq),
        max_cents=tuple(top),
        prev_t=times[hi - 1] if has_prev else -1,
        prev_merch_lat=float(events.merch_lat[hi - 1]) if has_prev else 0.0,
        prev_merch_long=float(events.merch_long[hi - 1]) if has_prev else 0.0,
        distinct_merchants=len(set(events.merchant[lo_d:hi].tolist())),
        distinct_categories=len(set(events.category[lo_d:hi].tolist())),
    )


@dataclass(frozen=True, slots=True, eq=False)
class OnlineState:
    """Everything the scorer reads for one request (one Redis round trip), as columns."""

    card_events: CardEvents = NO_CARD_EVENTS
    #: the card's aggregates computed by the store for the request time (a tiled card); when
    #: set, ``card_events`` is empty and features come from this
    card_summary: CardSummary | None = None
    dob: date | None = None
    merchant_volume: tuple[int, ...] = (0,) * len(spec.MERCHANT_VOLUME_WINDOWS)
    merchant_risk: tuple[int, ...] = (0,) * len(spec.MERCHANT_RISK_WINDOWS)
    #: fraud intervals (``fraud_core.features.fraud_intervals``) of the merchant's label chains in
    #: the risk windows: every chain when ``latest_frauds`` is None; else only the chains with a
    #: label that arrived at or after the request time (the store's bounded read)
    labels: FraudIntervals = NO_FRAUD_INTERVALS
    #: per risk window, the chains whose latest label (every label arrived) is a fraud
    latest_frauds: tuple[int, ...] | None = None

    def card(self, t: int) -> "CardSummary":
        """The card's aggregates for a request at ``t``: the store's summary of a tiled card, or
        computed from its events (which a tiled card's state does not carry)."""
        return self.card_summary if self.card_summary is not None else summarize_card(self.card_events, t)

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
            "card_summary": self.card_summary,
            "dob": self.dob,
            "merchant_volume": self.merchant_volume,
            "merchant_risk": self.merchant_risk,
            "labels": list(
                zip(
                    self.labels.trans_t.tolist(),
                    self.labels.arrival.tolist(),
                    self.labels.until.tolist(),
                    strict=True,
                )
            ),
            "latest_frauds": self.latest_frauds,
        }


def risk_frauds(state: OnlineState, t: int, label_delay: int) -> list[int]:
    """Per risk window, the merchant's transactions in the delayed window that are frauds at
    ``t`` (``fraud_core.features.merchant_frauds`` for one request, in plain Python)."""
    delayed = t - label_delay
    intervals = state.labels
    labels = list(
        zip(intervals.trans_t.tolist(), intervals.arrival.tolist(), intervals.until.tolist(), strict=True)
    )
    at_t = [
        sum(
            1
            for trans_t, arrival, until in labels
            if delayed - seconds <= trans_t < delayed and arrival < t <= until
        )
        for _, seconds in spec.MERCHANT_RISK_WINDOWS
    ]
    return correct_latest(state, at_t, t, label_delay)


def correct_latest(state: OnlineState, at_t: list[int], t: int, label_delay: int) -> list[int]:
    """Frauds per risk window at ``t`` from the store's bounded read: the chains that are frauds
    once every label has arrived, minus those among ``state.labels`` (the chains with a label
    arriving at or after ``t``) that are, plus ``at_t``, those that are frauds at ``t``
    (``fraud_intervals``' rule). Without ``latest_frauds``, ``state.labels`` holds every chain and
    ``at_t`` is the answer."""
    if state.latest_frauds is None:
        return at_t
    delayed = t - label_delay
    labels = state.labels
    now = [
        (int(tt), int(until))
        for tt, until in zip(labels.trans_t.tolist(), labels.until.tolist(), strict=True)
    ]
    out = []
    for latest, frauds, (_, seconds) in zip(
        state.latest_frauds, at_t, spec.MERCHANT_RISK_WINDOWS, strict=True
    ):
        corrected = sum(1 for tt, until in now if until == NEVER and delayed - seconds <= tt < delayed)
        out.append(latest - corrected + frauds)
    return out


#: Day number of a card event without a date of birth (card members, ``latest_dob``).
NO_DOB: int = -(1 << 62)


def latest_dob(
    event_t: I64,
    event_dob_day: I64,
    profile: tuple[int, date] | None,
    t: int,
    older: tuple[int, date] | None = None,
) -> date | None:
    """The card's date of birth as of ``t``: the latest earlier one (``training.dataset``'s rule).

    ``event_t``/``event_dob_day``: the card's events sorted by (time, trans_num), the day number
    of each one's date of birth or ``NO_DOB``; ``profile``: (time, dob) of the card's latest event
    with a date of birth, which also covers events older than the ones given. The latest event
    with a dob in an earlier second wins; the profile only where it is itself earlier than ``t``;
    else ``older``, (time, dob) of the latest event with a dob among those older than the ones
    given (the store's retention point), for a request dated before the profile's event; none
    if that event is more than ``spec.DOB_RETENTION`` older than ``t``.
    """
    hi = bisect_left(event_t.tolist(), t)
    known = (event_dob_day[:hi] != NO_DOB).nonzero()[0]
    if len(known):
        latest = known[-1]
        if t - int(event_t[latest]) > spec.DOB_RETENTION:
            return None
        return date.fromordinal(_EPOCH_ORDINAL + int(event_dob_day[latest]))
    for known_t, dob in (known for known in (profile, older) if known is not None):
        if known_t < t:
            return dob if t - known_t <= spec.DOB_RETENTION else None
    return None


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def dob_epoch(dob: date | None) -> float:
    return float("nan") if dob is None else float((dob - date(1970, 1, 1)).days * spec.DAY)


_ONE_KEY = np.zeros(1, dtype=np.int64)


def request_features(
    request: PredictRequest, state: OnlineState, label_delay: int = spec.DEFAULT_LABEL_DELAY
) -> F64:
    """The (1 x features) row for ``request`` as of its ``transaction_time``: the single-row kernel."""
    dob = request.dob if request.dob is not None else state.dob
    return np.array(
        [
            row_features(
                t=epoch_seconds(request.transaction_time),
                cents=to_cents(request.amount_usd),
                category=spec.CATEGORY_CODE[request.category],
                lat=request.lat,
                long=request.long,
                merch_lat=request.merch_lat,
                merch_long=request.merch_long,
                city_pop=float(request.city_pop),
                dob_t=dob_epoch(dob),
                state=state,
                label_delay=label_delay,
            )
        ]
    )


def vectorized_request_features(
    request: PredictRequest, state: OnlineState, label_delay: int = spec.DEFAULT_LABEL_DELAY
) -> F64:
    """The same row through the vectorized offline kernel (``fraud_core.features``) with one query."""
    t = np.array([epoch_seconds(request.transaction_time)], dtype=np.int64)
    summary = state.card_summary
    card = card_aggregates(state.card_events, _ONE_KEY, t) if summary is None else _aggregates(summary)
    at_t = merchant_frauds(state.labels, _ONE_KEY, t, label_delay)[:, 0].tolist()
    frauds = np.array(correct_latest(state, at_t, int(t[0]), label_delay), dtype=np.int64).reshape(-1, 1)
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


def _aggregates(summary: CardSummary) -> CardAggregates:
    """A summary as the vectorized kernel's one-query aggregates."""

    def column(values: tuple[int, ...]) -> I64:
        return np.array(values, dtype=np.int64).reshape(-1, 1)

    def one(value: float, dtype: type) -> NDArray[Any]:
        return np.array([value], dtype=dtype)

    return CardAggregates(
        count=column(summary.count),
        sum_cents=column(summary.total),
        sumsq_hi=column(tuple(s >> 32 for s in summary.sumsq)),
        sumsq_lo=column(tuple(s & 0xFFFFFFFF for s in summary.sumsq)),
        max_cents=column(summary.max_cents),
        prev_t=one(summary.prev_t, np.int64),
        prev_merch_lat=one(summary.prev_merch_lat, np.float64),
        prev_merch_long=one(summary.prev_merch_long, np.float64),
        distinct_merchants=one(summary.distinct_merchants, np.int64),
        distinct_categories=one(summary.distinct_categories, np.int64),
    )


def _haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """``fraud_core.features.haversine_km`` for one pair of points."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dphi = p2 - p1
    dlmb = math.radians(lon2) - math.radians(lon1)
    a = math.sin(dphi / 2.0) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dlmb / 2.0) ** 2
    return 2.0 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(max(a, 0.0), 1.0)))


_CARD_WINDOW_SECONDS = tuple(seconds for _, seconds in spec.CARD_WINDOWS)
if list(_CARD_WINDOW_SECONDS) != sorted(_CARD_WINDOW_SECONDS):  # row_features ends on the longest
    raise RuntimeError("spec.CARD_WINDOWS must be listed shortest first")
_RISK_WINDOW_SECONDS = tuple(seconds for _, seconds in spec.MERCHANT_RISK_WINDOWS)
_ONLINE_CODES = frozenset(spec.CATEGORY_CODE[c] for c in spec.ONLINE_CATEGORIES)


def row_features(
    *,
    t: int,
    cents: int,
    category: int,
    lat: float,
    long: float,
    merch_lat: float,
    merch_long: float,
    city_pop: float,
    dob_t: float,
    state: OnlineState,
    label_delay: int,
) -> list[float]:
    """One transaction's features in ``spec.FEATURE_NAMES`` order, in plain Python.

    The same semantics and float formulas as the vectorized kernel
    (``card_aggregates`` / ``merchant_frauds`` / ``assemble_features``), written for one row:
    a request's ~100 card events cost a few bisections and sums here, where the vectorized
    kernel pays ~100 numpy calls of fixed overhead (0.25 -> 0.03 ms, docs/benchmarks.md).
    Aggregates are exact Python integers. Tests compare the two kernels on every feature
    (``tests/unit/features/test_online_kernel.py``) and the online path with the offline
    pipeline (``tests/integration``).
    """
    empty = spec.EMPTY
    card = state.card(t)
    amt = cents / 100.0
    hour = (t // spec.HOUR) % 24
    dow = (t // spec.DAY + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    out = [
        amt,
        math.log1p(amt),
        float(category),
        float(category in _ONLINE_CODES),
        float(hour),
        float(hour >= spec.NIGHT_START_HOUR or hour < spec.NIGHT_END_HOUR),
        float(dow),
        float(dow >= 5),
        empty["age_years"] if math.isnan(dob_t) else (t - dob_t) / spec.SECONDS_PER_YEAR,
        math.log1p(city_pop),
        _haversine_km(lat, long, merch_lat, merch_long),
    ]
    # card windows [t - w, t), shortest first
    count = total = 0
    var_num = mean = 0.0
    for count, total, sumsq, top in zip(card.count, card.total, card.sumsq, card.max_cents, strict=True):
        n, safe_n = float(count), float(max(count, 1))
        var_num = float(max(count * sumsq - total * total, 0))  # exact integers, rounded once
        mean = total / safe_n / 100.0 if count > 0 else empty["mean"]
        out += [
            n,
            total / 100.0,
            mean,
            top / 100.0 if count > 0 else empty["max"],
            math.sqrt(var_num) / safe_n / 100.0 if count > 1 else empty["std"],
        ]
    # the loop ended on the longest window (30 days): ratio, z-score and previous event use it
    out.append(amt / mean if mean > 0 else empty["amt_ratio"])
    deviation = float(count * cents - total)
    out.append(deviation / math.sqrt(var_num) if var_num > 0 else empty["amt_zscore"])
    if card.prev_t >= 0:
        gap = t - card.prev_t
        hop = _haversine_km(card.prev_merch_lat, card.prev_merch_long, merch_lat, merch_long)
        out += [float(gap), hop / (gap / 3600.0)]
    else:
        out += [empty["secs_since_prev"], empty["speed_kmh"]]
    out.append(float(min(card.distinct_merchants, spec.DISTINCT_MERCHANTS_CAP)))
    out.append(float(card.distinct_categories))
    # merchant: volume and delayed-risk counts from Redis, frauds whose label arrived before t
    out += [float(v) for v in state.merchant_volume]
    frauds = risk_frauds(state, t, label_delay)
    out += [
        f / float(max(n, 1)) if n > 0 else empty["fraud_rate"]
        for f, n in zip(frauds, state.merchant_risk, strict=True)
    ]
    out += [float(f) for f in frauds]
    return out
