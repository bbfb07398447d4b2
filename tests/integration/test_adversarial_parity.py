"""Adversarial and real-world streams through the real updater, a real redis-server and the real
scorer, compared with the offline rows built from the events the updater accepted (what the
lake holds): late, early, reversed, duplicated and unmatched labels; future-dated requests,
transactions and labels; events older than a key's retention; dates of birth out of order;
amounts at the schema's bounds. Every case asserts 0 mismatches beyond 1e-9 and 0 degraded
answers (issues 13 and 14)."""

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fraud_core import spec
from fraud_core.online import summarize_card
from fraud_core.schemas import LabelEvent, PredictRequest
from handlers import bootstrap, predict, update_features
from local_stack.demo import predict_body
from local_stack.events import StreamRecord
from local_stack.events import msk_event as build_msk_event
from local_stack.replay import transaction_event
from tests.support.events import FakeContext, api_gateway_event
from tests.support.lambda_env import handler_environment
from tests.support.streams import synthetic_stream
from training.dataset import LABEL_EVENT_COLUMNS, build_features

pytestmark = pytest.mark.integration

DELAY = 2 * spec.DAY
TX_TOPIC, LABEL_TOPIC = "fraudsys.transactions", "fraudsys.labels"


def _when(t: int) -> datetime:
    return datetime.fromtimestamp(t, UTC)


class Harness:
    """The real handlers over a real redis-server; remembers what the updater accepted."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.offset = 0
        self.metrics: list[dict[str, Any]] = []

    def send(self, records: list[tuple[str, bytes]], record_time: int | None = None) -> dict[str, Any]:
        """One MSK batch; the broker's timestamp is ``record_time`` (default: now)."""
        stamp_ms = (record_time if record_time is not None else int(datetime.now(UTC).timestamp())) * 1000
        items = []
        for topic, value in records:
            items.append(StreamRecord(topic, 0, self.offset, stamp_ms, b"k", value))
            self.offset += 1
        return dict(update_features.handler(build_msk_event(items), FakeContext()))

    def dead_letters(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.root / "dead").rglob("*.json"))]

    @staticmethod
    def features(row: dict[Any, Any]) -> tuple[np.ndarray[Any, Any], bool]:
        scored = predict.scorer().score(PredictRequest.model_validate(predict_body(row)))
        return scored.features[0], scored.response.degraded


def compare(harness: Harness, rows: list[dict[Any, Any]], offline: pd.DataFrame) -> list[str]:
    mismatches = []
    for row in rows:
        online, degraded = harness.features(row)
        assert not degraded
        want = offline.loc[str(row["trans_num"]), list(spec.FEATURE_NAMES)].to_numpy(dtype=float)
        for name, got, expected in zip(spec.FEATURE_NAMES, online, want, strict=True):
            if not math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9):
                mismatches.append(f"{row['trans_num']} {name}: online {got!r} offline {expected!r}")
    return mismatches


def feature(offline: pd.DataFrame, trans_num: str, name: str) -> float:
    return float(offline.loc[trans_num, [name]].to_numpy(dtype=float)[0])


@pytest.fixture(params=["events", "tiles"])
def harness(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, handler_redis: str, request: pytest.FixtureRequest
) -> Iterator[Harness]:
    """Cards stored as events, or as time tiles from their first event (``CARD_TILE_THRESHOLD=0``)."""
    tiles = {"CARD_TILE_THRESHOLD": "0"} if request.param == "tiles" else {}
    with handler_environment(monkeypatch, tmp_path, DELAY, **tiles) as root:
        yield Harness(root)


def _label(trans_num: str, merchant: str, trans_t: int, arrival: int, is_fraud: bool) -> LabelEvent:
    return LabelEvent(
        trans_num=trans_num,
        merchant=merchant,
        transaction_time=_when(trans_t),
        label_time=_when(arrival),
        is_fraud=is_fraud,
    )


def _label_stream(df: pd.DataFrame, rng: np.random.Generator) -> list[LabelEvent]:
    """Labels the way banks send them: on time, late, early, reversed (and back), same-second
    pairs, duplicates, for transactions nobody knows, and naming another merchant."""
    labels: list[LabelEvent] = []
    merchants = df["merchant"].unique().tolist()
    for row in df.sample(frac=0.25, random_state=5).to_dict("records"):
        tn, m, t = str(row["trans_num"]), str(row["merchant"]), int(row["event_time"])
        kind = int(rng.integers(0, 8))
        if kind == 0:  # on time
            labels.append(_label(tn, m, t, t + DELAY, True))
        elif kind == 1:  # late: 9 days after the transaction, long after the delay
            labels.append(_label(tn, m, t, t + 9 * spec.DAY, True))
        elif kind == 2:  # early
            labels.append(_label(tn, m, t, t + int(rng.integers(60, DELAY)), True))
        elif kind == 3:  # reversed, sometimes reversed back
            labels.append(_label(tn, m, t, t + DELAY, True))
            labels.append(_label(tn, m, t, t + DELAY + int(rng.integers(1, 5 * spec.DAY)), False))
            if rng.random() < 0.5:
                labels.append(_label(tn, m, t, t + DELAY + 6 * spec.DAY, True))
        elif kind == 4:  # fraud and not fraud in the same second
            labels += [_label(tn, m, t, t + DELAY, True), _label(tn, m, t, t + DELAY, False)]
        elif kind == 5:  # a correction alone (the transaction was never reported)
            labels.append(_label(tn, m, t, t + DELAY, False))
        elif kind == 6:  # a label naming another merchant than its transaction's
            other = merchants[int(rng.integers(0, len(merchants)))]
            labels.append(_label(tn, other, t, t + DELAY, True))
        else:  # a fraud label, then a correction that names another merchant (another chain)
            other = merchants[int(rng.integers(0, len(merchants)))]
            labels += [_label(tn, m, t, t + DELAY, True), _label(tn, other, t, t + DELAY + spec.DAY, False)]
    for i in range(20):  # transactions nobody knows, at known merchants, inside the windows
        t = int(df["event_time"].iloc[int(rng.integers(0, len(df)))])
        labels.append(_label(f"unknown-{i}", merchants[i % len(merchants)], t, t + DELAY, True))
    labels += [labels[int(i)] for i in rng.choice(len(labels), len(labels) // 5)]  # redelivered
    return labels


def test_labels_late_early_reversed_unknown_and_duplicated_match_offline(harness: Harness) -> None:
    # given a stream of transactions and of labels with every arrival pattern, and its offline rows
    df = synthetic_stream(n=700, n_cards=15, n_merchants=6, days=40, seed=11)
    rng = np.random.default_rng(2)
    labels = _label_stream(df, rng)
    label_frame = pd.DataFrame(
        [(e.trans_num, e.merchant, e.event_time, e.arrival_time, e.is_fraud) for e in labels],
        columns=list(LABEL_EVENT_COLUMNS),
    )
    offline = build_features(df, DELAY, labels=label_frame).set_index("trans_num")
    events = [
        (int(r["event_time"]), TX_TOPIC, transaction_event(r).model_dump_json().encode())
        for r in df.to_dict("records")
    ]
    events += [(e.arrival_time, LABEL_TOPIC, e.model_dump_json().encode()) for e in labels]
    events.sort(key=lambda e: e[0])

    # when every event before t reaches the real updater (out of order within an hour, labels
    # on their topic) before the scorer scores the transactions at t
    applied, mismatches = 0, []
    for t in sorted(set(df["event_time"].tolist())):
        group = df[df["event_time"] == t]
        lookahead = t + int(rng.integers(0, 3600))
        end = applied
        while end < len(events) and events[end][0] < lookahead:
            end += 1
        batch = [(topic, value) for _, topic, value in events[applied:end]]
        applied = end
        if batch:
            order = rng.permutation(len(batch))
            assert harness.send([batch[i] for i in order]) == {"batchItemFailures": []}
        mismatches += compare(harness, group.to_dict("records"), offline)

    # then every feature of every transaction matches, and the labels really moved the windows
    assert mismatches == [], f"{len(mismatches)} mismatches, first: {mismatches[:10]}"
    assert harness.dead_letters() == []
    assert offline["merch_fraud_cnt_30d"].max() >= 2
    corrected = build_features(df, DELAY, labels=label_frame[label_frame["is_fraud"]])
    assert (corrected["merch_fraud_cnt_30d"].to_numpy() != offline["merch_fraud_cnt_30d"].to_numpy()).any()


def _tx_row(
    trans_num: str, t: int, amt: float = 25.0, card: str = "4000000000000001", **extra: Any
) -> dict[str, Any]:
    row = {
        "trans_num": trans_num,
        "cc_num": card,
        "merchant": "fraud_Kirlin and Sons",
        "category": "grocery_pos",
        "amt": amt,
        "event_time": t,
        "lat": 40.0,
        "long": -75.0,
        "merch_lat": 40.1,
        "merch_long": -75.1,
        "city_pop": 1000,
        "dob": "1980-01-01",
        "is_fraud": 0,
    }
    return row | extra


T0 = 1_590_969_600  # 2020-06-01


def test_future_dated_requests_transactions_and_labels_change_nothing(harness: Harness) -> None:
    # given a card and a second card at the same merchant with 30 days of history
    history = [_tx_row(f"h{i}", T0 + i * 20_000) for i in range(100)]
    history += [_tx_row(f"o{i}", T0 + i * 50_000 + 7, card="4000000000000002") for i in range(40)]
    harness.send([(TX_TOPIC, transaction_event(r).model_dump_json().encode()) for r in history])
    last = T0 + 99 * 20_000

    # when an attacker posts a request dated 2100, and future events reach the stream directly
    future = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp())
    body = predict_body(_tx_row("attack-1", future))
    response = predict.handler(api_gateway_event("POST", "/predict", body), FakeContext())
    stamped = transaction_event(_tx_row("attack-3", last + 3600)).model_copy(
        update={"received_at": _when(last)}
    )
    refused = harness.send(
        [
            (TX_TOPIC, transaction_event(_tx_row("attack-2", future)).model_dump_json().encode()),
            (TX_TOPIC, stamped.model_dump_json().encode()),  # an hour after the scorer received it
            (
                LABEL_TOPIC,
                _label("h5", "fraud_Kirlin and Sons", T0 + 5 * 20_000, future, True)
                .model_dump_json()
                .encode(),
            ),
        ]
    )

    # then the request is refused naming the field, the events are dead-lettered with the reason
    assert response["statusCode"] == 422
    assert json.loads(response["body"])["message"].startswith("transaction_time: must not be more than 300 s")
    assert refused == {"batchItemFailures": []}
    reasons = [letter["reason"] for letter in harness.dead_letters()]
    assert len(reasons) == 3
    assert all(r.startswith("refused by the time guard") for r in reasons)

    # and ten more real transactions of each card score exactly as offline, from full history
    live = [_tx_row(f"l{i}", last + 600 * (i + 1)) for i in range(10)]
    live += [_tx_row(f"p{i}", last + 600 * (i + 1) + 5, card="4000000000000002") for i in range(10)]
    live.sort(key=lambda r: int(r["event_time"]))
    offline = build_features(pd.DataFrame(history + live), DELAY).set_index("trans_num")
    mismatches = []
    for row in live:
        mismatches += compare(harness, [row], offline)
        harness.send([(TX_TOPIC, transaction_event(row).model_dump_json().encode())])
    assert mismatches == []
    assert feature(offline, "l9", "card_cnt_30d") > 80


def test_an_event_older_than_its_retention_is_late_not_a_duplicate(harness: Harness) -> None:
    # given a card whose newest event is at T0
    harness.send([(TX_TOPIC, transaction_event(_tx_row("new", T0)).model_dump_json().encode())])

    # when an event 32 days older arrives (beyond 30 days + 1 day of slack)
    old = _tx_row("old", T0 - 32 * spec.DAY)
    assert harness.send([(TX_TOPIC, transaction_event(old).model_dump_json().encode())]) == {
        "batchItemFailures": []
    }

    # then it is dead-lettered as late, and the state is that of the newest event alone
    [letter] = harness.dead_letters()
    assert letter["reason"].startswith("late")
    store = bootstrap.feature_store()
    state = store.read("4000000000000001", "fraud_Kirlin and Sons", T0 + 1)
    card = state.card_summary or summarize_card(state.card_events, T0 + 1)
    assert card.count[-1] == 1


def test_dates_of_birth_follow_event_time_whatever_the_arrival_order(harness: Harness) -> None:
    # given two transactions with different dates of birth, applied newest first
    a = _tx_row("a", T0, dob="1970-01-01")
    b = _tx_row("b", T0 + spec.DAY, dob="1990-01-01")
    for row in (b, a):
        harness.send([(TX_TOPIC, transaction_event(row).model_dump_json().encode())])

    # when requests without a dob are scored between and after them
    between = _tx_row("q1", T0 + spec.HOUR, dob=None)
    after = _tx_row("q2", T0 + 2 * spec.DAY, dob=None)
    offline = build_features(pd.DataFrame([a, b, between, after]), DELAY).set_index("trans_num")

    # then each sees the latest earlier date of birth, as offline (each applied once scored)
    for row in (between, after):
        assert compare(harness, [row], offline) == []
        harness.send([(TX_TOPIC, transaction_event(row).model_dump_json().encode())])
    assert feature(offline, "q2", "age_years") < feature(offline, "q1", "age_years")


def test_the_profile_lives_as_long_as_the_card(harness: Harness) -> None:
    # given a card whose only date of birth came with its first event
    harness.send([(TX_TOPIC, transaction_event(_tx_row("a", T0)).model_dump_json().encode())])
    store = bootstrap.feature_store()
    profile = store.card_keys(store.hasher("4000000000000001"))[1]
    client = store.client
    client.expire(profile, 60)  # as if its TTL had nearly run out

    # when later events without a date of birth arrive, then they refresh the profile's TTL: the
    # dob is remembered DOB_RETENTION after its event, counted from the card's newest event
    later = _tx_row("b", T0 + 10 * spec.DAY, dob=None)
    harness.send([(TX_TOPIC, transaction_event(later).model_dump_json().encode())])
    assert abs(int(client.ttl(profile)) - (spec.DOB_RETENTION - 10 * spec.DAY + spec.DAY)) < 60


def test_an_idle_card_keeps_its_date_of_birth_as_long_as_offline_and_no_longer(harness: Harness) -> None:
    # given a card whose date of birth came with its first event, idle for far longer than the
    # windows' retention (its events have expired; only the profile remains)
    first = _tx_row("a", T0, dob="1980-01-01")
    harness.send([(TX_TOPIC, transaction_event(first).model_dump_json().encode())])
    store = bootstrap.feature_store()
    profile = store.card_keys(store.hasher("4000000000000001"))[1]
    assert int(store.client.ttl(profile)) > spec.DOB_RETENTION  # not the windows' 31 days

    # when it is used again 399 days later, and then 401 days after its dob event
    back = _tx_row("b", T0 + 399 * spec.DAY, dob=None)
    gone = _tx_row("c", T0 + 401 * spec.DAY, dob=None)
    offline = build_features(pd.DataFrame([first, back, gone]), DELAY).set_index("trans_num")
    assert compare(harness, [back], offline) == []
    harness.send([(TX_TOPIC, transaction_event(back).model_dump_json().encode())])

    # then it is known at first, forgotten past DOB_RETENTION, as offline; the profile expires then
    assert compare(harness, [gone], offline) == []
    assert feature(offline, "b", "age_years") > 0
    assert feature(offline, "c", "age_years") == spec.EMPTY["age_years"]
    assert int(store.client.ttl(profile)) <= spec.DAY + spec.DAY


@pytest.mark.parametrize("kept", [False, True], ids=["trimmed", "below the window"])
def test_a_request_dated_before_the_profile_finds_the_latest_earlier_dob(
    harness: Harness, kept: bool
) -> None:
    # given a card's dob events: an old one, (kept: one the store still holds, below the window of
    # the request to come), and the newest one, which the profile holds; applied newest first
    rows = [_tx_row("a", T0, dob="1970-01-01")]
    if kept:
        rows.append(_tx_row("c", T0 + 9 * spec.DAY + 12 * spec.HOUR, dob="1980-01-01"))
    rows.append(_tx_row("b", T0 + 40 * spec.DAY, dob="1990-01-01"))
    for row in reversed(rows):
        harness.send([(TX_TOPIC, transaction_event(row).model_dump_json().encode())])

    # when a request without a dob is dated an hour before the newest event (out of order), with
    # no event in its 30-day window
    query = _tx_row("q", T0 + 40 * spec.DAY - spec.HOUR, dob=None)
    offline = build_features(pd.DataFrame([*rows, query]), DELAY).set_index("trans_num")

    # then it sees the latest earlier date of birth, as offline
    assert compare(harness, [query], offline) == []
    born = datetime(1980 if kept else 1970, 1, 1, tzinfo=UTC).timestamp()
    expected = (int(query["event_time"]) - born) / spec.SECONDS_PER_YEAR
    assert feature(offline, "q", "age_years") == pytest.approx(expected)


def test_amounts_at_the_schema_bounds_cannot_overflow(harness: Harness) -> None:
    # given 1,000 transactions alternating $999,999 and $1,000,000 within 30 days
    rows = [_tx_row(f"x{i:04d}", T0 + i * 2000, amt=999_999.0 if i % 2 else 1_000_000.0) for i in range(1000)]
    for start in range(0, len(rows), 250):
        harness.send(
            [(TX_TOPIC, transaction_event(r).model_dump_json().encode()) for r in rows[start : start + 250]]
        )
    query = _tx_row("q", T0 + 1000 * 2000, amt=1.0)

    # when the next transaction is scored, then online = offline = the exact population std
    offline = build_features(pd.DataFrame([*rows, query]), DELAY).set_index("trans_num")
    assert compare(harness, [query], offline) == []
    cents = [100 * int(r["amt"]) for r in rows]
    mean = Fraction(sum(cents), len(cents))
    exact = math.sqrt(sum((c - mean) ** 2 for c in cents) / len(cents)) / 100
    std = feature(offline, "q", "card_std_30d")
    assert math.isclose(std, exact, rel_tol=1e-12)
    assert std == pytest.approx(0.5)


def test_a_late_event_still_gives_its_date_of_birth(harness: Harness) -> None:
    # given a card whose only date of birth comes with an event that arrives late (after a newer
    # event without one moved the card's retention point past it)
    old = _tx_row("a", T0, dob="1980-01-01")
    new = _tx_row("b", T0 + 32 * spec.DAY, dob=None)
    for row in (new, old):
        harness.send([(TX_TOPIC, transaction_event(row).model_dump_json().encode())])

    # when a request without a dob is scored after both, then it sees that date of birth, as offline
    query = _tx_row("q", T0 + 33 * spec.DAY, dob=None)
    offline = build_features(pd.DataFrame([old, new, query]), DELAY).set_index("trans_num")
    assert compare(harness, [query], offline) == []
    assert feature(offline, "q", "age_years") > 0


def test_a_reused_transaction_id_cannot_alter_the_first_transaction(harness: Harness) -> None:
    # given a card's transaction, applied (and redelivered: not a conflict)
    first = _tx_row("shared-id", T0, amt=10.0)
    for _ in range(2):
        harness.send([(TX_TOPIC, transaction_event(first).model_dump_json().encode())])

    # when another card (or another amount) reuses its id, through the stream or the API
    other = _tx_row("shared-id", T0 + 60, amt=999.0, card="4000000000000099")
    harness.send([(TX_TOPIC, transaction_event(other).model_dump_json().encode())])

    # then the impostor is dead-lettered as a conflict, and later transactions of both cards score
    # as offline with the first one only (what the lake keeps)
    [letter] = harness.dead_letters()
    assert letter["reason"].startswith("conflict")
    probes = [_tx_row("q1", T0 + 3600, amt=5.0), _tx_row("q2", T0 + 3700, amt=5.0, card="4000000000000099")]
    offline = build_features(pd.DataFrame([first, *probes]), DELAY).set_index("trans_num")
    for row in probes:  # each applied once scored
        assert compare(harness, [row], offline) == []
        harness.send([(TX_TOPIC, transaction_event(row).model_dump_json().encode())])
    assert feature(offline, "q1", "card_sum_1h") == 10.0
    assert feature(offline, "q2", "card_cnt_30d") == 0


def test_a_busy_card_at_many_merchants_matches_offline_before_and_after_its_tiles(harness: Harness) -> None:
    # given a card with 900 transactions in 12 days (more than the tile threshold), at 80
    # merchants in 9 categories (more distinct merchants a day than the cap), with same-second
    # ties, amounts at the schema's bound, some without a date of birth, and its offline rows
    rng = np.random.default_rng(7)
    times = np.sort(T0 + rng.integers(0, 12 * spec.DAY, 900))
    times[100:110] = times[100]  # a same-second burst
    categories = list(spec.CATEGORIES[:9])
    rows = [
        _tx_row(
            f"busy-{i:04d}",
            int(t),
            amt=float(rng.choice([0.01, 12.5, 999_999.99, 1e6, round(float(rng.uniform(1, 900)), 2)])),
            merchant=f"merchant_{int(rng.integers(0, 80))}",
            category=categories[int(rng.integers(0, len(categories)))],
            merch_lat=40.0 + float(rng.random()),
            dob=None if rng.random() < 0.3 else "1980-01-01",
        )
        for i, t in enumerate(times)
    ]
    df = pd.DataFrame(rows)
    offline = build_features(df, DELAY).set_index("trans_num")
    assert offline["card_distinct_merchants_24h"].max() == spec.DISTINCT_MERCHANTS_CAP

    # when the first 200 reach the real updater (shuffled, in batches of 50) and are scored at
    # their times, then the other 700 the same way, and all 900 are scored again
    def send(part: list[dict[str, Any]]) -> None:
        order = rng.permutation(len(part))
        for start in range(0, len(part), 50):
            chunk = [part[i] for i in order[start : start + 50]]
            payloads = [(TX_TOPIC, transaction_event(r).model_dump_json().encode()) for r in chunk]
            assert harness.send(payloads) == {"batchItemFailures": []}

    send(rows[:200])
    mismatches = compare(harness, rows[:200], offline)
    send(rows[200:])
    mismatches += compare(harness, rows, offline)

    # then every feature of every transaction matches, whether its card was read as events
    # (below the threshold) or as tiles
    assert mismatches == [], f"{len(mismatches)} mismatches, first: {mismatches[:10]}"
    card = bootstrap.feature_store().card_keys(bootstrap.feature_store().hasher("4000000000000001"))
    assert bootstrap.feature_store().client.exists(card[2]) == 1  # the card has tiles


def test_a_busy_merchant_with_many_labels_matches_offline(harness: Harness) -> None:
    # given one merchant with 3,000 transactions of 300 cards in 45 days (and a quiet second
    # merchant), labels for a quarter of them with every arrival pattern (on time, late, early,
    # reversed and back, same-second pairs, corrections alone, other merchant, unknown
    # transactions, redeliveries), and its offline rows
    df = synthetic_stream(n=3000, n_cards=300, n_merchants=1, days=45, seed=23)
    quiet = df.sample(frac=0.03, random_state=1).index
    df.loc[quiet, "merchant"] = "fraud_Quiet Corner"
    rng = np.random.default_rng(5)
    labels = _label_stream(df, rng)
    label_frame = pd.DataFrame(
        [(e.trans_num, e.merchant, e.event_time, e.arrival_time, e.is_fraud) for e in labels],
        columns=list(LABEL_EVENT_COLUMNS),
    )
    offline = build_features(df, DELAY, labels=label_frame).set_index("trans_num")
    events = [
        (int(r["event_time"]), TX_TOPIC, transaction_event(r).model_dump_json().encode())
        for r in df.to_dict("records")
    ]
    events += [(e.arrival_time, LABEL_TOPIC, e.model_dump_json().encode()) for e in labels]
    events.sort(key=lambda e: e[0])

    # when every event before t reaches the real updater (shuffled batches) and every fifth
    # transaction is scored at its time
    applied, mismatches = 0, []
    for i, t in enumerate(sorted(set(df["event_time"].tolist()))):
        end = applied
        while end < len(events) and events[end][0] < t:
            end += 1
        batch = [(topic, value) for _, topic, value in events[applied:end]]
        applied = end
        if batch:
            order = rng.permutation(len(batch))
            assert harness.send([batch[j] for j in order]) == {"batchItemFailures": []}
        if i % 5 == 0:
            mismatches += compare(harness, df[df["event_time"] == t].to_dict("records"), offline)

    # then every feature matches, and the merchant's windows were busy with frauds
    assert mismatches == [], f"{len(mismatches)} mismatches, first: {mismatches[:10]}"
    assert offline["merch_cnt_7d"].max() >= 400
    assert offline["merch_fraud_cnt_30d"].max() >= 50
