"""The feature updater handler: MSK and Kinesis events, poison records, redelivery, Redis down."""

import collections
import json
import time
from pathlib import Path
from typing import Any

import pytest

from fraud_core.online import risk_frauds
from handlers import bootstrap, update_features
from handlers.settings import settings
from tests.support.events import FakeContext, kinesis_event, msk_event

pytestmark = pytest.mark.integration

TX = {
    "kind": "transaction",
    "trans_num": "t-1",
    "cc_num": "4111111111111111",
    "merchant": "m",
    "category": "travel",
    "amt": 12.5,
    "transaction_time": "2020-01-01T00:00:00Z",
    "lat": 1.0,
    "long": 2.0,
    "city_pop": 10,
    "merch_lat": 1.1,
    "merch_long": 2.1,
}


def _card_events(t: int = 1_577_836_900) -> int:
    return bootstrap.feature_store().read("4111111111111111", "m", t).card(t).count[-1]


def test_msk_batch_applies_and_poison_goes_to_dead_letters(lambda_env: Path) -> None:
    records = [
        ("fraudsys.transactions", json.dumps(TX).encode()),
        ("fraudsys.transactions", b"\xff\xfe not json"),
        ("fraudsys.transactions", json.dumps({**TX, "trans_num": "t-2", "amt": "x"}).encode()),
        (
            "fraudsys.transactions",
            json.dumps({**TX, "trans_num": "t-3", "transaction_time": "2020-01-01T00:00:30Z"}).encode(),
        ),
    ]
    response = update_features.handler(msk_event(records), FakeContext())
    assert response == {"batchItemFailures": []}
    assert _card_events() == 2
    letters = [json.loads(p.read_text()) for p in (lambda_env / "dead").rglob("*.json")]
    reasons = sorted(letter["reason"] for letter in letters)
    assert len(reasons) == 2
    assert any("not JSON" in r for r in reasons)
    assert any("amt" in r for r in reasons)
    assert all(letter["source"].startswith("kafka:fraudsys.transactions-0@") for letter in letters)


def test_redelivery_changes_nothing(lambda_env: Path) -> None:
    event = kinesis_event([json.dumps(TX).encode()])
    update_features.handler(event, FakeContext())
    state = bootstrap.feature_store().read("4111111111111111", "m", 1_577_836_900)
    update_features.handler(event, FakeContext())
    assert bootstrap.feature_store().read("4111111111111111", "m", 1_577_836_900) == state


def test_label_topic_without_kind_is_a_label(lambda_env: Path) -> None:
    label = {
        "trans_num": "t-1",
        "merchant": "m",
        "transaction_time": "2020-01-01T00:00:00Z",
        "label_time": "2020-01-02T00:00:00Z",
    }
    update_features.handler(msk_event([("fraudsys.labels", json.dumps(label).encode())]), FakeContext())
    t = 1_577_836_800 + 8 * 86400
    state = bootstrap.feature_store().read("4111111111111111", "m", t)
    assert state.latest_frauds == (1, 1)
    assert risk_frauds(state, t, settings().label_delay_seconds) == [1, 1]


def test_redis_down_fails_the_whole_batch_for_redelivery(
    lambda_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    bootstrap.reset()
    with pytest.raises(redis.ConnectionError):
        update_features.handler(
            msk_event([("fraudsys.transactions", json.dumps(TX).encode())]), FakeContext()
        )


def test_dead_letter_store_down_reports_the_record_failed(
    lambda_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = lambda_env / "blocked"
    blocker.write_text("a file where the dead-letter folder should be")
    monkeypatch.setenv("DEAD_LETTER_URI", str(blocker))
    bootstrap.reset()
    event = msk_event(
        [("fraudsys.transactions", json.dumps(TX).encode()), ("fraudsys.transactions", b"poison")]
    )
    response = update_features.handler(event, FakeContext())
    # the poison record could not be parked: it is reported failed (retried), the good one is applied
    assert response == {
        "batchItemFailures": [{"itemIdentifier": {"partition": "fraudsys.transactions-0", "offset": 1}}]
    }
    assert _card_events() == 1


def test_unknown_event_shape_is_rejected(lambda_env: Path) -> None:
    with pytest.raises(ValueError, match="unsupported event"):
        update_features.handler({"Records": [{"eventSource": "aws:sqs"}]}, FakeContext())


def test_applied_transactions_are_indexed_for_the_label_intake(lambda_env: Path) -> None:
    # given a batch with a transaction, a poison record and a label
    label = {"trans_num": "t-9", "merchant": "m", "transaction_time": "2020-01-01T00:00:00Z"}
    records = [
        ("fraudsys.transactions", json.dumps(TX).encode()),
        ("fraudsys.transactions", b"not json"),
        ("fraudsys.labels", json.dumps({**label, "label_time": "2020-01-02T00:00:00Z"}).encode()),
    ]
    # when the updater applies it
    update_features.handler(msk_event(records), FakeContext())
    # then the transaction resolves through the index; nothing else was indexed
    found = bootstrap.transaction_index().get(["t-1", "t-9"])
    assert list(found) == ["t-1"]
    assert (found["t-1"].merchant, found["t-1"].transaction_time) == ("m", 1_577_836_800)


def test_accepted_events_are_archived_to_the_lake_before_redis(
    lambda_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.data.lake import read_lake

    # given an updater with a lake folder
    monkeypatch.setenv("LAKE_URI", str(lambda_env / "lake"))
    bootstrap.reset()
    label = {
        "trans_num": "t-1",
        "merchant": "m",
        "transaction_time": "2020-01-01T00:00:00Z",
        "label_time": "2020-01-09T00:00:00Z",
    }
    records = [
        ("fraudsys.transactions", json.dumps(TX).encode()),
        ("fraudsys.transactions", b"poison"),
        ("fraudsys.labels", json.dumps(label).encode()),
    ]

    # when a batch is delivered twice (a redelivery: the same records, broker timestamps included)
    event = msk_event(records)
    for _ in range(2):
        assert update_features.handler(event, FakeContext()) == {"batchItemFailures": []}

    # then the accepted events are in the lake (the redelivery rewrote the same objects), with
    # their source offsets, and read back once, the card hashed with the store's key
    objects = sorted(
        p.relative_to(lambda_env / "lake").as_posix() for p in (lambda_env / "lake").rglob("*.parquet")
    )
    assert [o.rsplit("/", 1)[0] for o in objects] == [
        "events/kind=label/dt=2020-01-09",
        "events/kind=transaction/dt=2020-01-01",
    ]
    data = read_lake(str(lambda_env / "lake"))
    assert data.transactions["trans_num"].tolist() == ["t-1"]
    assert data.transactions["cc_num"].tolist() == [bootstrap.card_hasher(settings())("4111111111111111")]
    assert data.transactions["is_fraud"].tolist() == [1]
    assert data.labels["label_time"].tolist() == [1_578_528_000]
    import pyarrow.parquet as pq

    rows = pq.read_table(lambda_env / "lake" / objects[1]).to_pylist()
    assert [r["source"] for r in rows] == ["kafka:fraudsys.transactions-0@0"]
    assert abs(rows[0]["arrival_time"] - time.time()) < 120  # no received_at: the broker timestamp
    # and Redis got the transaction as before
    assert _card_events() == 1


def test_a_failed_archive_write_fails_the_batch_and_its_redelivery_is_archived_and_counted_once(
    lambda_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the archive is written while Redis applies the batch: a failed write fails the batch
    blocker = lambda_env / "blocked"
    blocker.write_text("a file where the lake folder should be")
    monkeypatch.setenv("LAKE_URI", str(blocker))
    bootstrap.reset()
    event = msk_event([("fraudsys.transactions", json.dumps(TX).encode())])
    with pytest.raises(NotADirectoryError):
        update_features.handler(event, FakeContext())
    # when the lake is back, the redelivered batch is archived, and Redis counts the event once
    from training.data.lake import read_lake

    monkeypatch.setenv("LAKE_URI", str(lambda_env / "lake"))
    bootstrap.reset()
    assert update_features.handler(event, FakeContext()) == {"batchItemFailures": []}
    assert read_lake(str(lambda_env / "lake")).transactions["trans_num"].tolist() == ["t-1"]
    assert _card_events() == 1


@pytest.mark.parametrize("make_event", [msk_event, kinesis_event])
def test_a_batch_leaves_no_reference_cycle_behind(lambda_env: Path, make_event: Any) -> None:
    import gc

    def batch(k: int) -> dict[str, Any]:
        raw = [json.dumps({**TX, "trans_num": f"gc-{k}-{i}"}).encode() for i in range(20)]
        return (
            make_event([("fraudsys.transactions", r) for r in raw])
            if make_event is msk_event
            else make_event(raw)
        )

    update_features.handler(batch(0), FakeContext())  # warm: imports, clients, caches
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        # when batches are applied one after the other
        for k in range(1, 4):
            assert update_features.handler(batch(k), FakeContext()) == {"batchItemFailures": []}
        # then what they left is freed by reference counting: nothing of theirs waits for the
        # cyclic collector (Powertools' processor is such a cycle: one per batch kept every batch's
        # events in memory until a full collection, PROCESSORS)
        gc.collect()
        cyclic = collections.Counter(type(o).__name__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert cyclic["TransactionEvent"] == 0
    assert cyclic["BatchProcessor"] == 0
    assert sum(cyclic.values()) < 20, cyclic
