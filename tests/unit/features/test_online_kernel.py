"""The scorer's single-row kernel (``fraud_core.online.row_features``) against the vectorized
kernel of the offline pipeline (``fraud_core.features``) on the same online state.

States are drawn the way the Redis store returns them (card events sorted by time, ties,
events on every window edge, amounts up to the schema maximum, few merchants, fraud labels on
the delayed-window edges with arrivals around the request time), so every branch of both
kernels is compared: empty windows, one event, ties, the exact-integer variance above 2**53.
"""

import math
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraud_core import spec
from fraud_core.features import FraudIntervals, fraud_intervals
from fraud_core.online import OnlineState, card_events, request_features, vectorized_request_features
from fraud_core.schemas import PredictRequest
from tests.support.events import a_request

Draw = Callable[[st.SearchStrategy[Any]], Any]
Case = tuple[PredictRequest, OnlineState, int]
T = 1_600_000_000 + 13 * spec.HOUR
EDGES = sorted(
    {seconds for _, seconds in spec.CARD_WINDOWS}
    | {0, spec.DISTINCT_WINDOW, spec.MAX_CARD_WINDOW + spec.HISTORY_SLACK}
)


def _offset(draw: Draw, edges: list[int]) -> int:
    """Seconds before the request: on or next to an edge, or anywhere (negative: after it)."""
    if draw(st.booleans()):
        return int(draw(st.sampled_from(edges))) + int(draw(st.sampled_from((-1, 0, 1))))
    return int(draw(st.integers(-spec.HOUR, spec.MAX_CARD_WINDOW + spec.DAY)))


@st.composite
def cases(draw: Draw) -> Case:
    delay = draw(st.sampled_from((0, spec.HOUR, spec.DAY, spec.DEFAULT_LABEL_DELAY)))
    n = draw(st.integers(0, 25))
    times = sorted(T - _offset(draw, EDGES) for _ in range(n))
    if n and draw(st.booleans()):  # a burst of ties
        times = sorted(times + [times[-1]] * draw(st.integers(1, 4)))
        n = len(times)
    big = draw(st.booleans())
    cents = [draw(st.integers(1, 100_000_000 if big else 50_000)) for _ in range(n)]
    coords = st.floats(-89.0, 89.0, allow_nan=False)
    events = card_events(
        t=np.array(times, dtype=np.int64),
        cents=np.array(cents, dtype=np.int64),
        merchant=np.array([draw(st.integers(0, 3)) for _ in range(n)], dtype=np.int64),
        category=np.array([draw(st.integers(0, 13)) for _ in range(n)], dtype=np.int64),
        merch_lat=np.array([draw(coords) for _ in range(n)]),
        merch_long=np.array([draw(coords) for _ in range(n)]),
    )
    risk_edges = [delay + seconds for _, seconds in spec.MERCHANT_RISK_WINDOWS] + [delay]
    # label events of a few transactions: several per transaction (reversals, same-second pairs)
    n_trans = draw(st.integers(0, 6))
    trans_t = [T - _offset(draw, risk_edges) for _ in range(n_trans)]
    label_rows = [
        (j, trans_t[j], T + draw(st.integers(-2 * spec.DAY, spec.DAY)), draw(st.booleans()))
        for j in range(n_trans)
        for _ in range(draw(st.integers(1, 3)))
    ]
    intervals = fraud_intervals(
        key=np.zeros(len(label_rows), dtype=np.int64),
        trans=np.array([r[0] for r in label_rows], dtype=np.int64),
        trans_t=np.array([r[1] for r in label_rows], dtype=np.int64),
        arrival=np.array([r[2] for r in label_rows], dtype=np.int64),
        is_fraud=np.array([r[3] for r in label_rows], dtype=bool),
    )
    state = OnlineState(
        card_events=events,
        dob=draw(st.none() | st.dates(date(1930, 1, 1), date(2005, 1, 1))),
        merchant_volume=tuple(draw(st.integers(0, 50)) for _ in spec.MERCHANT_VOLUME_WINDOWS),
        merchant_risk=tuple(draw(st.integers(0, 50)) for _ in spec.MERCHANT_RISK_WINDOWS),
        labels=intervals,
    )
    request = PredictRequest(
        cc_num="4000111122223333",
        merchant_name="fraud_Kirlin and Sons",
        category=draw(st.sampled_from(spec.CATEGORIES)),
        amount_usd=draw(st.integers(1, 100_000_000)) / 100,
        transaction_time=datetime.fromtimestamp(T + draw(st.integers(0, 1)), UTC),
        lat=draw(coords),
        long=draw(coords),
        city_pop=draw(st.integers(0, 3_000_000)),
        merch_lat=draw(coords),
        merch_long=draw(coords),
        dob=draw(st.none() | st.dates(date(1930, 1, 1), date(2005, 1, 1))),
    )
    return request, state, delay


def _mismatches(request: PredictRequest, state: OnlineState, delay: int) -> list[str]:
    got = request_features(request, state, delay)
    want = vectorized_request_features(request, state, delay)
    assert got.shape == want.shape == (1, len(spec.FEATURE_NAMES))
    return [
        f"{name}: single-row {a!r} vectorized {b!r}"
        for name, a, b in zip(spec.FEATURE_NAMES, got[0], want[0], strict=True)
        if not math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    ]


@settings(max_examples=400, deadline=None)
@given(cases())
def test_single_row_kernel_equals_the_vectorized_kernel(case: Case) -> None:
    assert _mismatches(*case) == []


def _chain_rows(delay: int) -> st.SearchStrategy[list[tuple[int, int, int, bool]]]:
    """Label events (chain, transaction time, arrival, is_fraud) of a few transactions on the
    risk windows' edges, arriving around the request time, several per chain."""
    risk_edges = [delay + seconds for _, seconds in spec.MERCHANT_RISK_WINDOWS] + [delay]

    @st.composite
    def rows(draw: Draw) -> list[tuple[int, int, int, bool]]:
        trans_t = [T - _offset(draw, risk_edges) for _ in range(draw(st.integers(0, 6)))]
        return [
            (j, trans_t[j], T + draw(st.integers(-2 * spec.DAY, spec.DAY)), draw(st.booleans()))
            for j in range(len(trans_t))
            for _ in range(draw(st.integers(1, 3)))
        ]

    return rows()


def _intervals(rows: list[tuple[int, int, int, bool]]) -> FraudIntervals:
    return fraud_intervals(
        key=np.zeros(len(rows), dtype=np.int64),
        trans=np.array([r[0] for r in rows], dtype=np.int64),
        trans_t=np.array([r[1] for r in rows], dtype=np.int64),
        arrival=np.array([r[2] for r in rows], dtype=np.int64),
        is_fraud=np.array([r[3] for r in rows], dtype=bool),
    )


def _bounded(state: OnlineState, t: int, delay: int, chains: list[tuple[int, int, int, bool]]) -> OnlineState:
    """The state as the store's bounded read gives it: per risk window the chains whose latest
    label (greatest (arrival, is_fraud)) is a fraud, and the intervals of the chains with a
    label arriving at or after ``t`` only."""
    delayed = t - delay
    latest: dict[int, tuple[int, bool]] = {}
    trans_t: dict[int, int] = {}
    for j, tt, arrival, fraud in chains:
        trans_t[j] = tt
        latest[j] = max(latest.get(j, (arrival, fraud)), (arrival, fraud))
    counts = tuple(
        sum(1 for j, (_, fraud) in latest.items() if fraud and delayed - seconds <= trans_t[j] < delayed)
        for _, seconds in spec.MERCHANT_RISK_WINDOWS
    )
    affected = {j for j, _, arrival, _ in chains if arrival >= t}
    return replace(
        state, labels=_intervals([row for row in chains if row[0] in affected]), latest_frauds=counts
    )


@settings(max_examples=300, deadline=None)
@given(cases(), st.data())
def test_the_bounded_label_read_gives_the_same_row(case: Case, data: st.DataObject) -> None:
    # given a state with every label chain of the merchant, and the same state as the store's
    # bounded read returns it (latest fraud counts, the chains with a label arriving from t on)
    request, state, delay = case
    t = int(request.transaction_time.timestamp())
    chains = data.draw(_chain_rows(delay), label="chains")
    full = replace(state, labels=_intervals(chains))
    bounded = _bounded(full, t, delay, chains)
    assert len(bounded.labels) <= len(full.labels)

    # when both kernels compute the row from each, then all four agree
    assert _mismatches(request, bounded, delay) == []
    got = request_features(request, bounded, delay)
    want = request_features(request, full, delay)
    assert got.tolist() == want.tolist()


@pytest.mark.parametrize("n_events", [0, 1])
def test_empty_and_single_event_windows(n_events: int) -> None:
    # given a card with no history or one event an hour earlier, and no merchant data
    events = card_events(
        t=np.array([T - spec.HOUR] * n_events, dtype=np.int64),
        cents=np.array([1234] * n_events, dtype=np.int64),
        merchant=np.zeros(n_events, dtype=np.int64),
        category=np.zeros(n_events, dtype=np.int64),
        merch_lat=np.full(n_events, 40.0),
        merch_long=np.full(n_events, -75.0),
    )
    request = a_request(
        cc_num=None, customer_id="C-1", amount_usd=12.34, transaction_time=datetime.fromtimestamp(T, UTC)
    )

    # when both kernels compute the row, then they agree, on the empty constants too
    state = OnlineState(card_events=events)
    assert _mismatches(request, state, spec.DEFAULT_LABEL_DELAY) == []
    row = dict(zip(spec.FEATURE_NAMES, request_features(request, state)[0], strict=True))
    assert row["card_std_30d"] == spec.EMPTY["std"]
    assert row["age_years"] == spec.EMPTY["age_years"]
    assert row["card_secs_since_prev"] == (spec.HOUR if n_events else spec.EMPTY["secs_since_prev"])
