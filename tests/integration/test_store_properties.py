"""Properties of the Redis feature store on a real redis-server, for small adversarial streams.

Streams have few cards (one identified by ``customer_id``) and merchants (one with non-ASCII
characters), same-second ties, bursts, events on window and retention edges, redeliveries and
fraud labels. Checked:

1. idempotence: a batch applied twice (or holding every event twice) leaves the state of once;
2. order independence: any permutation and any split into batches gives the same state, and so
   does the bulk writer of ``fraudsys backfill`` (``fraud_adapters.bulk``), also with events of
   the stream applied before and after it;
3. parity: ``request_features(request, store.read(...))`` equals the offline
   ``training.dataset.build_features`` row of every transaction, replaying the stream through
   the store in time order (out of order within ``spec.HISTORY_SLACK``, with redeliveries).

"The same state" is both the raw Redis content (every key, type and value) and the
``RedisFeatureStore.read`` results for many (card, merchant, time) probes.
"""

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraud_adapters.bulk import BulkWriter
from fraud_adapters.redis_store import (
    TILE_THRESHOLD,
    WRITE_CHUNK,
    CardHasher,
    CorruptStateError,
    RedisFeatureStore,
)
from fraud_core import spec
from fraud_core.online import request_features
from fraud_core.schemas import LabelEvent, PredictRequest, TransactionEvent
from tests.support.services import AnyRedis, Service
from training.dataset import build_features

pytestmark = pytest.mark.integration

Draw = Callable[[st.SearchStrategy[Any]], Any]
Event = TransactionEvent | LabelEvent

BASE_T = 1_577_836_800  # 2020-01-01T00:00:00Z
HOUR, DAY = spec.HOUR, spec.DAY
CARDS = ("4000111122223333", "4000111122224444", "cust:C-42")
MERCHANTS = ("fraud_Kirlin and Sons", "Café Zoë", "fraud_Haley Group")
DELAYS = (0, HOUR, DAY, spec.DEFAULT_LABEL_DELAY, 30 * DAY)
HASHER = CardHasher(b"property-test-card-hash-key")
MAX_ROWS = 24
PROPERTY_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass(frozen=True, slots=True)
class Row:
    trans_num: str
    card: str
    merchant: str
    category: str
    cents: int
    t: int
    lat: float
    long: float
    merch_lat: float
    merch_long: float
    city_pop: int
    dob: str | None
    is_fraud: bool

    def transaction(self) -> TransactionEvent:
        return self.request().to_event()  # what the scorer publishes for this request

    def label(self, delay: int) -> LabelEvent:
        return LabelEvent(
            trans_num=self.trans_num,
            cc_num=self.card,
            merchant=self.merchant,
            transaction_time=datetime.fromtimestamp(self.t, UTC),
            label_time=datetime.fromtimestamp(self.t + delay, UTC),
            is_fraud=self.is_fraud,
        )

    def request(self) -> PredictRequest:
        customer = self.card.removeprefix("cust:") if self.card.startswith("cust:") else None
        return PredictRequest(
            transaction_id=self.trans_num,
            cc_num=None if customer else self.card,
            customer_id=customer,
            merchant_name=self.merchant,
            category=self.category,
            amount_usd=self.cents / 100,
            transaction_time=datetime.fromtimestamp(self.t, UTC),
            lat=self.lat,
            long=self.long,
            city_pop=self.city_pop,
            merch_lat=self.merch_lat,
            merch_long=self.merch_long,
            dob=date.fromisoformat(self.dob) if self.dob else None,
        )


@dataclass(frozen=True, slots=True)
class Stream:
    rows: list[Row]
    label_delay: int

    def events(self) -> list[Event]:
        """Every transaction, and a label for every fraud (and for some non-frauds: ignored)."""
        out: list[Event] = [row.transaction() for row in self.rows]
        out += [row.label(self.label_delay) for row in self.rows if row.is_fraud or row.cents % 3 == 0]
        return out

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "trans_num": [r.trans_num for r in self.rows],
                "cc_num": [r.card for r in self.rows],
                "merchant": [r.merchant for r in self.rows],
                "category": [r.category for r in self.rows],
                "amt": [r.cents / 100 for r in self.rows],
                "event_time": [r.t for r in self.rows],
                "lat": [r.lat for r in self.rows],
                "long": [r.long for r in self.rows],
                "merch_lat": [r.merch_lat for r in self.rows],
                "merch_long": [r.merch_long for r in self.rows],
                "city_pop": [r.city_pop for r in self.rows],
                "dob": [r.dob for r in self.rows],
                "is_fraud": [int(r.is_fraud) for r in self.rows],
            }
        )


def edge_offsets(delay: int) -> list[int]:
    """Offsets that put one event on (or next to) a window or retention edge of another."""
    spans = {seconds for _, seconds in spec.CARD_WINDOWS} | {spec.DISTINCT_WINDOW, delay}
    spans |= {seconds for _, seconds in spec.MERCHANT_VOLUME_WINDOWS}
    spans |= {delay + seconds for _, seconds in spec.MERCHANT_RISK_WINDOWS}
    spans |= {spec.MAX_CARD_WINDOW + spec.HISTORY_SLACK}  # card retention
    spans |= {delay + spec.MAX_MERCHANT_RISK_WINDOW + spec.HISTORY_SLACK}  # merchant retention
    return sorted({span + k for span in spans for k in (-1, 0, 1)} | {1})


def _event_time(draw: Draw, earlier: list[int], edges: list[int], days: int) -> int:
    modes = ("fresh", "tie", "burst", "later", "edge")
    mode = draw(st.sampled_from(modes if earlier else modes[:1]))
    if mode == "fresh":
        return BASE_T + int(draw(st.integers(0, days * DAY)))
    anchor = int(draw(st.sampled_from(earlier)))
    if mode == "tie":
        return anchor
    if mode == "burst":
        return anchor + int(draw(st.integers(1, 600)))
    if mode == "later":  # within the out-of-order tolerance: may be applied before the anchor is scored
        return anchor + int(draw(st.integers(HOUR, spec.HISTORY_SLACK)))
    return anchor + int(draw(st.sampled_from(edges))) * int(draw(st.sampled_from((1, -1))))


@st.composite
def streams(draw: Draw, days: int, max_rows: int = MAX_ROWS) -> Stream:
    """A small stream; a card's date of birth is the same on all its events, or always missing."""
    delay = int(draw(st.sampled_from(DELAYS)))
    n = int(draw(st.integers(1, max_rows)))
    cards = draw(st.lists(st.sampled_from(CARDS), min_size=1, max_size=3, unique=True))
    merchants = draw(st.lists(st.sampled_from(MERCHANTS), min_size=1, max_size=3, unique=True))
    categories = draw(st.lists(st.sampled_from(spec.CATEGORIES), min_size=1, max_size=3, unique=True))
    homes = {c: (draw(st.integers(-600, 700)) / 10, draw(st.integers(-1790, 1790)) / 10) for c in cards}
    dobs = {c: draw(st.sampled_from((None, "1961-02-28", "1984-02-29", "2003-12-31"))) for c in cards}
    pops = {c: int(draw(st.integers(0, 3_000_000))) for c in cards}
    names = draw(st.permutations(range(n)))
    edges = edge_offsets(delay)
    times: list[int] = []
    amounts: list[int] = []
    rows = []
    for i in range(n):
        card = draw(st.sampled_from(cards))
        lat, long = homes[card]
        times.append(_event_time(draw, times, edges, days))
        cents = draw(st.one_of(st.integers(1, 3_000_000), st.sampled_from(amounts or [100])))
        amounts.append(int(cents))
        rows.append(
            Row(
                trans_num=f"T{names[i]}",  # string order differs from numeric order (T10 < T9)
                card=card,
                merchant=draw(st.sampled_from(merchants)),
                category=draw(st.sampled_from(categories)),
                cents=int(cents),
                t=times[-1],
                lat=lat,
                long=long,
                merch_lat=lat + draw(st.integers(-10_000, 10_000)) / 10_000,
                merch_long=long + draw(st.integers(-10_000, 10_000)) / 10_000,
                city_pop=pops[card],
                dob=dobs[card],
                is_fraud=bool(draw(st.sampled_from((False, False, True)))),
            )
        )
    return Stream(rows, delay)


#: The card layout under test: events only (no card of these small streams reaches
#: ``TILE_THRESHOLD``) or tiles from a card's first event (``tile_threshold=0``).
LAYOUT = {"tile_threshold": TILE_THRESHOLD}


@pytest.fixture(autouse=True, params=[TILE_THRESHOLD, 0], ids=["events", "tiles"])
def card_layout(request: pytest.FixtureRequest) -> Iterator[None]:
    LAYOUT["tile_threshold"] = request.param
    yield
    LAYOUT["tile_threshold"] = TILE_THRESHOLD


def new_store(client: AnyRedis, label_delay: int, write_chunk: int = WRITE_CHUNK) -> RedisFeatureStore:
    client.flushall()
    return RedisFeatureStore(
        client,
        HASHER,
        label_delay=label_delay,
        write_chunk=write_chunk,
        tile_threshold=LAYOUT["tile_threshold"],
    )


def apply(store: RedisFeatureStore, batch: Sequence[Event]) -> None:
    transactions = [e for e in batch if isinstance(e, TransactionEvent)]
    labels = [e for e in batch if isinstance(e, LabelEvent)]
    store.apply(transactions, labels)


def dump(client: AnyRedis) -> dict[bytes, tuple[str, Any]]:
    """Every key with its type and full value (TTLs are wall-clock and checked separately)."""
    out: dict[bytes, tuple[str, Any]] = {}
    for key in sorted(client.scan_iter(count=1000)):
        kind = cast(bytes, client.type(key)).decode()
        value: Any
        if kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "string":
            value = client.get(key)
        else:
            raise AssertionError(f"unexpected key type {kind!r} of {key!r}")
        out[key] = (kind, value)
    return out


def assert_every_key_expires(client: AnyRedis) -> None:
    immortal = [key for key in client.scan_iter(count=1000) if client.ttl(key) < 0]
    assert immortal == [], "keys without a TTL never leave Redis"


def probes(stream: Stream) -> list[tuple[str, str, int]]:
    """(card, merchant, time) at and just after every event, and after the stream for all pairs."""
    points = set()
    for row in stream.rows:
        points.add((row.card, row.merchant, row.t))
        points.add((row.card, row.merchant, row.t + 1))
    last = max(row.t for row in stream.rows)
    for card in {row.card for row in stream.rows}:
        for merchant in {row.merchant for row in stream.rows}:
            points.add((card, merchant, last + 1))
            points.add((card, merchant, last + stream.label_delay + 1))
    return sorted(points)


def read_all(store: RedisFeatureStore, points: list[tuple[str, str, int]]) -> list[dict[str, object]]:
    return [store.read(card, merchant, t).plain() for card, merchant, t in points]


@PROPERTY_SETTINGS
@given(stream=streams(days=70), twice_in_one_batch=st.booleans())
def test_applying_a_batch_twice_gives_the_state_of_once(
    any_redis: AnyRedis, stream: Stream, twice_in_one_batch: bool
) -> None:
    # given a batch applied once
    store = new_store(any_redis, stream.label_delay)
    events = stream.events()
    apply(store, events)
    once, points = dump(any_redis), probes(stream)
    states = read_all(store, points)

    # when it is applied again (redelivered), or the batch held every event twice
    if twice_in_one_batch:
        store = new_store(any_redis, stream.label_delay)
        apply(store, events + events)
    else:
        transactions = [e for e in events if isinstance(e, TransactionEvent)]
        labels = [e for e in events if isinstance(e, LabelEvent)]
        result = store.apply(transactions, labels)
        # every event is a duplicate, or late when the stream outlived its key's retention
        assert (result.applied, result.duplicates + len(result.late)) == (0, len(events))

    # then nothing changed
    assert dump(any_redis) == once
    assert read_all(store, points) == states
    assert_every_key_expires(any_redis)


@PROPERTY_SETTINGS
@given(stream=streams(days=70), data=st.data())
def test_any_order_and_any_batching_give_the_same_state(
    any_redis: AnyRedis, stream: Stream, data: st.DataObject
) -> None:
    # given the state after one batch in stream order
    store = new_store(any_redis, stream.label_delay)
    events = stream.events()
    apply(store, events)
    expected, points = dump(any_redis), probes(stream)
    states = read_all(store, points)

    # when the same events (some redelivered) come in another order, split into batches
    order = data.draw(st.permutations(events), label="order")
    redelivered = data.draw(st.lists(st.sampled_from(events), max_size=5), label="redelivered")
    shuffled = list(order) + redelivered
    cuts: list[int] = []
    if len(shuffled) > 1:
        cuts = sorted(data.draw(st.sets(st.integers(1, len(shuffled) - 1), max_size=6), label="cuts"))
    store = new_store(any_redis, stream.label_delay)
    for start, end in zip([0, *cuts], [*cuts, len(shuffled)], strict=True):
        apply(store, shuffled[start:end])

    # then the state is the same, raw and as read
    assert dump(any_redis) == expected
    assert read_all(store, points) == states


def bulk_table(transactions: Sequence[TransactionEvent]) -> pa.Table:
    """The lake's columns of these transactions (``fraud_adapters.bulk.TRANSACTION_COLUMNS``)."""
    return pa.table(
        {
            "trans_num": [e.trans_num for e in transactions],
            "card": [HASHER(e.cc_num) for e in transactions],
            "merchant": [e.merchant for e in transactions],
            "category": [e.category for e in transactions],
            "amt": pa.array([e.amt for e in transactions], pa.float64()),
            "event_time": pa.array([e.event_time for e in transactions], pa.int64()),
            "lat": pa.array([e.lat for e in transactions], pa.float64()),
            "long": pa.array([e.long for e in transactions], pa.float64()),
            "city_pop": pa.array([e.city_pop for e in transactions], pa.int64()),
            "merch_lat": pa.array([e.merch_lat for e in transactions], pa.float64()),
            "merch_long": pa.array([e.merch_long for e in transactions], pa.float64()),
            "dob": pa.array([e.dob for e in transactions], pa.date32()),
        }
    )


@PROPERTY_SETTINGS
@given(
    stream=streams(days=70),
    write_chunk=st.sampled_from((2, WRITE_CHUNK)),
    chunk=st.sampled_from((1, 3, 1024)),
    listpack_entries=st.sampled_from((None, 1)),
    data=st.data(),
)
def test_the_bulk_writer_builds_the_state_of_the_apply_path(
    any_redis: AnyRedis,
    stream: Stream,
    write_chunk: int,
    chunk: int,
    listpack_entries: int | None,
    data: st.DataObject,
) -> None:
    # given the state the updater's write path builds from the stream's events
    store = new_store(any_redis, stream.label_delay, write_chunk)
    events = stream.events()
    apply(store, events)
    expected, points = dump(any_redis), probes(stream)
    states = read_all(store, points)

    # when the bulk writer writes its transactions into an empty store (cards with more than
    # `write_chunk` events through the script's own path, at most `chunk` events per MULTI; a
    # ZADD of more than `listpack_entries` members starting its set as a skiplist), with labels
    # through the store and events of the live stream applied before and after
    store = new_store(any_redis, stream.label_delay, write_chunk)
    apply(store, data.draw(st.lists(st.sampled_from(events), max_size=8), label="streamed before"))
    writer = BulkWriter(store, chunk=chunk, listpack_entries=listpack_entries)
    writer.transactions(bulk_table([e for e in events if isinstance(e, TransactionEvent)]))
    counts = writer.close()
    store.apply([], [e for e in events if isinstance(e, LabelEvent)])
    apply(store, data.draw(st.lists(st.sampled_from(events), max_size=8), label="streamed after"))

    # then the state is the same, raw and as read, and every transaction is counted once
    assert dump(any_redis) == expected
    assert read_all(store, points) == states
    assert_every_key_expires(any_redis)
    assert counts.applied + counts.duplicates + counts.late == len(stream.rows)


@pytest.mark.parametrize(
    "dob", ["0001-01-01", "1899-12-31", "1900-02-28", "1900-03-01", "1969-12-31", "2000-02-29", "9999-12-31"]
)
def test_the_bulk_writer_writes_any_date_of_birth_as_the_apply_path(
    redis_client: "redis.Redis", dob: str
) -> None:
    # given a card's transactions with a date of birth at a calendar edge (the bulk mode of the
    # card script writes the profile's ISO date from a member's day number)
    rows = [replace(_row(f"T{i}", BASE_T + i * HOUR), dob=dob if i == 1 else None) for i in range(3)]
    store = new_store(redis_client, spec.DEFAULT_LABEL_DELAY)
    apply(store, [row.transaction() for row in rows])
    expected = dump(redis_client)

    # when the bulk writer writes them into an empty store
    store = new_store(redis_client, spec.DEFAULT_LABEL_DELAY)
    writer = BulkWriter(store)
    writer.transactions(bulk_table([row.transaction() for row in rows]))
    writer.close()

    # then the profile holds the same date, as ISO text
    assert dump(redis_client) == expected
    assert redis_client.hget(store.card_keys(HASHER(CARDS[0]))[1], "dob") == dob.encode()


def test_the_bulk_writer_reports_a_card_set_it_cannot_read(any_redis: AnyRedis) -> None:
    # given a card set holding a member no layout wrote
    store = new_store(any_redis, spec.DEFAULT_LABEL_DELAY)
    row = _row("T1", BASE_T)
    any_redis.zadd(store.card_keys(HASHER(row.card))[0], {b"too short for layout 4": BASE_T + DAY})

    # when the bulk writer writes the card's transactions, then it says which key it cannot read
    with pytest.raises(CorruptStateError, match="malformed card member"), BulkWriter(store) as writer:
        writer.transactions(bulk_table([row.transaction()]))


def mismatches(online: np.ndarray[Any, Any], offline: np.ndarray[Any, Any], row: Row) -> list[str]:
    return [
        f"{row.trans_num} {name}: online {got!r} offline {want!r}"
        for name, got, want in zip(spec.FEATURE_NAMES, online, offline, strict=True)
        if not math.isclose(float(got), float(want), rel_tol=1e-9, abs_tol=1e-9)
    ]


def replay_and_compare(
    client: AnyRedis, stream: Stream, data: st.DataObject | None, lookahead: int = 0
) -> list[str]:
    """Score every transaction online after replaying the stream up to it; differences from offline."""
    store = new_store(client, stream.label_delay)
    offline = build_features(stream.frame(), label_delay=stream.label_delay)
    expected = dict(
        zip(offline["trans_num"], offline[list(spec.FEATURE_NAMES)].to_numpy(dtype=np.float64), strict=True)
    )
    # An event reaches the updater when it happens (a label: when it arrives).
    pending = sorted(
        stream.events(),
        key=lambda e: e.arrival_time if isinstance(e, LabelEvent) else e.event_time,
    )
    due = [e.arrival_time if isinstance(e, LabelEvent) else e.event_time for e in pending]
    applied = 0
    problems: list[str] = []
    for t in sorted({row.t for row in stream.rows}):
        end = applied
        while end < len(pending) and due[end] < t + lookahead:
            end += 1
        batch = pending[applied:end]
        applied = end
        if batch and data is not None:
            batch = list(data.draw(st.permutations(batch), label="batch order"))
            batch += data.draw(st.lists(st.sampled_from(batch), max_size=3), label="redelivered")
        if batch:
            apply(store, batch)
        for row in (r for r in stream.rows if r.t == t):
            online = request_features(
                row.request(), store.read(row.card, row.merchant, t), stream.label_delay
            )
            problems += mismatches(online[0], expected[row.trans_num], row)
    return problems


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    stream=streams(days=45),
    lookahead=st.sampled_from((0, 1, HOUR, spec.HISTORY_SLACK, spec.HISTORY_SLACK)),
    data=st.data(),
)
def test_online_features_equal_offline_rows(
    any_redis: AnyRedis, stream: Stream, lookahead: int, data: st.DataObject
) -> None:
    # given a stream replayed through the store in time order, later events up to `lookahead`
    # early (within the out-of-order tolerance), shuffled within a batch and partly redelivered
    # when every transaction is scored from what the store returns at its time
    problems = replay_and_compare(any_redis, stream, data, lookahead)

    # then every feature equals the offline row's
    assert problems == [], f"label_delay={stream.label_delay}, {len(problems)} mismatches: {problems[:10]}"


def _row(
    trans_num: str, t: int, dob: str | None = "1980-05-17", card: str = CARDS[0], fraud: bool = False
) -> Row:
    return Row(trans_num, card, MERCHANTS[0], "home", 1000, t, 40.0, -75.0, 40.5, -75.5, 1000, dob, fraud)


def test_events_applied_up_to_the_history_slack_early_shorten_no_window(redis_client: "redis.Redis") -> None:
    # given a transaction at t with a card event and a merchant fraud on the first second of its
    # longest windows, and events of the same card and merchant one second short of the slack later
    t, delay = BASE_T + 40 * DAY, DAY
    stream = Stream(
        [
            _row("card-edge", t - spec.MAX_CARD_WINDOW),
            _row("merchant-edge", t - delay - spec.MAX_MERCHANT_RISK_WINDOW, card=CARDS[1], fraud=True),
            _row("query", t),
            _row("late-card", t + spec.HISTORY_SLACK - 1),
            _row("late-merchant", t + spec.HISTORY_SLACK - 1, card=CARDS[1]),
        ],
        delay,
    )

    # when the late events reach the store before the transaction is scored
    problems = replay_and_compare(redis_client, stream, None, lookahead=spec.HISTORY_SLACK)

    # then retention trimmed nothing that a window of the transaction needs
    assert problems == []


def test_a_transaction_without_dob_after_one_with_dob(redis_client: "redis.Redis") -> None:
    # given a card whose first transaction carries its date of birth and whose second does not
    stream = Stream([_row("a", BASE_T, "1980-05-17"), _row("b", BASE_T + 60, None)], spec.DEFAULT_LABEL_DELAY)

    # when both are scored online after the earlier events were applied
    problems = replay_and_compare(redis_client, stream, None)

    # then the online age equals the offline one (the card profile's dob on both paths)
    assert problems == []


def test_a_transaction_without_dob_tied_with_one_with_dob(redis_client: "redis.Redis") -> None:
    # given two transactions of a card in the same second, only the first (by trans_num) with a dob
    stream = Stream([_row("a", BASE_T, "1980-05-17"), _row("b", BASE_T, None)], spec.DEFAULT_LABEL_DELAY)

    # when both are scored online after every strictly earlier event was applied
    problems = replay_and_compare(redis_client, stream, None)

    # then the online age equals the offline one (it does not: -1.0 online, ~39.6 offline)
    assert problems == []


def test_same_second_ties_sort_by_trans_num_when_one_prefixes_the_other(redis_client: "redis.Redis") -> None:
    # given two transactions of a card in one second at different places, "T1" and "T10"
    # ("T1" < "T10": the later one, "T10", is the previous event of a transaction a minute later)
    far = replace(_row("T10", BASE_T), merch_lat=41.0, merch_long=-76.0)
    stream = Stream([_row("T1", BASE_T), far, _row("next", BASE_T + 60)], spec.DEFAULT_LABEL_DELAY)

    # when every transaction is scored online after the earlier events were applied
    problems = replay_and_compare(redis_client, stream, None)

    # then the speed from the previous event matches the offline (t, trans_num) order
    assert problems == []


def test_the_store_refuses_a_client_that_decodes_replies(redis_service: Service) -> None:
    # given a client that decodes replies to str (card members are binary)
    client = redis.Redis(port=redis_service.port, decode_responses=True)

    # when a store is made with it, then it says why
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisFeatureStore(client, HASHER)
    client.close()


@pytest.mark.parametrize(
    ("key", "member"),
    [("card", b"too short for layout 4"), ("arrivals", b"T1-without-arrival")],
    ids=["card member", "arrival member"],
)
def test_members_no_layout_wrote_are_reported_not_misread(
    redis_client: "redis.Redis", key: str, member: bytes
) -> None:
    # given a store with one valid event, and a member in a key the read script parses
    store = new_store(redis_client, spec.DEFAULT_LABEL_DELAY)
    apply(store, [_row("T0", BASE_T).transaction()])
    card, merchant = HASHER(CARDS[0]), MERCHANTS[0]
    target = store.card_keys(card)[0] if key == "card" else store.merchant_keys(merchant)[3]
    # (the arrival index is read from the request time on: an arrival after it)
    redis_client.zadd(target, {member: BASE_T if key == "card" else BASE_T + 2 * spec.DEFAULT_LABEL_DELAY})

    # when the state is read, then the store says which key it cannot read
    with pytest.raises(CorruptStateError, match="malformed"):
        store.read(CARDS[0], merchant, BASE_T + spec.DEFAULT_LABEL_DELAY + DAY)


def test_nodes_that_lost_the_scripts_get_them_again(any_redis: AnyRedis) -> None:
    # given a store that has written and read (its scripts are loaded on every node it used)
    store = new_store(any_redis, spec.DEFAULT_LABEL_DELAY)
    rows = [_row(f"T{i}", BASE_T + i * HOUR) for i in range(5)]
    apply(store, [row.transaction() for row in rows[:3]])
    before = store.read(CARDS[0], MERCHANTS[0], BASE_T + DAY).plain()

    # when every node forgets its scripts (a restart, a failover to a fresh replica)
    any_redis.script_flush()

    # then reads and writes go on: the store loads them again and resends the calls
    assert store.read(CARDS[0], MERCHANTS[0], BASE_T + DAY).plain() == before
    result = store.apply([row.transaction() for row in rows[3:]], [])
    assert (result.applied, result.duplicates) == (2, 0)
