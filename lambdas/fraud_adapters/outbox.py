"""The publish outbox (AWS): stream records whose publish failed, kept in an SQS queue until the
relay (``handlers.relay_outbox``) sends them to the stream.

A message is the stream record exactly as the publisher built it (``Publisher.record``): the body
is the record's value (the event's JSON, as the stream carries it), the message attributes
``topic`` (the Kafka topic; on Kinesis the stream's name) and ``key`` (the partition key: for a
transaction the card's keyed hash, never the number). The relay re-sends the same bytes under the
same key, so the consumers see what they would have seen had the first publish succeeded.

The value carries what the stream's value carries, the card number included
(``TransactionEvent.cc_num``, which the updater hashes): the queue is encrypted with the stage's
data key, as the stream is (docs/security.md).

Locally there is no outbox: the producer journal and the local relay play its part
(``fraud_adapters.journal``, ``local_stack.relay``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fraud_adapters.publisher import Record

TOPIC_ATTRIBUTE = "topic"
KEY_ATTRIBUTE = "key"
#: SendMessageBatch takes at most this many entries
SQS_BATCH = 10


class OutboxError(RuntimeError):
    """SQS did not take every record (the ones it refused are named)."""


class BadOutboxMessageError(ValueError):
    """A message that is not an outbox record (no topic or key attribute)."""


@dataclass(frozen=True, slots=True)
class SqsOutbox:
    """An SQS queue holding stream records. ``client``: boto3's, with short timeouts (the scorer
    writes to it on its answer's path, after a publish already failed)."""

    queue_url: str
    client: Any  # boto3's SQS client (the project pins no SQS type stubs)

    @classmethod
    def open(cls, queue_url: str, *, connect_timeout: float = 0.25, read_timeout: float = 0.5) -> SqsOutbox:
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": 2, "mode": "standard"},
        )
        client = boto3.client("sqs", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_SQS"), config=config)
        return cls(queue_url, client)

    def put(self, records: Sequence[Record]) -> None:
        """Send ``records`` (one message each), or raise ``OutboxError`` naming what SQS refused."""
        for start in range(0, len(records), SQS_BATCH):
            chunk = records[start : start + SQS_BATCH]
            answer = self.client.send_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), **message(record)} for i, record in enumerate(chunk)],
            )
            failed = answer.get("Failed") or []
            if failed:
                reasons = "; ".join(f"{f.get('Code')}: {f.get('Message', '')}"[:200] for f in failed)
                raise OutboxError(f"SQS refused {len(failed)} of {len(chunk)} outbox records: {reasons}")


def message(record: Record) -> dict[str, Any]:
    """The SQS message (body and attributes) holding ``record``."""
    topic, key, value = record
    return {
        "MessageBody": value.decode(),
        "MessageAttributes": {
            TOPIC_ATTRIBUTE: {"DataType": "String", "StringValue": topic},
            KEY_ATTRIBUTE: {"DataType": "String", "StringValue": key.decode()},
        },
    }


def record_of(body: str, attributes: Mapping[str, str | None]) -> Record:
    """The stream record an outbox message holds (``attributes``: name -> string value)."""
    topic = attributes.get(TOPIC_ATTRIBUTE)
    key = attributes.get(KEY_ATTRIBUTE)
    if not topic or key is None:
        raise BadOutboxMessageError("not an outbox record: the topic or key attribute is missing")
    return topic, key.encode(), body.encode()
