"""Kaggle-shaped synthetic transaction frames and the stream events/requests built from them.

The frame has the columns ``training.dataset.build_features`` reads (a subset of the canonical
schema): per-card homes, activity rates and dates of birth; merchants with one category each;
a day/night rhythm; and fraud episodes (bursts of large night-time card-not-present purchases
on one card), at Kaggle's 0.52 % fraud rate. Sorted by (``event_time``, ``trans_num``).
"""

import importlib.util
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pandas as pd

from fraud_core import spec
from fraud_core.schemas import LabelEvent, PredictRequest, TransactionEvent

KAGGLE_START = 1_546_300_800  # 2019-01-01T00:00:00Z, the first day of the Kaggle data
KAGGLE_ROWS = 1_852_394
FRAUD_CATEGORIES = ("shopping_net", "misc_net", "grocery_pos")
# Share of transactions per hour of day (UTC), busy afternoons and quiet nights.
_HOURLY = np.array([1, 1, 1, 1, 1, 1, 2, 3, 4, 4, 5, 5, 6, 6, 6, 6, 6, 6, 6, 5, 5, 4, 3, 2], dtype=float)


def kaggle_like_frame(
    n_rows: int,
    n_cards: int = 1000,
    n_merchants: int = 700,
    days: int = 730,
    seed: int = 0,
    fraud_rate: float = 0.0052,
    start: int = KAGGLE_START,
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    home_lat = rng.uniform(25.0, 48.0, n_cards)
    home_long = rng.uniform(-122.0, -70.0, n_cards)
    city_pop = np.clip(rng.lognormal(8.0, 2.0, n_cards), 20, 3_000_000).astype(np.int64)
    birth = rng.integers(-14_600, 12_400, n_cards)  # 1930 .. 2003, days since 1970
    dob = np.array([(date(1970, 1, 1) + pd.Timedelta(days=int(d))).isoformat() for d in birth])
    activity = rng.gamma(1.5, 1.0, n_cards)
    merchant_category = rng.integers(0, len(spec.CATEGORIES), n_merchants)
    popularity = rng.gamma(2.0, 1.0, n_merchants)

    n_fraud = round(n_rows * fraud_rate)
    sizes: list[int] = []
    while sum(sizes) < n_fraud:
        sizes.append(int(rng.integers(4, 17)))
    if sizes:
        sizes[-1] -= sum(sizes) - n_fraud
    n_legit = n_rows - n_fraud

    card = rng.choice(n_cards, n_legit, p=activity / activity.sum())
    hour = rng.choice(24, n_legit, p=_HOURLY / _HOURLY.sum())
    t = start + rng.integers(0, days, n_legit) * spec.DAY + hour * spec.HOUR + rng.integers(0, 3600, n_legit)
    merchant = rng.choice(n_merchants, n_legit, p=popularity / popularity.sum())
    category = merchant_category[merchant]
    amt = rng.lognormal(3.6 + 0.08 * category, 0.9)

    # Fraud episodes: one card, a burst within two days, mostly at night, large amounts.
    fraud_merchants = np.flatnonzero(
        np.isin(merchant_category, [spec.CATEGORY_CODE[c] for c in FRAUD_CATEGORIES])
    )
    if len(fraud_merchants) == 0:
        fraud_merchants = np.arange(n_merchants)
    f_card = np.repeat(rng.integers(0, n_cards, len(sizes)), sizes)
    f_start = np.repeat(start + rng.integers(0, max(days - 2, 1), len(sizes)) * spec.DAY, sizes)
    f_hour = rng.choice([22, 23, 0, 1, 2, 3, 12, 18], n_fraud)
    f_t = (
        f_start + rng.integers(0, 2, n_fraud) * spec.DAY + f_hour * spec.HOUR + rng.integers(0, 3600, n_fraud)
    )
    f_merchant = rng.choice(fraud_merchants, n_fraud)
    f_amt = rng.lognormal(5.8, 0.6, n_fraud)

    card = np.concatenate([card, f_card])
    t = np.concatenate([t, f_t]).astype(np.int64)
    merchant = np.concatenate([merchant, f_merchant])
    amt = np.round(np.clip(np.concatenate([amt, f_amt]), 1.0, 28_000.0), 2)
    is_fraud = np.concatenate([np.zeros(n_legit, np.int8), np.ones(n_fraud, np.int8)])
    ids = rng.integers(0, 2**63 - 1, n_rows, dtype=np.int64)
    order = np.lexsort((ids, t))  # fixed-width hex keeps the numeric order of ids
    card, t, merchant, amt, is_fraud, ids = (a[order] for a in (card, t, merchant, amt, is_fraud, ids))
    n = n_rows
    return pd.DataFrame(
        {
            "trans_num": [f"{x:016x}" for x in ids.tolist()],
            "cc_num": (4_000_000_000_000_000 + card * 7919).astype(str),
            "merchant": np.array([f"fraud_Merchant {m:04d}" for m in range(n_merchants)])[merchant],
            "category": np.array(spec.CATEGORIES)[merchant_category[merchant]],
            "amt": amt,
            "event_time": t,
            "lat": home_lat[card],
            "long": home_long[card],
            "merch_lat": np.round(home_lat[card] + rng.uniform(-1.0, 1.0, n), 6),
            "merch_long": np.round(home_long[card] + rng.uniform(-1.0, 1.0, n), 6),
            "city_pop": city_pop[card],
            "dob": dob[card],
            "is_fraud": is_fraud,
        }
    )


def simulator_available() -> bool:
    try:
        return importlib.util.find_spec("training.data.simulator") is not None
    except ModuleNotFoundError:
        return False


def kaggle_scale_frame(seed: int = 0) -> tuple[pd.DataFrame, str]:
    """The 1.85M-row frame: ``training.data.simulator.kaggle_scale()`` when it exists, else ours."""
    if simulator_available():
        from training.data.simulator import kaggle_scale, simulate

        return simulate(kaggle_scale(seed)), f"training.data.simulator.kaggle_scale(seed={seed})"
    return kaggle_like_frame(KAGGLE_ROWS, seed=seed), "bench.synthetic.kaggle_like_frame(1852394)"


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def transaction_payload(row: Any) -> dict[str, Any]:
    return {
        "kind": "transaction",
        "trans_num": row.trans_num,
        "cc_num": row.cc_num,
        "merchant": row.merchant,
        "category": row.category,
        "amt": float(row.amt),
        "transaction_time": _iso(int(row.event_time)),
        "lat": float(row.lat),
        "long": float(row.long),
        "city_pop": int(row.city_pop),
        "merch_lat": float(row.merch_lat),
        "merch_long": float(row.merch_long),
        "dob": row.dob,
    }


def label_payload(row: Any, label_delay: int) -> dict[str, Any]:
    return {
        "kind": "label",
        "trans_num": row.trans_num,
        "merchant": row.merchant,
        "transaction_time": _iso(int(row.event_time)),
        "label_time": _iso(int(row.event_time) + label_delay),
    }


def stream_payloads(
    df: pd.DataFrame, label_delay: int, until: int | None = None
) -> list[tuple[int, str, dict[str, Any]]]:
    """(arrival time, topic, payload) of every transaction and fraud label, in arrival order.

    A label arrives ``label_delay`` after its transaction; ``until`` drops later arrivals.
    """
    rows: list[Any] = list(df.itertuples(index=False))
    out = [(int(r.event_time), "fraudsys.transactions", transaction_payload(r)) for r in rows]
    out += [
        (int(r.event_time) + label_delay, "fraudsys.labels", label_payload(r, label_delay))
        for r in rows
        if r.is_fraud == 1
    ]
    if until is not None:
        out = [e for e in out if e[0] < until]
    out.sort(key=lambda e: e[0])
    return out


def to_events(payloads: Sequence[dict[str, Any]]) -> tuple[list[TransactionEvent], list[LabelEvent]]:
    transactions = [TransactionEvent.model_validate(p) for p in payloads if p["kind"] == "transaction"]
    labels = [LabelEvent.model_validate(p) for p in payloads if p["kind"] == "label"]
    return transactions, labels


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def batches[T](items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def requests_for_existing_cards(df: pd.DataFrame, n: int, at: int, seed: int = 0) -> list[PredictRequest]:
    """``n`` requests at ``at`` + up to an hour, for cards and merchants drawn like the traffic."""
    rng = np.random.default_rng(seed)
    picks: list[Any] = list(df.iloc[rng.integers(0, len(df), n)].itertuples(index=False))
    merchants: list[Any] = list(df.iloc[rng.integers(0, len(df), n)].itertuples(index=False))
    offsets = rng.integers(0, 3600, n)
    amounts = np.round(np.clip(rng.lognormal(3.8, 1.0, n), 1.0, 20_000.0), 2)
    out = []
    for i, (card, shop) in enumerate(zip(picks, merchants, strict=True)):
        out.append(
            PredictRequest(
                transaction_id=f"bench-{i:07d}",
                cc_num=card.cc_num,
                merchant_name=shop.merchant,
                category=shop.category,
                amount_usd=float(amounts[i]),
                transaction_time=datetime.fromtimestamp(at + int(offsets[i]), UTC),
                lat=float(card.lat),
                long=float(card.long),
                city_pop=int(card.city_pop),
                merch_lat=float(np.clip(card.lat + rng.uniform(-1, 1), -90, 90)),
                merch_long=float(np.clip(card.long + rng.uniform(-1, 1), -180, 180)),
                dob=date.fromisoformat(card.dob),
            )
        )
    return out
