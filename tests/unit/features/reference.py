"""A brute-force reference for every feature of ``fraud_core.spec.FEATURE_NAMES``.

Written from the prose semantics (``DESIGN.md``, the ``spec`` docstring and ``spec.EMPTY``) with
plain loops over all transactions and exact rational arithmetic for the amount statistics; it
shares nothing with ``fraud_core.features`` but the constants of ``spec``. Slow on purpose: it is
only meant for the small random streams of the property tests.

One point the prose leaves open is pinned here the way both paths store card history (sorted by
``(t, trans_num)``): when several earlier card events share the latest second, "the previous
event" of the speed feature is the one with the greatest ``trans_num``.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from fractions import Fraction
from typing import Any

import pandas as pd

from fraud_core import spec

EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True, slots=True)
class Txn:
    """One row of the canonical transaction frame."""

    trans_num: str
    cc_num: str
    merchant: str
    category: str
    amt: float
    t: int
    lat: float
    long: float
    merch_lat: float
    merch_long: float
    city_pop: float
    dob: str | None
    is_fraud: bool


def _dob(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def transactions(df: pd.DataFrame) -> list[Txn]:
    """The rows of a canonical frame, in frame order."""
    out = []
    for row in df.to_dict("records"):
        out.append(
            Txn(
                trans_num=str(row["trans_num"]),
                cc_num=str(row["cc_num"]),
                merchant=str(row["merchant"]),
                category=str(row["category"]),
                amt=float(row["amt"]),
                t=int(row["event_time"]),
                lat=float(row["lat"]),
                long=float(row["long"]),
                merch_lat=float(row["merch_lat"]),
                merch_long=float(row["merch_long"]),
                city_pop=float(row["city_pop"]),
                dob=_dob(row.get("dob")),
                is_fraud=row.get("is_fraud") == 1,
            )
        )
    return out


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlmb = math.radians(lon2) - math.radians(lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, max(0.0, a))))


def exact_amount(amt: float) -> Fraction:
    """The decimal amount the float stands for (amounts carry at most two decimals)."""
    return Fraction(repr(amt))


def dob_epoch_seconds(dob: str | None) -> int | None:
    if dob is None:
        return None
    try:
        born = date.fromisoformat(dob)
    except ValueError:
        return None
    return (born - date(1970, 1, 1)).days * spec.DAY


def _window_stats(amounts: list[Fraction]) -> dict[str, float]:
    n = len(amounts)
    if n == 0:
        return {
            "cnt": 0.0,
            "sum": 0.0,
            "mean": spec.EMPTY["mean"],
            "max": spec.EMPTY["max"],
            "std": spec.EMPTY["std"],
        }
    mean = sum(amounts, Fraction(0)) / n
    variance = sum(((a - mean) ** 2 for a in amounts), Fraction(0)) / n
    return {
        "cnt": float(n),
        "sum": float(sum(amounts, Fraction(0))),
        "mean": float(mean),
        "max": float(max(amounts)),
        "std": math.sqrt(variance) if n >= 2 else spec.EMPTY["std"],
    }


def features_for(q: Txn, stream: Sequence[Txn], label_delay: int) -> dict[str, float]:
    """Every feature of ``q`` as of its own time, looking at the whole ``stream``."""
    t = q.t
    f: dict[str, float] = {}
    moment = datetime.fromtimestamp(t, tz=UTC)
    f["amt"] = q.amt
    f["amt_log"] = math.log1p(q.amt)
    f["category_code"] = float(spec.CATEGORIES.index(q.category))
    f["is_online_category"] = float(q.category in {"grocery_net", "misc_net", "shopping_net"})
    f["hour"] = float(moment.hour)
    f["is_night"] = float(moment.hour >= 22 or moment.hour < 6)
    f["day_of_week"] = float(moment.weekday())
    f["is_weekend"] = float(moment.weekday() in (5, 6))
    # The row's dob, else the card's latest dob from earlier seconds: what the online card
    # profile holds when the scorer runs.
    dob = q.dob
    if dob is None:
        earlier = [e for e in stream if e.cc_num == q.cc_num and e.dob is not None and e.t < q.t]
        dob = max(earlier, key=lambda e: (e.t, e.trans_num)).dob if earlier else None
    born = dob_epoch_seconds(dob)
    f["age_years"] = spec.EMPTY["age_years"] if born is None else (t - born) / (365.2425 * 86400)
    f["city_pop_log"] = math.log1p(q.city_pop)
    f["dist_home_km"] = haversine_km(q.lat, q.long, q.merch_lat, q.merch_long)

    card = [e for e in stream if e.cc_num == q.cc_num]
    mean30: Fraction | None = None
    var30 = Fraction(0)
    for suffix, seconds in spec.CARD_WINDOWS:
        amounts = [exact_amount(e.amt) for e in card if t - seconds <= e.t < t]
        for stat, value in _window_stats(amounts).items():
            f[f"card_{stat}_{suffix}"] = value
        if suffix == "30d" and amounts:
            mean30 = sum(amounts, Fraction(0)) / len(amounts)
            var30 = sum(((a - mean30) ** 2 for a in amounts), Fraction(0)) / len(amounts)
    amt = exact_amount(q.amt)
    f["card_amt_ratio_30d"] = spec.EMPTY["amt_ratio"] if mean30 is None else float(amt / mean30)
    if mean30 is None or var30 == 0:
        f["card_amt_zscore_30d"] = spec.EMPTY["amt_zscore"]
    else:
        f["card_amt_zscore_30d"] = float(amt - mean30) / math.sqrt(var30)

    earlier = [e for e in card if t - 30 * spec.DAY <= e.t < t]
    if earlier:
        prev = max(earlier, key=lambda e: (e.t, e.trans_num))
        gap = t - prev.t
        f["card_secs_since_prev"] = float(gap)
        hop = haversine_km(prev.merch_lat, prev.merch_long, q.merch_lat, q.merch_long)
        f["card_speed_kmh"] = hop / (gap / 3600)
    else:
        f["card_secs_since_prev"] = spec.EMPTY["secs_since_prev"]
        f["card_speed_kmh"] = spec.EMPTY["speed_kmh"]
    last_day = [e for e in card if t - spec.DAY <= e.t < t]
    f["card_distinct_merchants_24h"] = float(len({e.merchant for e in last_day}))
    f["card_distinct_categories_24h"] = float(len({e.category for e in last_day}))

    merchant = [e for e in stream if e.merchant == q.merchant]
    for suffix, seconds in spec.MERCHANT_VOLUME_WINDOWS:
        f[f"merch_cnt_{suffix}"] = float(sum(1 for e in merchant if t - seconds <= e.t < t))
    for suffix, seconds in spec.MERCHANT_RISK_WINDOWS:
        start, end = t - label_delay - seconds, t - label_delay
        in_window = [e for e in merchant if start <= e.t < end]
        frauds = sum(1 for e in in_window if e.is_fraud and e.t + label_delay < t)
        f[f"merch_fraud_rate_{suffix}"] = frauds / len(in_window) if in_window else spec.EMPTY["fraud_rate"]
        f[f"merch_fraud_cnt_{suffix}"] = float(frauds)
    return f


def reference_features(stream: Sequence[Txn], label_delay: int) -> list[dict[str, float]]:
    """Feature dicts (keyed by ``spec.FEATURE_NAMES``) for every transaction, in stream order."""
    return [features_for(q, stream, label_delay) for q in stream]
