"""The event lake: writer (fraud_adapters.lake) and reader (training.data.lake) round trips on a
local folder and on a real moto S3 server, with redelivered duplicates and label reversals."""

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import boto3
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fraud_adapters.blobs import LocalBlobStore, S3BlobStore, open_blob_store
from fraud_adapters.lake import SCHEMA_VERSION, LakeRecord, LakeWriter, arrival_time, lake_schema
from fraud_adapters.redis_store import CardHasher
from fraud_core import timeguard
from fraud_core.schemas import LabelEvent, TransactionEvent, epoch_seconds
from local_stack.services import Service, free_port, start_moto
from training.data.lake import latest_labels, read_lake
from training.data.schema import CANONICAL_COLUMNS, CANONICAL_DTYPES
from training.dataset import LABEL_EVENT_COLUMNS, label_events_at_delay

CARD = "4111111111111111"
HASH = CardHasher(b"lake-test-key-0123456789")
DAY = 86_400


def tx(trans_num: str, when: datetime, **overrides: object) -> TransactionEvent:
    fields: dict[str, object] = {
        "trans_num": trans_num,
        "cc_num": CARD,
        "merchant": "fraud_Kirlin and Sons",
        "category": "shopping_net",
        "amt": 12.34,
        "transaction_time": when,
        "lat": 40.0,
        "long": -74.0,
        "city_pop": 1000,
        "merch_lat": 40.5,
        "merch_long": -74.5,
    }
    return TransactionEvent.model_validate(fields | overrides)


def label(event: TransactionEvent, arrived: datetime, is_fraud: bool = True) -> LabelEvent:
    return LabelEvent(
        trans_num=event.trans_num,
        cc_num=event.cc_num,
        merchant=event.merchant,
        transaction_time=event.transaction_time,
        label_time=arrived,
        is_fraud=is_fraud,
    )


def at(day: int, hour: int = 12) -> datetime:
    return datetime(2020, 6, day, hour, tzinfo=UTC)


def records(events: list[TransactionEvent | LabelEvent], first_offset: int = 0) -> list[LakeRecord]:
    return [
        LakeRecord(e, f"kafka:fraudsys.{e.kind}s-0@{first_offset + i}", e.event_time + 1)
        for i, e in enumerate(events)
    ]


def write_history(writer: LakeWriter) -> dict[str, TransactionEvent]:
    """Three transactions over two days; labels: a reversal, a same-second pair, a redelivery."""
    a, b, c = tx("a", at(21)), tx("b", at(21, 23), dob=date(1980, 2, 29)), tx("c", at(22))
    writer.append(records([a, b, label(a, at(23))]))
    # redelivered as-is (same sources: the same objects) and again in another batch shape
    writer.append(records([a, b, label(a, at(23))]))
    writer.append(records([b, c], first_offset=100))
    # a is reversed (fraud, then not fraud); c gets not fraud and fraud in the same second
    writer.append(records([label(a, at(25), False), label(c, at(26)), label(c, at(26), False)], 200))
    return {"a": a, "b": b, "c": c}


def check_history(uri: str) -> None:
    # when the whole lake is read
    data = read_lake(uri)

    # then every transaction is there once, in the canonical frame, with its card hashed
    frame = data.transactions
    assert tuple(frame.columns) == CANONICAL_COLUMNS
    assert {c: str(t) for c, t in frame.dtypes.items()} == {
        c: ("str" if k == "str" else k) for c, k in CANONICAL_DTYPES.items()
    }
    assert frame["trans_num"].tolist() == ["a", "b", "c"]
    assert set(frame["cc_num"]) == {HASH(CARD)}
    assert frame["event_time"].tolist() == [
        epoch_seconds(at(21)),
        epoch_seconds(at(21, 23)),
        epoch_seconds(at(22)),
    ]
    assert frame["trans_date_trans_time"].tolist()[0] == "2020-06-21 12:00:00"
    assert frame["dob"].tolist() == ["", "1980-02-29", ""]
    # and the targets follow the latest label by arrival (a reversed: 0; c same second: fraud)
    assert frame["is_fraud"].tolist() == [0, 0, 1]

    # and the label events are deduplicated by (trans_num, label_time, is_fraud)
    labels = data.labels
    assert tuple(labels.columns) == LABEL_EVENT_COLUMNS
    assert list(labels.itertuples(index=False, name=None)) == [
        ("a", "fraud_Kirlin and Sons", epoch_seconds(at(21)), epoch_seconds(at(23)), 1),
        ("a", "fraud_Kirlin and Sons", epoch_seconds(at(21)), epoch_seconds(at(25)), 0),
        ("c", "fraud_Kirlin and Sons", epoch_seconds(at(22)), epoch_seconds(at(26)), 0),
        ("c", "fraud_Kirlin and Sons", epoch_seconds(at(22)), epoch_seconds(at(26)), 1),
    ]

    # when only the 22nd is read, with a cutoff before the reversal arrived
    early = read_lake(uri, start=date(2020, 6, 22), end=date(2020, 6, 22), cutoff=epoch_seconds(at(24)))
    assert early.transactions["trans_num"].tolist() == ["c"]
    assert early.transactions["is_fraud"].tolist() == [0]
    assert early.labels["trans_num"].tolist() == ["a"]
    assert latest_labels(early.labels).to_dict() == {"a": 1}


def test_round_trip_on_a_local_folder(tmp_path: Path) -> None:
    # given a lake on a local folder written in four batches
    writer = LakeWriter(LocalBlobStore(tmp_path), HASH)
    write_history(writer)

    # then it holds one object per partition per batch, the as-is redelivery rewrote its objects
    parts = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet"))
    assert [p.rsplit("/", 1)[0] for p in parts] == [
        "events/kind=label/dt=2020-06-23",
        "events/kind=label/dt=2020-06-25",
        "events/kind=label/dt=2020-06-26",
        "events/kind=transaction/dt=2020-06-21",
        "events/kind=transaction/dt=2020-06-21",
        "events/kind=transaction/dt=2020-06-22",
    ]
    check_history(str(tmp_path))


def test_objects_carry_the_schema_and_no_card_number(tmp_path: Path) -> None:
    writer = LakeWriter(LocalBlobStore(tmp_path), HASH, clock=lambda: 1_600_000_000.5)
    event = tx("a", at(21), received_at=at(21, 13))
    broker_time = epoch_seconds(at(21, 14))  # the record reached the stream after the scorer had it
    received = timeguard.receipt(event, broker_time)
    writer.append([LakeRecord(event, "kinesis:shardId-0:1", arrival_time(event, received))])
    path = next(tmp_path.rglob("*.parquet"))

    table = pq.read_table(path)
    assert table.schema.equals(lake_schema(), check_metadata=True)
    assert table.schema.metadata[b"fraudsys.schema_version"] == str(SCHEMA_VERSION).encode()
    row = table.to_pylist()[0]
    assert row["schema_version"] == SCHEMA_VERSION
    assert row["arrival_time"] == epoch_seconds(at(21, 13))  # received_at, not the broker time
    assert row["ingest_time"] == 1_600_000_000_500
    assert row["source"] == "kinesis:shardId-0:1"
    assert row["is_fraud"] is None
    assert CARD.encode() not in path.read_bytes()
    assert row["card"] == HASH(CARD)


def test_a_transaction_delivered_twice_keeps_its_earliest_arrival(tmp_path: Path) -> None:
    writer = LakeWriter(LocalBlobStore(tmp_path), HASH)
    first = tx("a", at(21), amt=1.0)
    writer.append(
        [LakeRecord(first.model_copy(update={"amt": 2.0}), "kafka:t-0@9", epoch_seconds(at(21, 14)))]
    )
    writer.append([LakeRecord(first, "kafka:t-0@3", epoch_seconds(at(21, 13)))])
    assert read_lake(str(tmp_path)).transactions["amt"].tolist() == [1.0]


def test_an_empty_lake_reads_as_empty_frames(tmp_path: Path) -> None:
    data = read_lake(str(tmp_path / "nothing"))
    assert len(data.transactions) == 0
    assert tuple(data.transactions.columns) == CANONICAL_COLUMNS
    assert len(data.labels) == 0
    assert tuple(data.labels.columns) == LABEL_EVENT_COLUMNS


def test_csv_sources_label_every_fraud_at_the_delay() -> None:
    frame = pd.DataFrame(
        {
            "trans_num": ["x", "y", "z"],
            "merchant": ["m", "n", "o"],
            "event_time": [100, 200, 300],
            "is_fraud": pd.Series([1, 0, 1], dtype="int8"),
        }
    )
    labels = label_events_at_delay(frame, 7 * DAY)
    assert tuple(labels.columns) == LABEL_EVENT_COLUMNS
    assert list(labels.itertuples(index=False, name=None)) == [
        ("x", "m", 100, 100 + 7 * DAY, 1),
        ("z", "o", 300, 300 + 7 * DAY, 1),
    ]


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[str]:
    service: Service = start_moto(free_port())
    endpoint = f"http://127.0.0.1:{service.port}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")  # pragma: allowlist secret
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="fraudsys-lake")
        yield endpoint
    service.stop()


def test_round_trip_on_moto_s3(moto_s3: str) -> None:
    # given a lake under a prefix of a bucket on a real (moto) S3 server
    store = open_blob_store("s3://fraudsys-lake/archive")
    assert isinstance(store, S3BlobStore)
    write_history(LakeWriter(store, HASH))

    # then the objects are Hive-partitioned under the prefix and read back like a folder
    keys = boto3.client("s3", endpoint_url=moto_s3).list_objects_v2(Bucket="fraudsys-lake")["Contents"]
    assert all(k["Key"].startswith("archive/events/kind=") for k in keys)
    check_history("s3://fraudsys-lake/archive")


def test_lake_source_in_the_pipeline_config(tmp_path: Path) -> None:
    from training.config import LakeSource, load_config
    from training.pipeline import load_source, load_transactions

    # given a lake and a pipeline config naming it, with a date range
    write_history(LakeWriter(LocalBlobStore(tmp_path / "lake"), HASH))
    cfg = load_config(
        Path("training/configs/default.yaml"),
        overrides={"source": {"kind": "lake", "uri": str(tmp_path / "lake"), "end": "2020-06-21"}},
    )
    assert cfg.source == LakeSource(uri=str(tmp_path / "lake"), end=date(2020, 6, 21))

    # then the pipeline's loaders read the range and every label
    assert load_transactions(cfg)["trans_num"].tolist() == ["a", "b"]
    source = load_source(cfg)
    assert source.transactions["is_fraud"].tolist() == [0, 0]
    assert source.labels["trans_num"].tolist() == ["a", "a", "c", "c"]


def test_csv_and_simulator_sources_get_label_events_at_the_delay(tmp_path: Path) -> None:
    from training.config import load_config
    from training.pipeline import load_source

    cfg = load_config(
        Path("training/configs/default.yaml"),
        overrides={"source": {"n_cards": 50, "n_merchants": 20, "n_days": 20}, "data_dir": str(tmp_path)},
    )
    source = load_source(cfg)
    frauds = source.transactions.loc[source.transactions["is_fraud"] == 1]
    assert len(source.labels) == len(frauds) > 0
    assert (source.labels["label_time"] - source.labels["event_time"] == cfg.label_delay_seconds).all()
