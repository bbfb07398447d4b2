"""MSK (Kafka) or Kinesis -> Lambda: apply transactions and labels to the Redis feature store.

Each record is parsed on its own: a poison record (not JSON, not a valid event) or an event
dated beyond the clock skew of its arrival (``fraud_core.timeguard``) goes to the dead-letter
store with the reason and counts as handled, so the batch goes on; so does an event the store
reports late (older than its key's retention point). The valid
events of the batch are then applied in one round trip (Lua script: idempotent on redelivery,
order-independent). If Redis fails, the whole batch is reported failed and redelivered.

The event lake is written by the archiver (``handlers.archive_events``), a consumer of its own.
For backwards compatibility an updater with ``LAKE_URI`` set still archives each batch itself,
on a second thread while Redis applies it (the deployed stacks set ``LAKE_URI`` on the archiver
only: archiving here costs the updater ~36 % more CPU per batch, docs/benchmarks.md).
"""

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.data_classes.kafka_event import KafkaEventRecord
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from fraud_adapters.dead_letters import DeadLetter
from fraud_core.schemas import LabelEvent, TransactionEvent
from handlers import bootstrap
from handlers.observability import logger, metrics, tracer
from handlers.settings import settings
from handlers.stream_records import (
    PoisonRecordError,
    Rejected,
    StreamEvent,
    event_type,
    parse_event,
    raw_records,
    read_record,
)

__all__ = ["PoisonRecordError", "handler", "parse_event", "process"]

#: the updater's Redis timeout when REDIS_TIMEOUT_MS is not set (deployed: ``updater.redis_timeout_ms``)
UPDATER_REDIS_TIMEOUT_MS = 1000


def updater_redis_timeout_ms() -> int:
    """``UPDATER_REDIS_TIMEOUT_MS`` (the local stack, whose updater shares the scorer's
    environment), else ``REDIS_TIMEOUT_MS`` when set (the CDK sets ``updater.redis_timeout_ms``),
    else 1000 ms: the scorer's 50 ms default is too short for a batch's pipeline."""
    cfg = settings()
    if cfg.updater_redis_timeout_ms is not None:
        return cfg.updater_redis_timeout_ms
    return cfg.redis_timeout_ms if "redis_timeout_ms" in cfg.model_fields_set else UPDATER_REDIS_TIMEOUT_MS


class BatchCollector:
    """Record handler for the Powertools batch processor: collects valid events, dead-letters
    poison records and events the time guard refuses (``handlers.stream_records.read_record``,
    the reading the archiver shares)."""

    def __init__(self) -> None:
        self.transactions: list[TransactionEvent] = []
        self.labels: list[LabelEvent] = []
        self.dead_lettered = 0
        self.refused = 0
        cfg = settings()
        self.skew = cfg.max_clock_skew_seconds
        self.labels_topic = cfg.labels_topic
        #: each accepted event's source, payload and receipt time (``timeguard.receipt``): for the
        #: lake's rows and for late events' dead letters
        self.origin: dict[int, StreamEvent] = {}

    def handle(self, record: KafkaEventRecord | KinesisStreamRecord) -> None:
        read = read_record(record, self.labels_topic, self.skew)
        if isinstance(read, Rejected):
            self.refused += read.refused
            self.dead_letter(read.source, read.reason, read.raw)
            return
        event = read.event
        self.origin[id(event)] = read
        if isinstance(event, LabelEvent):
            self.labels.append(event)
        else:
            self.transactions.append(event)

    def dead_letter(self, source: str, reason: str, raw: bytes) -> None:
        where = bootstrap.dead_letter_store().put(DeadLetter.of(source, reason, raw))
        logger.warning("dead-lettered record", extra={"source": source, "reason": reason, "at": where})
        self.dead_lettered += 1


#: One batch processor per event source for the container's life, at module level as Powertools
#: keeps it: an instance is a reference cycle (its collector mapping holds its own bound methods),
#: so one made per batch left every batch's records and events to the cyclic garbage collector;
#: the updater's process grew 10-15 MB until its first full collection and stayed at that peak.
PROCESSORS = {
    kind: BatchProcessor(event_type=kind) for kind in (EventType.Kafka, EventType.KinesisDataStreams)
}

#: With ``LAKE_URI`` set (not deployed so: the archiver writes the lake), one thread writes a
#: batch's archive while the handler applies it to Redis.
_ARCHIVER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="archive")


def archive(collector: BatchCollector) -> None:
    """Write the batch's accepted events to the lake (a failure fails the batch)."""
    writer = bootstrap.lake_writer()
    if writer is None:
        return
    started = time.perf_counter()
    events: list[TransactionEvent | LabelEvent] = [*collector.transactions, *collector.labels]
    records = [collector.origin[id(event)].lake_record() for event in events]
    writer.append(records)
    elapsed_ms = (time.perf_counter() - started) * 1000
    metrics.add_metric(name="ArchivedEvents", unit=MetricUnit.Count, value=len(records))
    metrics.add_metric(name="ArchiveMilliseconds", unit=MetricUnit.Milliseconds, value=elapsed_ms)


@tracer.capture_method(capture_response=False)
def process(event: dict[str, Any], context: LambdaContext | None = None) -> dict[str, Any]:
    kind = event_type(event)
    processor = PROCESSORS[kind]  # one batch at a time: a Lambda instance, a local poller's thread
    records = raw_records(event, kind)
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
        read = collector.origin[id(late)]
        reason = "late: older than its card's or merchant's retention point"
        collector.dead_letter(read.source, reason, read.raw)
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
        read = collector.origin.pop(id(tx))
        collector.refused += 1
        reason = "conflict: another transaction already holds this trans_num"
        collector.dead_letter(read.source, reason, read.raw)


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return process(event, context)
