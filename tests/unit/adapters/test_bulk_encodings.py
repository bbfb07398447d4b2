"""The bulk writer's column-wise encodings (``fraudsys backfill``) equal the updater's, value by
value: card members (``card_member_tails``), transaction index values (``tx_index.bulk_values``)
and cents (``to_cents_array``), for any valid event."""

from datetime import UTC, date, datetime

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from fraud_adapters.redis_store import (
    CardHasher,
    card_member,
    card_member_tails,
    dob_day,
    merchant_hash_codes,
)
from fraud_adapters.tx_index import TransactionIndex, bulk_values
from fraud_core import spec
from fraud_core.schemas import TransactionEvent, to_cents, to_cents_array

HASHER = CardHasher(b"bulk-encodings-card-hash-key")


class _NoRedis:
    """What ``TransactionIndex`` needs of a client to encode values (it never connects)."""

    def register_script(self, source: str) -> None:
        return None


INDEX = TransactionIndex(_NoRedis(), card_key=HASHER)  # type: ignore[arg-type]


def _floats(low: float, high: float) -> st.SearchStrategy[float]:
    tiny = st.sampled_from([0.0, -0.0, 1e-7, 5e-324, 1e-5, 0.0001, 123.0])
    return st.one_of(st.floats(low, high, allow_nan=False), tiny.filter(lambda x: low <= x <= high))


events = st.builds(
    TransactionEvent,
    trans_num=st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True),
    cc_num=st.from_regex(r"[0-9]{8,19}", fullmatch=True),
    merchant=st.text(
        st.characters(blacklist_categories=["Cs"], blacklist_characters="\x7f", min_codepoint=0x20),
        min_size=1,
        max_size=40,
    ).filter(lambda s: s.strip() == s and s),
    category=st.sampled_from(spec.CATEGORIES),
    amt=st.one_of(
        st.floats(min_value=0, max_value=1_000_000, exclude_min=True, allow_nan=False),
        st.integers(1, 10_000_000).map(lambda c: c / 100),
    ),
    transaction_time=st.integers(31_536_000, 7_258_118_399).map(lambda t: datetime.fromtimestamp(t, UTC)),
    lat=_floats(-90, 90),
    long=_floats(-180, 180),
    city_pop=st.integers(0, 100_000_000),
    merch_lat=_floats(-90, 90),
    merch_long=_floats(-180, 180),
    dob=st.none() | st.dates(date(1, 1, 1), date(9999, 12, 31)),
)


def _table(batch: list[TransactionEvent]) -> pa.Table:
    return pa.table(
        {
            "trans_num": [e.trans_num for e in batch],
            "card": [HASHER(e.cc_num) for e in batch],
            "merchant": [e.merchant for e in batch],
            "category": [e.category for e in batch],
            "amt": pa.array([e.amt for e in batch], pa.float64()),
            "event_time": pa.array([e.event_time for e in batch], pa.int64()),
            "lat": pa.array([e.lat for e in batch], pa.float64()),
            "long": pa.array([e.long for e in batch], pa.float64()),
            "city_pop": pa.array([e.city_pop for e in batch], pa.int64()),
            "merch_lat": pa.array([e.merch_lat for e in batch], pa.float64()),
            "merch_long": pa.array([e.merch_long for e in batch], pa.float64()),
            "dob": pa.array([e.dob for e in batch], pa.date32()),
        }
    )


@settings(max_examples=300, deadline=None)
@given(batch=st.lists(events, min_size=1, max_size=20))
def test_index_values_in_bulk_are_the_updaters(batch: list[TransactionEvent]) -> None:
    # given transactions as the updater validated them, and as the lake holds them

    # when their index values are built column-wise
    values = bulk_values(_table(batch)).to_pylist()

    # then each is the value the updater's claim wrote (content digest included)
    assert values == [INDEX.encode(e).encode() for e in batch]


@settings(max_examples=300, deadline=None)
@given(batch=st.lists(events, min_size=1, max_size=20))
def test_card_members_in_bulk_are_the_updaters(batch: list[TransactionEvent]) -> None:
    # given transactions, when their card members' tails are built column-wise
    tails = card_member_tails(
        t=np.array([e.event_time for e in batch], dtype=np.int64),
        cents=to_cents_array(np.array([e.amt for e in batch])),
        category=np.array([spec.CATEGORY_CODE[e.category] for e in batch], dtype=np.int64),
        merch_lat=np.array([e.merch_lat for e in batch]),
        merch_long=np.array([e.merch_long for e in batch]),
        merchant=merchant_hash_codes([e.merchant for e in batch]),
        dob_day=np.array([dob_day(e.dob) for e in batch], dtype=np.int64),
    ).tobytes()

    # then each is the tail of the member the updater writes
    members = [
        card_member(
            e.trans_num,
            e.event_time,
            to_cents(e.amt),
            spec.CATEGORY_CODE[e.category],
            e.merch_lat,
            e.merch_long,
            e.merchant,
            e.dob,
        )
        for e in batch
    ]
    assert [tails[56 * i : 56 * (i + 1)] for i in range(len(batch))] == [m[-56:] for m in members]
    assert all(m[: -56 - 1] == e.trans_num.encode() for m, e in zip(members, batch, strict=True))


@given(amounts=st.lists(st.floats(min_value=0, max_value=1_000_000, exclude_min=True), min_size=1))
def test_cents_in_bulk_round_like_one_by_one(amounts: list[float]) -> None:
    assert to_cents_array(np.array(amounts)).tolist() == [to_cents(a) for a in amounts]
