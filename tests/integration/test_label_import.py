"""``fraudsys labels import``: a bank's CSV through the label intake into a real redis-server's
transaction index and the real local Kafka-protocol broker; bad rows are listed, never fatal."""

import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from kafka import KafkaConsumer, TopicPartition
from typer.testing import CliRunner

from fraud_adapters.tx_index import TransactionIndex
from fraud_core.schemas import LabelEvent, LabelRequest, LabelsResponse
from fraudsys_cli import app
from handlers import bootstrap
from tests.support.events import a_request
from tests.support.services import Service
from training.label_import import LabelFileError, import_labels, parse_rows

pytestmark = pytest.mark.integration

T0 = datetime(2020, 1, 1, tzinfo=UTC)


def consume(port: int, topic: str) -> list[LabelEvent]:
    consumer = KafkaConsumer(bootstrap_servers=f"127.0.0.1:{port}", consumer_timeout_ms=3000)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        return [LabelEvent.model_validate_json(r.value) for r in consumer]
    finally:
        consumer.close()


@pytest.fixture
def env(
    redis_client: "redis.Redis",
    kafka_service: Service,
    redis_service: Service,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    run = uuid.uuid4().hex[:8]
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{redis_service.port}/0")
    monkeypatch.setenv("STREAM_KIND", "kafka")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{kafka_service.port}")
    monkeypatch.setenv("LABELS_TOPIC", f"labels-{run}")
    bootstrap.reset()
    TransactionIndex(redis_client).put(
        [
            a_request(transaction_id="bank-1", merchant_name="m1", transaction_time=T0).to_event(),
            a_request(transaction_id="bank-2", merchant_name="m2", transaction_time=T0).to_event(),
        ]
    )
    yield f"labels-{run}"
    bootstrap.reset()


def test_import_sends_good_rows_and_lists_bad_ones(env: str, kafka_service: Service, tmp_path: Path) -> None:
    # given a bank's file with good rows, an unknown transaction and bad rows
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    csv_file = tmp_path / "chargebacks.csv"
    csv_file.write_text(
        "trans_num,is_fraud,reported_at,note\n"
        "bank-1,1,2020-01-05T09:00:00Z,first\n"  # line 2
        "bank-2,TRUE,,\n"  # line 3
        "never-scored,1,,\n"  # line 4
        "bank-1,maybe,,\n"  # line 5: not a boolean
        f"bank-2,0,{future},\n"  # line 6: reported in the future
        ",1,,\n"  # line 7: no id
        "bank-2,false,,\n"  # line 8: a reversal
    )

    # when it is imported
    result = CliRunner().invoke(app, ["labels", "import", str(csv_file)])

    # then the file went through, with a summary naming the lines
    assert result.exit_code == 0, result.output
    assert "7 rows: 3 accepted, 1 unknown transaction, 3 invalid" in result.output
    assert "unknown transaction (not in the index: nothing published) on lines 4" in result.output
    assert "line 5: invalid: is_fraud" in result.output
    assert "line 6: invalid: reported_at" in result.output
    assert "line 7: invalid: transaction_id" in result.output
    # and the three accepted labels are on the labels topic, the reversal as is_fraud=false
    events = consume(kafka_service.port, env)
    assert sorted((e.trans_num, e.merchant, e.is_fraud) for e in events) == [
        ("bank-1", "m1", True),
        ("bank-2", "m2", False),
        ("bank-2", "m2", True),
    ]
    first = next(e for e in events if e.trans_num == "bank-1")
    assert first.reported_at == datetime(2020, 1, 5, 9, tzinfo=UTC)
    assert all(e.transaction_time == T0 for e in events)


def test_a_file_without_the_columns_is_refused(env: str, tmp_path: Path) -> None:
    csv_file = tmp_path / "wrong.csv"
    csv_file.write_text("id,fraud\n1,1\n")
    result = CliRunner().invoke(app, ["labels", "import", str(csv_file)])
    assert result.exit_code == 2
    assert "transaction_id (or trans_num)" in result.output


def test_rows_go_in_batches_and_keep_their_line_numbers(tmp_path: Path) -> None:
    # given 1,203 rows, every 100th for an unknown transaction
    text = "transaction_id,is_fraud\n" + "".join(f"t{k},{k % 2}\n" for k in range(1203))
    batches: list[int] = []

    def submit(labels: Sequence[LabelRequest]) -> LabelsResponse:
        batches.append(len(labels))
        results = [
            {
                "transaction_id": x.transaction_id,
                "status": "unknown_transaction" if x.transaction_id.endswith("00") else "accepted",
            }
            for x in labels
        ]
        return LabelsResponse.model_validate(
            {"label_time": T0, "accepted": 0, "unknown": 0, "results": results}
        )

    (tmp_path / "f.csv").write_text(text)
    with (tmp_path / "f.csv").open() as file:
        summary = import_labels(parse_rows(file), submit)
    assert batches == [500, 500, 203]
    assert summary.rows == 1203
    assert summary.unknown_lines == [k + 2 for k in range(1203) if f"t{k}".endswith("00")]
    assert summary.accepted == 1203 - len(summary.unknown_lines)


def test_a_header_without_is_fraud_raises(tmp_path: Path) -> None:
    (tmp_path / "f.csv").write_text("transaction_id\nx\n")
    with (tmp_path / "f.csv").open() as file, pytest.raises(LabelFileError):
        list(parse_rows(file))
