"""Point-in-time feature math, vectorized: the kernel of the offline pipeline.

Everything is vectorized over "queries" (transactions to compute features for): offline, the
history is every transaction and the queries are the same transactions. Aggregates are exact
integers (amounts in cents), and the float formulas that turn them into features live in
:func:`assemble_features`.

The scorer computes its one row with ``fraud_core.online.row_features``, the same definitions
written for a single row (~100 numpy calls of fixed overhead would cost 8x more there).
``tests/unit/features/test_online_kernel.py`` holds the two kernels equal on every feature
(hypothesis, relative 1e-12); the parity tests hold the whole online path equal to this one.
"""

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fraud_core import spec

I64 = NDArray[np.int64]
F64 = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

_KEY_SHIFT = 1 << 36
_T_OFFSET = 1 << 34
_NEVER = np.iinfo(np.int64).max
#: ``FraudIntervals.until`` of a chain's latest label (no label after it).
NEVER: int = int(_NEVER)
EARTH_RADIUS_KM = 6371.0088


def compose(key: I64, t: I64) -> I64:
    """One sortable int64 per (entity key, time): keys below 2**26, times within +-2**34 s."""
    return key * _KEY_SHIFT + (t + _T_OFFSET)


def haversine_km(lat1: F64, lon1: F64, lat2: F64, lon2: F64) -> F64:
    """Great-circle distance in kilometres."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi = p2 - p1
    dlmb = np.radians(lon2) - np.radians(lon1)
    a = np.sin(dphi / 2.0) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2.0) ** 2
    result: F64 = 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(np.maximum(a, 0.0), 1.0)))
    return result


@dataclass(frozen=True, slots=True)
class CardEvents:
    """Card transactions sorted by (key, t, trans_num); codes only need to compare equal."""

    key: I64
    t: I64
    cents: I64
    merchant: I64
    category: I64
    merch_lat: F64
    merch_long: F64

    def __len__(self) -> int:
        return len(self.t)


@dataclass(frozen=True, slots=True)
class Queries:
    """The transactions to compute features for, in any order."""

    card_key: I64
    t: I64
    cents: I64
    category: I64
    lat: F64
    long: F64
    merch_lat: F64
    merch_long: F64
    city_pop: F64
    dob_t: F64  # date of birth as epoch seconds; NaN when unknown

    def __len__(self) -> int:
        return len(self.t)


@dataclass(frozen=True, slots=True)
class CardAggregates:
    """Exact per-window card aggregates; rows follow ``spec.CARD_WINDOWS``."""

    count: I64  # (windows, queries)
    sum_cents: I64
    #: The sum of squared cents as ``sumsq_hi * 2**32 + sumsq_lo``: a window of the schema's
    #: largest amounts (10**8 cents, squares near 2**53) overflows int64 after ~900 events,
    #: the two parts only after 2**31 events (``sumsq`` gives the exact Python integer).
    sumsq_hi: I64
    sumsq_lo: I64
    max_cents: I64
    prev_t: I64  # time of the latest event in the longest window, -1 if none
    prev_merch_lat: F64
    prev_merch_long: F64
    distinct_merchants: I64
    distinct_categories: I64


@dataclass(frozen=True, slots=True)
class MerchantAggregates:
    """Merchant counts; rows follow ``spec.MERCHANT_VOLUME_WINDOWS`` / ``MERCHANT_RISK_WINDOWS``."""

    volume: I64  # transactions in [t - w, t)
    risk_count: I64  # transactions in [t - delay - w, t - delay)
    risk_frauds: I64  # of those, frauds whose label arrived before t


_LOW32 = (1 << 32) - 1


def _wrapping_sub(a: I64, b: I64) -> I64:
    with np.errstate(over="ignore"):
        out: I64 = a - b
    return out


def _pairs(lo: I64, hi: I64) -> tuple[I64, I64]:
    """All (query index, history index) pairs with history index in [lo, hi)."""
    lens = hi - lo
    total = int(lens.sum())
    query = np.arange(len(lo), dtype=np.int64).repeat(lens)
    starts = (lo - (lens.cumsum() - lens)).repeat(lens)
    return query, np.arange(total, dtype=np.int64) + starts


def _next_same_time(key: I64, code: I64, t: I64) -> I64:
    """For each event, the time of the next event with the same (key, code), or +inf."""
    n = len(t)
    order = np.lexsort((np.arange(n), code, key))
    sk, sc, st = key[order], code[order], t[order]
    nxt = np.full(n, _NEVER, dtype=np.int64)
    if n > 1:
        same = (sk[1:] == sk[:-1]) & (sc[1:] == sc[:-1])
        nxt[:-1] = np.where(same, st[1:], _NEVER)
    out = np.empty(n, dtype=np.int64)
    out[order] = nxt
    return out


class _RangeMax:
    """Sparse table for range maxima over [lo, hi) of one int64 array."""

    def __init__(self, values: I64, longest: int) -> None:
        self.levels = [values]
        span = 1
        while span * 2 <= longest:
            prev = self.levels[-1]
            nxt = prev.copy()
            if span < len(prev):
                nxt[: len(prev) - span] = np.maximum(prev[:-span], prev[span:])
            self.levels.append(nxt)
            span *= 2

    def query(self, lo: I64, hi: I64) -> I64:
        out = np.zeros(len(lo), dtype=np.int64)
        length = hi - lo
        rows = (length > 0).nonzero()[0]
        if len(rows) == 0:
            return out
        level = np.floor(np.log2(length[rows])).astype(np.int64)
        for k in np.unique(level):
            sel = rows[level == k]
            table = self.levels[int(k)]
            out[sel] = np.maximum(table[lo[sel]], table[hi[sel] - (1 << int(k))])
        return out


def _count_between(sorted_keys: I64, q_key: I64, start: I64, end: I64) -> tuple[I64, I64]:
    lo = sorted_keys.searchsorted(compose(q_key, start), side="left").astype(np.int64)
    hi = sorted_keys.searchsorted(compose(q_key, end), side="left").astype(np.int64)
    return lo, hi


_CARD_SECONDS = np.array([seconds for _, seconds in spec.CARD_WINDOWS], dtype=np.int64)
_WIDEST = int(np.argmax(_CARD_SECONDS))
#: Offsets searched in one call: the query time, every window start, the distinct-count start.
_CARD_OFFSETS = np.concatenate(([0], _CARD_SECONDS, [spec.DISTINCT_WINDOW])).astype(np.int64)[:, None]


def card_aggregates(events: CardEvents, q_key: I64, q_t: I64) -> CardAggregates:
    """Card window aggregates for each query over events with ``t - w <= t_e < t``.

    Every window is computed at once ((windows, queries) arrays): the cost is a fixed number
    of numpy calls whether there is one query (online) or millions (offline).
    """
    nq = len(q_t)
    ck = compose(events.key, events.t)
    bounds = ck.searchsorted(compose(q_key, q_t - _CARD_OFFSETS), side="left").astype(np.int64)
    hi, lo, lo_d = bounds[0], bounds[1:-1], bounds[-1]
    cents = events.cents
    csum = np.concatenate(([0], cents.cumsum(dtype=np.int64)))
    # squares (< 2**54 within the schema) split in 32-bit halves; prefix sums may wrap around
    # int64 over a long history, their window differences are exact (modular arithmetic)
    squares = (cents * cents).astype(np.uint64)
    with np.errstate(over="ignore"):
        csq_hi = np.concatenate(([0], (squares >> np.uint64(32)).astype(np.int64).cumsum(dtype=np.int64)))
        csq_lo = np.concatenate(([0], (squares & np.uint64(_LOW32)).astype(np.int64).cumsum(dtype=np.int64)))
    count = hi - lo
    longest = int(count.max()) if count.size else 0
    his = hi[None, :].repeat(len(lo), axis=0)
    max_cents = _RangeMax(cents, longest).query(lo.reshape(-1), his.reshape(-1)).reshape(lo.shape)

    has_prev = count[_WIDEST] > 0
    if len(events) == 0:
        prev_t = np.full(nq, -1, dtype=np.int64)
        prev_lat = np.zeros(nq)
        prev_long = np.zeros(nq)
    else:
        prev_idx = np.where(has_prev, hi - 1, 0)
        prev_t = np.where(has_prev, events.t[prev_idx], -1)
        prev_lat = np.where(has_prev, events.merch_lat[prev_idx], 0.0)
        prev_long = np.where(has_prev, events.merch_long[prev_idx], 0.0)

    query, hist = _pairs(lo_d, hi)
    distinct = []
    for code in (events.merchant, events.category):
        last_in_window = _next_same_time(events.key, code, events.t)[hist] >= q_t[query]
        distinct.append(np.bincount(query, weights=last_in_window, minlength=nq).astype(np.int64))
    return CardAggregates(
        count=count,
        sum_cents=csum[hi] - csum[lo],
        sumsq_hi=_wrapping_sub(csq_hi[hi], csq_hi[lo]),
        sumsq_lo=_wrapping_sub(csq_lo[hi], csq_lo[lo]),
        max_cents=max_cents,
        prev_t=prev_t.astype(np.int64),
        prev_merch_lat=prev_lat.astype(np.float64),
        prev_merch_long=prev_long.astype(np.float64),
        distinct_merchants=distinct[0],
        distinct_categories=distinct[1],
    )


def merchant_volume(m_key: I64, m_t: I64, q_key: I64, q_t: I64, delay: int) -> tuple[I64, I64]:
    """Volume and delayed-risk-window counts from merchant transactions sorted by (key, t)."""
    ck = compose(m_key, m_t)
    volume = np.empty((len(spec.MERCHANT_VOLUME_WINDOWS), len(q_t)), dtype=np.int64)
    for i, (_, seconds) in enumerate(spec.MERCHANT_VOLUME_WINDOWS):
        lo, hi = _count_between(ck, q_key, q_t - seconds, q_t)
        volume[i] = hi - lo
    risk = np.empty((len(spec.MERCHANT_RISK_WINDOWS), len(q_t)), dtype=np.int64)
    for i, (_, seconds) in enumerate(spec.MERCHANT_RISK_WINDOWS):
        lo, hi = _count_between(ck, q_key, q_t - delay - seconds, q_t - delay)
        risk[i] = hi - lo
    return volume, risk


@dataclass(frozen=True, slots=True)
class FraudIntervals:
    """When each transaction counts as a fraud: from ``arrival`` (exclusive) to ``until``
    (inclusive), by transaction; the rows of one key sorted by transaction time."""

    key: I64
    trans_t: I64
    arrival: I64
    until: I64

    def __len__(self) -> int:
        return len(self.trans_t)


def fraud_intervals(key: I64, trans: I64, trans_t: I64, arrival: I64, is_fraud: BoolArray) -> FraudIntervals:
    """The label rule of both paths, from label events (any order, duplicates allowed).

    A transaction's labels take effect in the order (arrival, is_fraud): the latest label that
    arrived strictly before ``t`` holds at ``t``, so a same-second pair counts as a fraud. A
    fraud label therefore counts for ``arrival < t <= until``, ``until`` being the arrival of
    the transaction's next label (never, if none). Events equal in (transaction, arrival, label)
    are one label (redelivery). ``trans`` identifies the transaction (any integer code).
    """
    order = np.lexsort((is_fraud, arrival, trans))
    k, tr, tt, a, f = key[order], trans[order], trans_t[order], arrival[order], is_fraud[order]
    if len(order):
        keep = np.ones(len(order), dtype=bool)
        keep[1:] = (tr[1:] != tr[:-1]) | (a[1:] != a[:-1]) | (f[1:] != f[:-1])
        k, tr, tt, a, f = k[keep], tr[keep], tt[keep], a[keep], f[keep]
    until = np.full(len(a), _NEVER, dtype=np.int64)
    if len(a) > 1:
        same = tr[1:] == tr[:-1]
        until[:-1] = np.where(same, a[1:], _NEVER)
    sel = f.nonzero()[0]
    sel = sel[np.lexsort((tt[sel], k[sel]))]
    return FraudIntervals(key=k[sel], trans_t=tt[sel], arrival=a[sel], until=until[sel])


NO_FRAUD_INTERVALS = FraudIntervals(*(np.zeros(0, dtype=np.int64) for _ in range(4)))


def merchant_frauds(labels: FraudIntervals, q_key: I64, q_t: I64, delay: int) -> I64:
    """Frauds per risk window: transactions in the delayed window whose fraud interval holds
    at the query time (``fraud_intervals``: arrived strictly before it, not yet corrected)."""
    ck = compose(labels.key, labels.trans_t)
    lo, hi = _count_between(ck, q_key, q_t - delay - spec.MAX_MERCHANT_RISK_WINDOW, q_t - delay)
    query, hist = _pairs(lo, hi)
    at = q_t[query]
    arrived = (labels.arrival[hist] < at) & (labels.until[hist] >= at)
    l_trans_t = labels.trans_t
    frauds = np.empty((len(spec.MERCHANT_RISK_WINDOWS), len(q_t)), dtype=np.int64)
    for i, (_, seconds) in enumerate(spec.MERCHANT_RISK_WINDOWS):
        inside = arrived & (l_trans_t[hist] >= q_t[query] - delay - seconds)
        frauds[i] = np.bincount(query, weights=inside, minlength=len(q_t)).astype(np.int64)
    return frauds


_EXACT_FLOAT = float(2**53)


def _scaled_variance(count: I64, total: I64, sumsq_hi: I64, sumsq_lo: I64) -> F64:
    """``n * sumsq - total**2`` (n**2 times the variance, in cents**2), exact before rounding.

    Where the products stay below 2**53 float64 is exact; the few cells above it (large amounts
    in busy windows) are computed with Python integers. Any array shape.
    """
    n = count.astype(np.float64)
    sumsq = sumsq_hi.astype(np.float64) * float(1 << 32) + sumsq_lo.astype(np.float64)
    product = n * sumsq
    out = product - total.astype(np.float64) ** 2
    big = (product >= _EXACT_FLOAT).reshape(-1).nonzero()[0]
    if len(big):
        flat = out.reshape(-1)
        c, t = count.reshape(-1), total.reshape(-1)
        hi, lo = sumsq_hi.reshape(-1), sumsq_lo.reshape(-1)
        for j in big:
            exact = (int(hi[j]) << 32) + int(lo[j])
            flat[j] = float(int(c[j]) * exact - int(t[j]) ** 2)
    return np.maximum(out, 0.0)


_COLUMN = {name: j for j, name in enumerate(spec.FEATURE_NAMES)}
_CARD_STATS = ("cnt", "sum", "mean", "max", "std")
#: Matrix columns of the card block, as (windows, stats).
_CARD_COLUMNS = np.array(
    [[_COLUMN[f"card_{stat}_{suffix}"] for stat in _CARD_STATS] for suffix, _ in spec.CARD_WINDOWS]
)
_VOLUME_COLUMNS = [_COLUMN[f"merch_cnt_{suffix}"] for suffix, _ in spec.MERCHANT_VOLUME_WINDOWS]
_RATE_COLUMNS = [_COLUMN[f"merch_fraud_rate_{suffix}"] for suffix, _ in spec.MERCHANT_RISK_WINDOWS]
_FRAUD_COLUMNS = [_COLUMN[f"merch_fraud_cnt_{suffix}"] for suffix, _ in spec.MERCHANT_RISK_WINDOWS]
_IS_ONLINE = np.array([c in spec.ONLINE_CATEGORIES for c in spec.CATEGORIES])


def assemble_features(q: Queries, card: CardAggregates, merchant: MerchantAggregates) -> F64:
    """The feature matrix (queries x ``spec.FEATURE_NAMES``) from exact aggregates.

    Window families are computed as (windows, queries) blocks, so one request costs the same
    number of numpy calls as a million rows.
    """
    empty = spec.EMPTY
    out = np.empty((len(q), len(spec.FEATURE_NAMES)), dtype=np.float64)

    def put(name: str, values: F64 | I64 | BoolArray) -> None:
        out[:, _COLUMN[name]] = values

    amt = q.cents / 100.0
    hour = (q.t // spec.HOUR) % 24
    dow = (q.t // spec.DAY + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    put("amt", amt)
    put("amt_log", np.log1p(amt))
    put("category_code", q.category)
    put("is_online_category", _IS_ONLINE[q.category])
    put("hour", hour)
    put("is_night", (hour >= spec.NIGHT_START_HOUR) | (hour < spec.NIGHT_END_HOUR))
    put("day_of_week", dow)
    put("is_weekend", dow >= 5)
    put("age_years", np.where(np.isnan(q.dob_t), empty["age_years"], (q.t - q.dob_t) / spec.SECONDS_PER_YEAR))
    put("city_pop_log", np.log1p(q.city_pop))
    put("dist_home_km", haversine_km(q.lat, q.long, q.merch_lat, q.merch_long))

    # card windows: (windows, queries) blocks, stacked as (queries, windows, stats)
    n = card.count.astype(np.float64)
    total = card.sum_cents.astype(np.float64)
    safe_n = np.maximum(n, 1.0)
    var_num = _scaled_variance(card.count, card.sum_cents, card.sumsq_hi, card.sumsq_lo)
    mean = np.where(n > 0, total / safe_n / 100.0, empty["mean"])
    block = np.stack(
        (
            n,
            total / 100.0,
            mean,
            np.where(n > 0, card.max_cents / 100.0, empty["max"]),
            np.where(n > 1, np.sqrt(var_num) / safe_n / 100.0, empty["std"]),
        ),
        axis=-1,
    )
    out[:, _CARD_COLUMNS] = block.transpose(1, 0, 2)
    mean30 = mean[_WIDEST]
    put(
        "card_amt_ratio_30d",
        np.where(mean30 > 0, amt / np.where(mean30 > 0, mean30, 1.0), empty["amt_ratio"]),
    )
    # (amount - mean) / std = (n * amount - sum) / sqrt(n * sumsq - sum**2), all exact integers but the root
    var30 = var_num[_WIDEST]
    deviation = (card.count[_WIDEST] * q.cents - card.sum_cents[_WIDEST]).astype(np.float64)
    put(
        "card_amt_zscore_30d",
        np.where(var30 > 0, deviation / np.sqrt(np.where(var30 > 0, var30, 1.0)), empty["amt_zscore"]),
    )
    has_prev = card.prev_t >= 0
    gap = np.where(has_prev, q.t - card.prev_t, 1)
    put("card_secs_since_prev", np.where(has_prev, gap, empty["secs_since_prev"]))
    hop = haversine_km(card.prev_merch_lat, card.prev_merch_long, q.merch_lat, q.merch_long)
    put("card_speed_kmh", np.where(has_prev, hop / (gap / 3600.0), empty["speed_kmh"]))
    put("card_distinct_merchants_24h", np.minimum(card.distinct_merchants, spec.DISTINCT_MERCHANTS_CAP))
    put("card_distinct_categories_24h", card.distinct_categories)

    out[:, _VOLUME_COLUMNS] = merchant.volume.T
    risk_n = merchant.risk_count.astype(np.float64)
    frauds = merchant.risk_frauds.astype(np.float64)
    out[:, _RATE_COLUMNS] = np.where(risk_n > 0, frauds / np.maximum(risk_n, 1.0), empty["fraud_rate"]).T
    out[:, _FRAUD_COLUMNS] = merchant.risk_frauds.T
    return out
