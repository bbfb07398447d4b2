"""MSK (Kafka) or Kinesis -> Lambda: archive the stream's events to the event lake.

The archiver is a consumer of its own (its own consumer group on MSK, its own event source
mapping on the Kinesis stream; locally its own poller process), so writing the lake costs the
updater nothing. It reads each record exactly as the updater does (``handlers.stream_records``:
the same schemas, the same time guard, the same arrival time) and writes every accepted event
with the updater's ``LakeWriter``: one Parquet object per (kind, day) partition per batch
(``LAKE_URI``, required). A failed write fails the whole batch, which the stream delivers again:
the same batch rewrites the same objects, a batch cut differently adds rows that the lake's
reader drops (``docs/data.md``, the dedupe rule).

Records the updater dead-letters are left out here and not dead-lettered a second time: poison
and events refused by the time guard (both decided from the record alone, so by both consumers
alike). Two refusals of the updater need Redis, which the archiver does not use; it archives
those events, as the updater did when it wrote the lake: *late* events (older than their key's
retention point: kept in the lake, not online) and a transaction *conflicting* with another under
the same ``trans_num`` (the updater's ``conflict`` dead letter): the lake's reader keeps one
transaction per id, the earliest arrival (docs/data.md).
"""

import time
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from fraud_adapters.lake import LakeRecord, LakeWriter
from handlers import bootstrap
from handlers.observability import logger, metrics, tracer
from handlers.settings import settings
from handlers.stream_records import Rejected, event_type, raw_records, read_record, wrap


def lake_writer() -> LakeWriter:
    """The lake's writer; the archiver without ``LAKE_URI`` is a configuration error."""
    writer = bootstrap.lake_writer()
    if writer is None:
        raise RuntimeError("the archiver needs LAKE_URI (the event lake: s3://bucket/prefix or a folder)")
    return writer


@tracer.capture_method(capture_response=False)
def process(event: dict[str, Any], context: LambdaContext | None = None) -> dict[str, Any]:
    kind = event_type(event)
    writer = lake_writer()
    cfg = settings()
    accepted: list[LakeRecord] = []
    skipped = refused = 0
    records = raw_records(event, kind)
    for record in records:
        read = read_record(wrap(record, kind), cfg.labels_topic, cfg.max_clock_skew_seconds)
        if isinstance(read, Rejected):  # the updater dead-letters it
            skipped += 1
            refused += read.refused
            logger.debug("record not archived", extra={"source": read.source, "reason": read.reason})
            continue
        accepted.append(read.lake_record())
    started = time.perf_counter()
    written = writer.append(accepted)  # raises -> the whole batch is delivered again
    elapsed_ms = (time.perf_counter() - started) * 1000
    metrics.add_metric(name="ArchivedEvents", unit=MetricUnit.Count, value=len(accepted))
    metrics.add_metric(name="ArchiveMilliseconds", unit=MetricUnit.Milliseconds, value=elapsed_ms)
    metrics.add_metric(name="NotArchivedRecords", unit=MetricUnit.Count, value=skipped)
    logger.info(
        "batch archived",
        extra={
            "records": len(records),
            "archived": len(accepted),
            "poison": skipped - refused,
            "refused": refused,
            "objects": len(written),
        },
    )
    return {"batchItemFailures": []}


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return process(event, context)
