"""MSK (Kafka) or Kinesis -> Lambda: apply transactions and labels to the Redis feature store.

Each record is parsed on its own: a poison record (not JSON, not a valid event) or an event
dated beyond the clock skew of its arrival (``fraud_core.timeguard``) goes to the dead-letter
store with the reason and counts as handled, so the batch goes on; so does an event the store
reports late (older than its key's retention point). The valid
events of the batch are then applied in one round trip (Lua script: idempotent on redelivery,
order-independent). If Redis fails, the whole batch is reported failed and redelivered.
"""

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.data_classes.kafka_event import KafkaEventRecord
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import TypeAdapter, ValidationError

from fraud_adapters.dead_letters import DeadLetter
from fraud_adapters.lake import LakeRecord, arrival_time
from fraud_core import timeguard
from fraud_core.schemas import LabelEvent, TransactionEvent
from handlers import bootstrap
from handlers.observability import logger, metrics, tracer
from handlers.settings import settings

#: the updater's Redis timeout when REDIS_TIMEOUT_MS is not set (deployed: ``updater.redis_timeout_ms``)
UPDATER_REDIS_TIMEOUT_MS = 1000
_EVENT = TypeAdapter[TransactionEvent | LabelEvent](TransactionEvent | LabelEvent)


def updater_redis_timeout_ms() -> int:
    """``REDIS_TIMEOUT_MS`` when set (the CDK sets ``updater.redis_timeout_ms``), else 1000 ms: the
    scorer's 50 ms default is too short for a batch's pipeline."""
    cfg = settings()
    return cfg.redis_timeout_ms if "redis_timeout_ms" in cfg.model_fields_set else UPDATER_REDIS_TIMEOUT_MS


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


class BatchCollector:
    """Record handler for the Powertools batch processor: collects valid events, dead-letters
    poison records and events the time guard refuses (``fraud_core.timeguard``)."""

    def __init__(self) -> None:
        self.transactions: list[TransactionEvent] = []
        self.labels: list[LabelEvent] = []
        self.dead_lettered = 0
        self.refused = 0
        self.skew = settings().max_clock_skew_seconds
        #: each accepted event's source, payload and receipt time (``timeguard.receipt``): for the
        #: lake's rows and for late events' dead letters
        self.origin: dict[int, tuple[str, bytes, int | None]] = {}

    def handle(self, record: KafkaEventRecord | KinesisStreamRecord) -> None:
        if isinstance(record, KafkaEventRecord):
            raw = record.decoded_value
            source = f"kafka:{record.topic}-{record.partition}@{record.offset}"
            label_topic = record.topic == settings().labels_topic
            record_time = record.timestamp // 1000 if record.get("timestamp") is not None else None
        else:
            raw = record.kinesis.data_as_bytes()
            source = f"kinesis:{record.event_id}"
            label_topic = False
            record_time = int(record.kinesis.approximate_arrival_timestamp)
        try:
            event = parse_event(raw, label_topic)
        except PoisonRecordError as exc:
            self.dead_letter(source, str(exc), raw)
            return
        received = timeguard.receipt(event, record_time)
        reason = timeguard.refusal(event, received, self.skew)
        if reason is not None:
            self.refused += 1
            self.dead_letter(source, f"refused by the time guard: {reason}", raw)
            return
        self.origin[id(event)] = (source, raw, received)
        if isinstance(event, LabelEvent):
            self.labels.append(event)
        else:
            self.transactions.append(event)

    def dead_letter(self, source: str, reason: str, raw: bytes) -> None:
        where = bootstrap.dead_letter_store().put(DeadLetter.of(source, reason, raw))
        logger.warning("dead-lettered record", extra={"source": source, "reason": reason, "at": where})
        self.dead_lettered += 1


#: One thread writes a batch's archive while the handler applies it to Redis.
_ARCHIVER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="archive")


def archive(collector: BatchCollector) -> None:
    """Write the batch's accepted events to the lake (a failure fails the batch)."""
    writer = bootstrap.lake_writer()
    if writer is None:
        return
    started = time.perf_counter()
    records = []
    events: list[TransactionEvent | LabelEvent] = [*collector.transactions, *collector.labels]
    for event in events:
        source, _, received = collector.origin[id(event)]
        records.append(LakeRecord(event, source, arrival_time(event, received)))
    writer.append(records)
    elapsed_ms = (time.perf_counter() - started) * 1000
    metrics.add_metric(name="ArchivedEvents", unit=MetricUnit.Count, value=len(records))
    metrics.add_metric(name="ArchiveMilliseconds", unit=MetricUnit.Milliseconds, value=elapsed_ms)


def _event_type(event: dict[str, Any]) -> EventType:
    if isinstance(event.get("records"), dict):
        return EventType.Kafka
    records = event.get("Records") or []
    if records and records[0].get("eventSource") == "aws:kinesis":
        return EventType.KinesisDataStreams
    raise ValueError("unsupported event: expected an MSK/Kafka or Kinesis event")


@tracer.capture_method(capture_response=False)
def process(event: dict[str, Any], context: LambdaContext | None = None) -> dict[str, Any]:
    event_type = _event_type(event)
    processor = BatchProcessor(event_type=event_type)
    records = (
        [r for batch in event["records"].values() for r in batch]
        if event_type is EventType.Kafka
        else event["Records"]
    )
    collector = BatchCollector()
    with processor(records, collector.handle, context):
        processor.process()
    claim_transaction_ids(collector)  # raises -> whole batch retried (a redelivery claims nothing new)
    store = bootstrap.feature_store(updater_redis_timeout_ms())
    # The archive is written while Redis applies the batch (its Parquet encoding and PUT overlap
    # the script calls' round trips); the batch succeeds only when both did, so either failure
    # retries all of it: the store's apply is idempotent, the lake's reader drops duplicates.
    archiving = _ARCHIVER.submit(archive, collector) if bootstrap.lake_writer() is not None else None
    try:
        result = store.apply(collector.transactions, collector.labels)  # raises -> whole batch retried
    finally:
        if archiving is not None:
            archiving.result()  # raises -> whole batch retried
    for late in result.late:  # older than its key's retention point: kept in the lake, not online
        source, raw, _ = collector.origin[id(late)]
        collector.dead_letter(source, "late: older than its card's or merchant's retention point", raw)
    metrics.add_metric(name="EventsApplied", unit=MetricUnit.Count, value=result.applied)
    metrics.add_metric(name="DuplicateEvents", unit=MetricUnit.Count, value=result.duplicates)
    metrics.add_metric(name="LateEvents", unit=MetricUnit.Count, value=len(result.late))
    metrics.add_metric(name="RefusedEvents", unit=MetricUnit.Count, value=collector.refused)
    metrics.add_metric(name="DeadLetters", unit=MetricUnit.Count, value=collector.dead_lettered)
    metrics.add_metric(name="BatchSize", unit=MetricUnit.Count, value=len(records))
    logger.info(
        "batch applied",
        extra={
            "records": len(records),
            "applied": result.applied,
            "duplicates": result.duplicates,
            "late": len(result.late),
            "refused": collector.refused,
            "dead_lettered": collector.dead_lettered,
            "failed": len(processor.fail_messages),
        },
    )
    response: dict[str, Any] = dict(processor.response())
    return response


def claim_transaction_ids(collector: BatchCollector) -> None:
    """The first transaction with an id owns it (``TransactionIndex.claim``, which also makes it
    resolvable by the label intake): a different transaction under a known id is dead-lettered
    before the archive and the store see it, so no event can alter another transaction's features."""
    conflicts = bootstrap.transaction_index(updater_redis_timeout_ms()).claim(collector.transactions)
    if not conflicts:
        return
    refused = {id(tx) for tx in conflicts}
    collector.transactions = [tx for tx in collector.transactions if id(tx) not in refused]
    for tx in conflicts:
        source, raw, _ = collector.origin.pop(id(tx))
        collector.refused += 1
        collector.dead_letter(source, "conflict: another transaction already holds this trans_num", raw)


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return process(event, context)
