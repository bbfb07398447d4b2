"""Stream records as Lambda hands them (MSK or Kinesis) to validated events: the one reading that
both consumers of the stream share, the updater (``handlers.update_features``) and the archiver
(``handlers.archive_events``).

A record is read on its own: its payload is parsed with the pydantic schemas
(``TransactionEvent`` / ``LabelEvent``; a record of the labels topic without ``kind`` is a
label), and the time guard (``fraud_core.timeguard``) compares the event's time with its receipt.
Either refusal is a ``Rejected`` with the reason the updater dead-letters it under; an accepted
record is a ``StreamEvent`` with its source (``kafka:<topic>-<partition>@<offset>`` or
``kinesis:<event id>``), payload and receipt time. Nothing here needs Redis: both consumers
accept and refuse exactly the same records.
"""

import json
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.utilities.batch import EventType
from aws_lambda_powertools.utilities.data_classes.kafka_event import KafkaEventRecord
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord
from pydantic import ValidationError

from fraud_adapters.lake import LakeRecord, arrival_time
from fraud_core import timeguard
from fraud_core.schemas import LabelEvent, TransactionEvent


class PoisonRecordError(ValueError):
    pass


def parse_event(raw: bytes, label_topic: bool = False) -> TransactionEvent | LabelEvent:
    """One stream payload to an event; raises ``PoisonRecordError`` naming the bad field."""
    try:  # the usual case, in one pydantic-core pass: the topic's kind of event
        return (LabelEvent if label_topic else TransactionEvent).model_validate_json(raw)
    except ValidationError:
        pass  # another kind, or poison: the path below names the bad field
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PoisonRecordError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PoisonRecordError("payload is not a JSON object")
    data.setdefault("kind", "label" if label_topic else "transaction")
    model = LabelEvent if data["kind"] == "label" else TransactionEvent
    try:
        event: TransactionEvent | LabelEvent = model.model_validate(data)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PoisonRecordError(f"invalid {data['kind']} event: {fields}") from exc
    return event


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """An accepted record: the event, where it came from, its payload and its receipt time."""

    event: TransactionEvent | LabelEvent
    source: str
    raw: bytes
    received: int | None  # ``timeguard.receipt``: the earlier of ``received_at`` and the broker's time

    def lake_record(self) -> LakeRecord:
        """The event's lake row (``fraud_adapters.lake``), with the arrival time both consumers use."""
        return LakeRecord(self.event, self.source, arrival_time(self.event, self.received))


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that is not applied nor archived: poison, or refused by the time guard."""

    source: str
    reason: str
    raw: bytes
    refused: bool  # by the time guard (``RefusedEvents``); False: poison


def read_record(
    record: KafkaEventRecord | KinesisStreamRecord, labels_topic: str, skew: int
) -> StreamEvent | Rejected:
    """Parse and check one record (``skew``: ``MAX_CLOCK_SKEW_SECONDS``)."""
    if isinstance(record, KafkaEventRecord):
        raw = record.decoded_value
        source = f"kafka:{record.topic}-{record.partition}@{record.offset}"
        label_topic = record.topic == labels_topic
        record_time = record.timestamp // 1000 if record.get("timestamp") is not None else None
    else:
        raw = record.kinesis.data_as_bytes()
        source = f"kinesis:{record.event_id}"
        label_topic = False
        record_time = int(record.kinesis.approximate_arrival_timestamp)
    try:
        event = parse_event(raw, label_topic)
    except PoisonRecordError as exc:
        return Rejected(source, str(exc), raw, refused=False)
    received = timeguard.receipt(event, record_time)
    reason = timeguard.refusal(event, received, skew)
    if reason is not None:
        return Rejected(source, f"refused by the time guard: {reason}", raw, refused=True)
    return StreamEvent(event, source, raw, received)


def event_type(event: dict[str, Any]) -> EventType:
    """Which stream invoked the function: an MSK (or self-managed Kafka) or a Kinesis event."""
    if isinstance(event.get("records"), dict):
        return EventType.Kafka
    records = event.get("Records") or []
    if records and records[0].get("eventSource") == "aws:kinesis":
        return EventType.KinesisDataStreams
    raise ValueError("unsupported event: expected an MSK/Kafka or Kinesis event")


def raw_records(event: dict[str, Any], kind: EventType) -> list[dict[str, Any]]:
    """The event's records in delivery order (a Kafka event groups them by topic-partition)."""
    if kind is EventType.Kafka:
        return [r for batch in event["records"].values() for r in batch]
    records: list[dict[str, Any]] = event["Records"]
    return records


def wrap(record: dict[str, Any], kind: EventType) -> KafkaEventRecord | KinesisStreamRecord:
    """Powertools' data class of one raw record (what ``BatchProcessor`` hands a record handler)."""
    return KafkaEventRecord(record) if kind is EventType.Kafka else KinesisStreamRecord(record)
