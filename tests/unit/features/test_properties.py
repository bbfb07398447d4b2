"""``training.dataset.build_features`` against the brute-force reference, plus its invariants.

Streams are small and adversarial: few cards and merchants, many same-second ties, dense bursts,
events placed exactly on window edges (``t - w``, ``t - delay - w``), two-decimal amounts, missing
dates of birth, fraud flags and custom label delays.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fraud_core import spec
from training.dataset import ID_COLUMNS, LABEL_COLUMN, build_features

from .reference import reference_features, transactions

Row = dict[str, Any]
Draw = Callable[[st.SearchStrategy[Any]], Any]

BASE_T = 1_577_836_800  # 2020-01-01T00:00:00Z, a Wednesday
HOUR, DAY = spec.HOUR, spec.DAY
DEFAULT_DELAY = spec.DEFAULT_LABEL_DELAY
#: Amounts up to this many cents keep every window's exact integer moments below 2**53 for the
#: stream sizes drawn here (see ``test_std_of_large_nearly_equal_amounts``).
REALISTIC_MAX_CENTS = 3_000_000  # $30,000.00, above the largest Sparkov amount
SCHEMA_MAX_CENTS = 100_000_000  # $1,000,000.00, ``fraud_core.schemas.Amount``
MAX_ROWS = 30
CARDS = (4_000_111_122_223_333, 4_000_111_122_224_444, 30_123_456_789_012)
MERCHANTS = ("fraud_Kirlin and Sons", "fraud_Sporer-Keebler", "fraud_Haley Group", "fraud_Lind-Buckridge")
FEATURES = list(spec.FEATURE_NAMES)


@dataclass(frozen=True, slots=True)
class Stream:
    rows: list[Row]
    label_delay: int
    explicit_delay: bool  # False: build_features is called with its default delay

    def frame(self, rows: Sequence[Row] | None = None) -> pd.DataFrame:
        return pd.DataFrame(list(self.rows if rows is None else rows))

    def build(self, df: pd.DataFrame) -> pd.DataFrame:
        if self.explicit_delay:
            return build_features(df, label_delay=self.label_delay)
        return build_features(df)


def edge_offsets(delay: int) -> list[int]:
    """Offsets that put one event on (or next to) a window edge of another."""
    spans = {seconds for _, seconds in spec.CARD_WINDOWS}
    spans |= {spec.DISTINCT_WINDOW, delay}
    spans |= {seconds for _, seconds in spec.MERCHANT_VOLUME_WINDOWS}
    spans |= {delay + seconds for _, seconds in spec.MERCHANT_RISK_WINDOWS}
    return sorted({span + k for span in spans for k in (-1, 0, 1)} | {1})


def _event_time(draw: Draw, earlier: list[int], edges: list[int]) -> int:
    modes = ("fresh", "clock", "tie", "burst", "edge")
    mode = draw(st.sampled_from(modes if earlier else modes[:2]))
    if mode == "fresh":
        return BASE_T + int(draw(st.integers(0, 45 * DAY)))
    if mode == "clock":  # on or just before an hour that starts or ends the night, or a day
        hour = int(draw(st.sampled_from((0, spec.NIGHT_END_HOUR, spec.NIGHT_START_HOUR, 12))))
        day = int(draw(st.integers(0, 45)))
        return BASE_T + day * DAY + hour * HOUR - int(draw(st.sampled_from((0, 1))))
    anchor = int(draw(st.sampled_from(earlier)))
    if mode == "tie":
        return anchor
    if mode == "burst":
        return anchor + int(draw(st.integers(1, 600)))
    return anchor + int(draw(st.sampled_from(edges))) * int(draw(st.sampled_from((1, -1))))


def _amount_cents(draw: Draw, earlier: list[int], max_cents: int) -> int:
    choices = [
        st.integers(1, 50_000),
        st.integers(1, max_cents),
        st.sampled_from((1, 99, 100, max_cents - 1, max_cents)),
    ]
    if earlier:
        choices.append(st.sampled_from(earlier))  # equal amounts: zero std
        choices.append(st.sampled_from(earlier).map(lambda c: min(max_cents, c + 1)))
    return int(draw(st.one_of(*choices)))


def _coordinate(draw: Draw, low: int, high: int) -> float:
    return int(draw(st.integers(low * 10_000, high * 10_000))) / 10_000


@st.composite
def streams(
    draw: Draw,
    max_cents: int = REALISTIC_MAX_CENTS,
    min_rows: int = 1,
    labels: bool | None = None,
) -> Stream:
    delay = int(draw(st.sampled_from((0, 1, HOUR, DAY, 3 * DAY, DEFAULT_DELAY, 30 * DAY, 45 * DAY))))
    explicit = delay != DEFAULT_DELAY or bool(draw(st.booleans()))
    n = int(draw(st.integers(min_rows, MAX_ROWS)))
    cards = draw(st.lists(st.sampled_from(CARDS), min_size=1, max_size=3, unique=True))
    merchants = draw(st.lists(st.sampled_from(MERCHANTS), min_size=1, max_size=4, unique=True))
    categories = draw(st.lists(st.sampled_from(spec.CATEGORIES), min_size=1, max_size=4, unique=True))
    homes = {card: (_coordinate(draw, -60, 70), _coordinate(draw, -179, 179)) for card in cards}
    dobs = {
        card: draw(st.one_of(st.none(), st.dates(date(1920, 1, 1), date(2005, 12, 31)).map(date.isoformat)))
        for card in cards
    }
    pops = {card: int(draw(st.integers(0, 3_000_000))) for card in cards}
    with_labels = draw(st.sampled_from((True, True, True, False))) if labels is None else labels
    names = draw(st.permutations(range(n)))
    edges = edge_offsets(delay)
    times: list[int] = []
    amounts: list[int] = []
    rows: list[Row] = []
    for i in range(n):
        card = draw(st.sampled_from(cards))
        lat, long = homes[card]
        times.append(_event_time(draw, times, edges))
        amounts.append(_amount_cents(draw, amounts, max_cents))
        row: Row = {
            "trans_num": f"T{names[i]}",  # string order differs from numeric order (T10 < T9)
            "cc_num": card,
            "merchant": draw(st.sampled_from(merchants)),
            "category": draw(st.sampled_from(categories)),
            "amt": amounts[-1] / 100,
            "event_time": times[-1],
            "lat": lat,
            "long": long,
            "merch_lat": lat + _coordinate(draw, -1, 1),
            "merch_long": long + _coordinate(draw, -1, 1),
            "city_pop": pops[card],
            "dob": draw(st.sampled_from((dobs[card], dobs[card], dobs[card], None, math.nan))),
        }
        if with_labels:
            row[LABEL_COLUMN] = int(draw(st.sampled_from((0, 0, 1))))
        rows.append(row)
    return Stream(rows, delay, explicit)


def mismatches(out: pd.DataFrame, df: pd.DataFrame, label_delay: int) -> list[str]:
    expected = reference_features(transactions(df), label_delay)
    got = out[FEATURES].to_numpy(dtype=np.float64)
    problems = []
    for i, want in enumerate(expected):
        assert set(want) == set(FEATURES)
        for j, name in enumerate(FEATURES):
            value = float(got[i, j])
            if not math.isclose(value, want[name], rel_tol=1e-9, abs_tol=1e-9):
                problems.append(
                    f"{name} of row {i} (trans_num={df['trans_num'].iloc[i]}): "
                    f"got {value!r}, reference {want[name]!r}"
                )
    return problems


def assert_matches_reference(stream: Stream) -> None:
    df = stream.frame()
    out = stream.build(df)
    assert list(out.columns) == [c for c in (*ID_COLUMNS, LABEL_COLUMN) if c in df] + FEATURES
    assert list(out["trans_num"]) == list(df["trans_num"])
    problems = mismatches(out, df, stream.label_delay)
    assert not problems, f"label_delay={stream.label_delay}, {len(problems)} mismatches:\n" + "\n".join(
        problems[:20]
    )


def by_trans_num(out: pd.DataFrame) -> dict[str, np.ndarray[Any, np.dtype[np.float64]]]:
    values = out[FEATURES].to_numpy(dtype=np.float64)
    return {str(tn): values[i] for i, tn in enumerate(out["trans_num"])}


def _row(trans_num: str, t: int, **overrides: Any) -> Row:
    row: Row = {
        "trans_num": trans_num,
        "cc_num": CARDS[0],
        "merchant": MERCHANTS[0],
        "category": "home",
        "amt": 10.0,
        "event_time": t,
        "lat": 40.0,
        "long": -75.0,
        "merch_lat": 40.5,
        "merch_long": -75.5,
        "city_pop": 1000,
        "dob": "1980-02-29",
        LABEL_COLUMN: 0,
    }
    row.update(overrides)
    return row


def _features_of(out: pd.DataFrame, trans_num: str) -> dict[str, float]:
    (row,) = out.loc[out["trans_num"] == trans_num, FEATURES].to_dict("records")
    return {str(name): float(value) for name, value in row.items()}


# The known precision bug (see test_std_of_large_nearly_equal_amounts), as a stream.
LARGE_AMOUNTS = Stream(
    [
        _row("a", BASE_T, amt=1_000_000.00),
        _row("b", BASE_T + 1, amt=999_999.99),
        _row("c", BASE_T + 2, amt=5.00),
    ],
    DEFAULT_DELAY,
    explicit_delay=False,
)


@settings(max_examples=250, deadline=None)
@given(streams())
def test_build_features_matches_reference(stream: Stream) -> None:
    assert_matches_reference(stream)


@settings(max_examples=50, deadline=None)
@given(streams(max_cents=SCHEMA_MAX_CENTS))
@example(LARGE_AMOUNTS)
def test_build_features_matches_reference_up_to_schema_max_amount(stream: Stream) -> None:
    assert_matches_reference(stream)


@settings(max_examples=50, deadline=None)
@given(streams(min_rows=2), st.randoms(use_true_random=False))
def test_order_independence(stream: Stream, rng: Any) -> None:
    df = stream.frame()
    shuffled_rows = list(stream.rows)
    rng.shuffle(shuffled_rows)
    shuffled = stream.frame(shuffled_rows)
    shuffled.index = pd.Index(rng.sample(range(1000), len(shuffled)))
    a, b = by_trans_num(stream.build(df)), by_trans_num(stream.build(shuffled))
    assert a.keys() == b.keys()
    for trans_num, values in a.items():
        np.testing.assert_array_equal(values, b[trans_num], err_msg=f"trans_num={trans_num}")


@settings(max_examples=50, deadline=None)
@given(streams())
def test_duplicate_free_and_deterministic(stream: Stream) -> None:
    df = stream.frame()
    before = df.copy()
    first = stream.build(df)
    second = stream.build(df.copy())
    pd.testing.assert_frame_equal(df, before)  # the input is not modified
    pd.testing.assert_frame_equal(first, second, check_exact=True)
    assert len(first) == len(df)
    assert first["trans_num"].is_unique
    assert list(first.index) == list(df.index)
    for column in (c for c in (*ID_COLUMNS, LABEL_COLUMN) if c in df):
        assert list(first[column]) == list(df[column]), column
    assert np.isfinite(first[FEATURES].to_numpy(dtype=np.float64)).all()


@st.composite
def future_changes(draw: Draw) -> tuple[Stream, int, list[Row]]:
    """A stream, a cut time T and a copy whose events at or after T were changed, added or dropped."""
    stream = draw(streams(labels=True))
    times = sorted({r["event_time"] for r in stream.rows})
    cut = int(draw(st.sampled_from(times))) + int(draw(st.sampled_from((0, 0, 1))))
    changed: list[Row] = []
    for row in stream.rows:
        if row["event_time"] < cut:
            changed.append(dict(row))
            continue
        if draw(st.booleans()) and draw(st.booleans()):
            continue  # dropped
        new = dict(row)
        new["amt"] = int(draw(st.integers(1, REALISTIC_MAX_CENTS))) / 100
        new[LABEL_COLUMN] = int(draw(st.integers(0, 1)))
        new["merchant"] = draw(st.sampled_from(MERCHANTS))
        new["category"] = draw(st.sampled_from(spec.CATEGORIES))
        new["event_time"] = cut + int(draw(st.integers(0, 40 * DAY)))
        new["merch_lat"] = new["lat"] + _coordinate(draw, -1, 1)
        changed.append(new)
    for k in range(int(draw(st.integers(0, 5)))):
        card = draw(st.sampled_from(CARDS))
        changed.append(
            _row(
                f"new{k}",
                cut + int(draw(st.sampled_from((0, 1, HOUR, DAY)))),
                cc_num=card,
                merchant=draw(st.sampled_from(MERCHANTS)),
                amt=int(draw(st.integers(1, REALISTIC_MAX_CENTS))) / 100,
                **{LABEL_COLUMN: int(draw(st.integers(0, 1)))},
            )
        )
    order = draw(st.permutations(range(len(changed))))
    return stream, cut, [changed[i] for i in order]


@settings(max_examples=75, deadline=None)
@given(future_changes())
def test_no_leakage_from_events_at_or_after_cut(case: tuple[Stream, int, list[Row]]) -> None:
    stream, cut, changed_rows = case
    original = by_trans_num(stream.build(stream.frame()))
    changed = by_trans_num(stream.build(stream.frame(changed_rows)))
    for row in stream.rows:
        if row["event_time"] < cut:
            np.testing.assert_array_equal(
                original[row["trans_num"]], changed[row["trans_num"]], err_msg=f"{row['trans_num']} (T={cut})"
            )


@settings(max_examples=75, deadline=None)
@given(streams(labels=True, min_rows=2), st.data())
def test_labels_count_only_once_arrived(stream: Stream, data: st.DataObject) -> None:
    flip = data.draw(st.sets(st.integers(0, len(stream.rows) - 1), min_size=1))
    # Every flipped label arrives at or after `arrival`, so rows at or before it cannot see them.
    arrival = min(stream.rows[i]["event_time"] + stream.label_delay for i in flip)
    flipped = [dict(r) for r in stream.rows]
    for i in flip:
        flipped[i][LABEL_COLUMN] = 1 - flipped[i][LABEL_COLUMN]
    original = by_trans_num(stream.build(stream.frame()))
    changed = by_trans_num(stream.build(stream.frame(flipped)))
    for row in stream.rows:
        if row["event_time"] <= arrival:
            np.testing.assert_array_equal(
                original[row["trans_num"]], changed[row["trans_num"]], err_msg=row["trans_num"]
            )


@pytest.mark.parametrize(("suffix", "seconds"), spec.CARD_WINDOWS)
def test_card_window_edges(suffix: str, seconds: int) -> None:
    # given: events just outside, exactly on and inside the window, a same-second tie and the query
    t = BASE_T + 60 * DAY
    df = pd.DataFrame(
        [
            _row("outside", t - seconds - 1, amt=1.00),
            _row("edge", t - seconds, amt=2.00),
            _row("inside", t - 1, amt=4.00),
            _row("tie", t, amt=8.00),
            _row("query", t, amt=16.00),
            _row("other_card", t - 1, amt=32.00, cc_num=CARDS[1]),
        ]
    )
    # when
    out = build_features(df)
    # then: [t - w, t) holds exactly "edge" and "inside", for the query and for its tie
    for trans_num in ("query", "tie"):
        row = _features_of(out, trans_num)
        assert row[f"card_cnt_{suffix}"] == 2, trans_num
        assert row[f"card_sum_{suffix}"] == pytest.approx(6.0, rel=1e-12), trans_num
        assert row[f"card_mean_{suffix}"] == pytest.approx(3.0, rel=1e-12), trans_num
        assert row[f"card_max_{suffix}"] == pytest.approx(4.0, rel=1e-12), trans_num
        assert row[f"card_std_{suffix}"] == pytest.approx(1.0, rel=1e-12), trans_num
        assert row["card_secs_since_prev"] == 1, trans_num
    assert not mismatches(out, df, DEFAULT_DELAY)


def test_distinct_and_previous_event_window_edges() -> None:
    t = BASE_T + 60 * DAY
    df = pd.DataFrame(
        [
            _row("old", t - DAY - 1, merchant=MERCHANTS[0], category="travel"),
            _row("edge", t - DAY, merchant=MERCHANTS[1], category="home"),
            _row("inside", t - 1, merchant=MERCHANTS[2], category="home"),
            _row("tie", t, merchant=MERCHANTS[3], category="kids_pets"),
            _row("query", t, merchant=MERCHANTS[0], category="home"),
        ]
    )
    query = _features_of(build_features(df), "query")
    assert query["card_distinct_merchants_24h"] == 2
    assert query["card_distinct_categories_24h"] == 1

    # an event exactly 30 days earlier is the previous event; one second more and there is none
    month = 30 * DAY
    for gap, expected_secs, has_prev in ((month, month, True), (month + 1, month, False)):
        df = pd.DataFrame([_row("prev", t - gap, merch_lat=41.0), _row("query", t, merch_lat=40.0)])
        query = _features_of(build_features(df), "query")
        assert query["card_secs_since_prev"] == expected_secs
        assert (query["card_speed_kmh"] > 0) == has_prev
        assert not mismatches(build_features(df), df, DEFAULT_DELAY)


@pytest.mark.parametrize(("suffix", "seconds"), spec.MERCHANT_VOLUME_WINDOWS)
def test_merchant_volume_window_edges(suffix: str, seconds: int) -> None:
    t = BASE_T + 60 * DAY
    df = pd.DataFrame(
        [
            _row("outside", t - seconds - 1, cc_num=CARDS[1]),
            _row("edge", t - seconds, cc_num=CARDS[2]),
            _row("inside", t - 1, cc_num=CARDS[1]),
            _row("tie", t, cc_num=CARDS[2]),
            _row("other_merchant", t - 1, merchant=MERCHANTS[1]),
            _row("query", t),
        ]
    )
    out = build_features(df)
    assert _features_of(out, "query")[f"merch_cnt_{suffix}"] == 2
    assert _features_of(out, "tie")[f"merch_cnt_{suffix}"] == 2
    assert not mismatches(out, df, DEFAULT_DELAY)


@pytest.mark.parametrize("delay", [0, 1, HOUR, 3 * DAY, DEFAULT_DELAY, 30 * DAY, None])
@pytest.mark.parametrize(("suffix", "seconds"), spec.MERCHANT_RISK_WINDOWS)
def test_fraud_counts_only_after_its_label_arrives(suffix: str, seconds: int, delay: int | None) -> None:
    # given: a fraud and a legitimate transaction at merchant M at time s
    s = BASE_T
    effective = DEFAULT_DELAY if delay is None else delay
    history = [
        _row("fraud", s, cc_num=CARDS[1], **{LABEL_COLUMN: 1}),
        _row("legit", s, cc_num=CARDS[2], **{LABEL_COLUMN: 0}),
    ]
    cases = {  # query time -> (frauds, transactions) in M's delayed window
        s + effective: (0, 0),  # label arrives exactly at t: not yet visible, and s is past the window
        s + effective + 1: (1, 2),
        s + effective + seconds: (1, 2),  # s == t - delay - w: on the window's lower edge
        s + effective + seconds + 1: (0, 0),
    }
    for t, (frauds, count) in cases.items():
        df = pd.DataFrame([*history, _row("query", t, cc_num=CARDS[0])])
        # when
        out = build_features(df) if delay is None else build_features(df, label_delay=delay)
        # then
        query = _features_of(out, "query")
        assert query[f"merch_fraud_cnt_{suffix}"] == frauds, t - s
        expected_rate = frauds / count if count else spec.EMPTY["fraud_rate"]
        assert query[f"merch_fraud_rate_{suffix}"] == pytest.approx(expected_rate), t - s
        assert not mismatches(out, df, effective)


def test_first_transaction_gets_the_empty_constants() -> None:
    df = pd.DataFrame([_row("only", BASE_T, dob=None)])
    row = _features_of(build_features(df), "only")
    for suffix, _ in spec.CARD_WINDOWS:
        assert row[f"card_cnt_{suffix}"] == 0
        assert row[f"card_sum_{suffix}"] == 0
        assert row[f"card_mean_{suffix}"] == spec.EMPTY["mean"]
        assert row[f"card_max_{suffix}"] == spec.EMPTY["max"]
        assert row[f"card_std_{suffix}"] == spec.EMPTY["std"]
    assert row["card_amt_ratio_30d"] == spec.EMPTY["amt_ratio"]
    assert row["card_amt_zscore_30d"] == spec.EMPTY["amt_zscore"]
    assert row["card_secs_since_prev"] == spec.EMPTY["secs_since_prev"]
    assert row["card_speed_kmh"] == spec.EMPTY["speed_kmh"]
    assert row["age_years"] == spec.EMPTY["age_years"]
    for suffix, _ in spec.MERCHANT_RISK_WINDOWS:
        assert row[f"merch_fraud_rate_{suffix}"] == spec.EMPTY["fraud_rate"]


def test_std_of_large_nearly_equal_amounts() -> None:
    # $1,000,000.00 then $999,999.99: population std 0.005, z-score of a $5 purchase about -2e8
    df = LARGE_AMOUNTS.frame()
    row = _features_of(build_features(df), "c")
    assert row["card_std_1h"] == pytest.approx(0.005, rel=1e-9)
    assert row["card_amt_zscore_30d"] == pytest.approx((5.00 - 999_999.995) / 0.005, rel=1e-9)
