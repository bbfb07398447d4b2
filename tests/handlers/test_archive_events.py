"""The archiver handler: the lake it writes, as its own consumer of the stream, holds what the
updater archived when it wrote the lake itself (same rows, same partitions, same reading), from
MSK and Kinesis events, across redelivery, without Redis."""

import json
import time
from pathlib import Path
from typing import Any

import pytest

from fraud_core import spec
from handlers import archive_events, bootstrap, update_features
from handlers.settings import settings
from local_stack.events import StreamRecord
from local_stack.events import msk_event as build_msk_event
from tests.support.events import FakeContext, kinesis_event, msk_event

pytestmark = pytest.mark.integration

TX_TOPIC, LABEL_TOPIC = "fraudsys.transactions", "fraudsys.labels"
T0 = 1_590_969_600  # 2020-06-01


def _tx(trans_num: str, t: int, card: str = "4111111111111111", amt: float = 12.5) -> bytes:
    return json.dumps(
        {
            "kind": "transaction",
            "trans_num": trans_num,
            "cc_num": card,
            "merchant": "m",
            "category": "travel",
            "amt": amt,
            "transaction_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)),
            "lat": 1.0,
            "long": 2.0,
            "city_pop": 10,
            "merch_lat": 1.1,
            "merch_long": 2.1,
        }
    ).encode()


def _label(trans_num: str, t: int, arrival: int) -> bytes:
    return json.dumps(  # on the labels topic, without ``kind``
        {
            "trans_num": trans_num,
            "merchant": "m",
            "transaction_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)),
            "label_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(arrival)),
        }
    ).encode()


def _batch(records: list[tuple[str, bytes]], first_offset: int, record_time: int) -> dict[str, Any]:
    return build_msk_event(
        StreamRecord(topic, 0, offset, record_time * 1000, b"k", value)
        for offset, (topic, value) in enumerate(records, start=first_offset)
    )


def _rows(lake: Path) -> list[tuple[Any, ...]]:
    """Every row of every object, its partition folder first, without ``ingest_time`` (the
    writing batch's clock)."""
    import pyarrow.parquet as pq

    rows = []
    for path in sorted(lake.rglob("*.parquet")):
        partition = path.parent.relative_to(lake).as_posix()
        for row in pq.read_table(path).to_pylist():
            row.pop("ingest_time")
            rows.append((partition, *sorted(row.items())))
    return sorted(rows, key=repr)


def _use_lake(monkeypatch: pytest.MonkeyPatch, lake: Path) -> None:
    monkeypatch.setenv("LAKE_URI", str(lake))
    bootstrap.reset()


def test_the_archiver_writes_what_the_updater_archived_itself(
    lambda_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.data.lake import read_lake

    # given a stream with poison, an invalid event, a label without kind, a future-dated
    # transaction, a late event (40 days older than its card's newest), a redelivered batch and a
    # transaction reusing another's id a minute later
    now = int(time.time())
    newest = T0 + 40 * spec.DAY
    first = [
        (TX_TOPIC, _tx("a", newest)),
        (TX_TOPIC, _tx("b", newest + 60)),
        (TX_TOPIC, b"\xff not json"),
        (TX_TOPIC, _tx("c", newest).replace(b"12.5", b'"x"')),  # amt: not a number
        (LABEL_TOPIC, _label("a", newest, newest + 9 * spec.DAY)),
        (TX_TOPIC, _tx("future", now + 3600)),
    ]
    second = [(TX_TOPIC, _tx("late", T0)), (TX_TOPIC, _tx("a", newest + 120, card="4000000000000002"))]
    batches = [_batch(first, 0, now), _batch(first, 0, now), _batch(second, len(first), now + 60)]

    # when the updater archives it itself (LAKE_URI on the updater, the old deployment)
    _use_lake(monkeypatch, lambda_env / "updater-lake")
    for event in batches:
        assert update_features.handler(event, FakeContext()) == {"batchItemFailures": []}
    reasons = sorted(json.loads(p.read_text())["reason"] for p in (lambda_env / "dead").rglob("*.json"))
    assert [r.split(":")[0] for r in reasons] == [
        "conflict",
        "invalid transaction event",
        "invalid transaction event",  # the redelivery's copy
        "late",
        "not JSON",
        "not JSON",
        "refused by the time guard",
        "refused by the time guard",
    ]
    # and when the archiver, a consumer of its own without Redis, reads the same deliveries
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("DEAD_LETTER_URI", str(lambda_env / "archiver-dead"))
    _use_lake(monkeypatch, lambda_env / "lake")
    for event in batches:
        assert archive_events.handler(event, FakeContext()) == {"batchItemFailures": []}

    # then it wrote the same rows in the same partitions, plus the conflicting transaction the
    # updater refused (it cannot know the id is taken without Redis), and dead-lettered nothing
    updater_rows, archiver_rows = _rows(lambda_env / "updater-lake"), _rows(lambda_env / "lake")
    extra = [row for row in archiver_rows if row not in updater_rows]
    assert [dict(row[1:])["source"] for row in extra] == ["kafka:fraudsys.transactions-0@7"]
    assert [row for row in archiver_rows if row not in extra] == updater_rows
    assert not (lambda_env / "archiver-dead").exists()
    # and the lake reads the same: one transaction per id, the earliest arrival (the first one)
    ours, theirs = read_lake(str(lambda_env / "lake")), read_lake(str(lambda_env / "updater-lake"))
    assert ours.transactions.equals(theirs.transactions)
    assert ours.labels.equals(theirs.labels)
    assert sorted(ours.transactions["trans_num"]) == ["a", "b", "late"]
    hashed = bootstrap.card_hasher(settings())
    a = ours.transactions.set_index("trans_num").loc["a"]
    assert (a["cc_num"], a["is_fraud"]) == (hashed("4111111111111111"), 1)


def test_kinesis_records_are_archived_with_their_event_ids(
    lambda_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    _use_lake(monkeypatch, lambda_env / "lake")
    label = json.loads(_label("k-1", T0, T0 + spec.DAY)) | {"kind": "label"}
    event = kinesis_event([_tx("k-1", T0), b"poison", json.dumps(label).encode()])

    assert archive_events.handler(event, FakeContext()) == {"batchItemFailures": []}

    objects = sorted((lambda_env / "lake").rglob("*.parquet"))
    assert [p.parent.relative_to(lambda_env / "lake").as_posix() for p in objects] == [
        "events/kind=label/dt=2020-06-02",
        "events/kind=transaction/dt=2020-06-01",
    ]
    sources = [r["source"] for p in objects for r in pq.read_table(p).to_pylist()]
    assert sources == ["kinesis:shardId-000000000000:2", "kinesis:shardId-000000000000:0"]


def test_a_failed_write_fails_the_batch_and_a_redelivery_cut_differently_reads_once(
    lambda_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.data.lake import read_lake

    records = [(TX_TOPIC, _tx(f"r-{i}", T0 + i)) for i in range(4)]
    # given a lake that cannot be written: the batch fails, to be delivered again
    blocker = lambda_env / "blocked"
    blocker.write_text("a file where the lake folder should be")
    _use_lake(monkeypatch, blocker)
    with pytest.raises(NotADirectoryError):
        archive_events.handler(msk_event(records[:3]), FakeContext())

    # when the lake is back and the stream delivers the records again, in other batches
    _use_lake(monkeypatch, lambda_env / "lake")
    for event in (msk_event(records[:3]), msk_event(records[1:], first_offset=1), msk_event(records[:3])):
        assert archive_events.handler(event, FakeContext()) == {"batchItemFailures": []}

    # then the objects hold some rows twice, and the lake reads every event once
    assert len(_rows(lambda_env / "lake")) == 6  # [0, 1, 2] (written twice: the same object) + [1, 2, 3]
    assert sorted(read_lake(str(lambda_env / "lake")).transactions["trans_num"]) == [
        "r-0",
        "r-1",
        "r-2",
        "r-3",
    ]


def test_the_archiver_needs_a_lake(lambda_env: Path) -> None:
    with pytest.raises(RuntimeError, match="LAKE_URI"):
        archive_events.handler(msk_event([(TX_TOPIC, _tx("t-1", T0))]), FakeContext())


def test_an_updater_without_lake_uri_writes_no_lake(lambda_env: Path) -> None:
    # the deployed updater: no LAKE_URI (the archiver writes the lake); Redis gets the event
    event = msk_event([(TX_TOPIC, _tx("t-1", T0))])
    assert update_features.handler(event, FakeContext()) == {"batchItemFailures": []}
    assert bootstrap.lake_writer() is None
    assert not list(lambda_env.rglob("*.parquet"))
    assert bootstrap.feature_store().read("4111111111111111", "m", T0 + 1).card(T0 + 1).count[-1] == 1


def test_unknown_event_shape_is_rejected(lambda_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _use_lake(monkeypatch, lambda_env / "lake")
    with pytest.raises(ValueError, match="unsupported event"):
        archive_events.handler({"Records": [{"eventSource": "aws:sqs"}]}, FakeContext())
