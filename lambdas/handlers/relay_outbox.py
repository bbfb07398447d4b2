"""SQS (the publish outbox) -> Lambda: send to the stream each scored transaction whose publish
failed in the scorer (``handlers.predict``, ``fraud_adapters.outbox``).

Each message holds the stream record as the scorer built it (topic, key: the card's keyed hash,
value: the event's JSON); the batch's records are sent in one call of the scorer's publisher
(``bootstrap.relay_publisher``: MSK or Kinesis), and each message that the stream did not
acknowledge, or that is not an outbox record, is reported failed (``batchItemFailures``, Powertools'
``BatchProcessor``): SQS delivers it again, and after the queue's ``maxReceiveCount`` moves it to
the outbox's dead-letter queue (alarmed). The others are deleted.

Sending again is safe: the updater applies a transaction once (the transaction index claims its
``trans_num``; a redelivery is a duplicate, ``DuplicateEvents``) and the lake's reader keeps one
transaction per id (docs/data.md), so a record relayed twice, or relayed after all although the
first publish reached the stream late, changes nothing.
"""

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from fraud_adapters.outbox import record_of
from fraud_adapters.publisher import Record
from handlers import bootstrap
from handlers.observability import logger, metrics, tracer

#: how long the relay waits for the stream's acknowledgements of one batch
RELAY_TIMEOUT_SECONDS = 10.0


class NotRelayedError(RuntimeError):
    """The stream did not take this message's record (or it is not an outbox record)."""


class Relay:
    """Record handler for the batch processor: the batch is sent first (``send``), in one call;
    ``handle`` then fails each message that was not acknowledged."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}  # message id -> why it was not relayed
        self.relayed = 0

    def send(self, messages: list[dict[str, Any]], timeout: float = RELAY_TIMEOUT_SECONDS) -> None:
        records: list[Record] = []
        ids: list[str] = []
        for raw in messages:
            message = SQSRecord(raw)
            attributes = {
                name: (value or {}).get("stringValue")
                for name, value in (raw.get("messageAttributes") or {}).items()
            }
            try:
                records.append(record_of(message.body or "", attributes))
            except ValueError as exc:
                self.errors[message.message_id] = str(exc)
                continue
            ids.append(message.message_id)
        if not records:
            return
        try:
            outcomes = bootstrap.relay_publisher().publish_records(records, timeout=timeout)
        except Exception as exc:  # the publisher could not even be built or called
            outcomes = [f"{type(exc).__name__}: {exc}"[:300]] * len(records)
        for message_id, error in zip(ids, outcomes, strict=True):
            if error is None:
                self.relayed += 1
            else:
                self.errors[message_id] = error

    def handle(self, record: SQSRecord) -> None:
        error = self.errors.get(record.message_id)
        if error is not None:
            raise NotRelayedError(error)


#: every message failed (the stream is down): reported as such, not raised (an invocation error).
#: At module level, as Powertools keeps it: an instance is a reference cycle, one per batch would
#: leave each batch to the cyclic garbage collector (``handlers.update_features.PROCESSORS``).
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


@tracer.capture_method(capture_response=False)
def process(event: dict[str, Any], context: LambdaContext | None = None) -> dict[str, Any]:
    messages: list[dict[str, Any]] = event["Records"]
    relay = Relay()
    relay.send(messages)
    with processor(messages, relay.handle, context):
        processor.process()
    metrics.add_metric(name="OutboxRelayed", unit=MetricUnit.Count, value=relay.relayed)
    metrics.add_metric(name="OutboxRelayFailures", unit=MetricUnit.Count, value=len(relay.errors))
    log = logger.warning if relay.errors else logger.info
    log(
        "outbox batch relayed",
        extra={
            "messages": len(messages),
            "relayed": relay.relayed,
            "failed": len(relay.errors),
            "errors": sorted(set(relay.errors.values()))[:5],
        },
    )
    response: dict[str, Any] = dict(processor.response())
    return response


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return process(event, context)
