"""Stream publisher: scored transactions (and labels) to Kafka/MSK, Kinesis, or nowhere.

Records are keyed so that one card's transactions share a partition (shard), by the card's
keyed hash (``CardHasher``), never the card number: keys show up in broker tooling, partition
metrics and consumer logs that payload encryption does not cover. Labels are keyed by merchant.
"""

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from fraud_core.schemas import LabelEvent, TransactionEvent

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient

TRANSACTIONS_TOPIC = "fraudsys.transactions"
LABELS_TOPIC = "fraudsys.labels"

Event = TransactionEvent | LabelEvent


class Publisher(Protocol):
    def publish(self, events: Sequence[Event], timeout: float = 2.0) -> None:
        """Deliver ``events`` (keyed by card) or raise."""

    def close(self) -> None: ...


def _payload(event: Event) -> bytes:
    return event.model_dump_json().encode()


CardKey = Callable[[str], str]


def partition_key(event: Event, card_key: CardKey) -> str:
    """Per-card ordering for transactions (by the card's hash); labels are keyed by merchant."""
    return card_key(event.cc_num) if isinstance(event, TransactionEvent) else event.merchant


class NullPublisher:
    def publish(self, events: Sequence[Event], timeout: float = 2.0) -> None:
        return None

    def close(self) -> None:
        return None


class KafkaPublisher:
    def __init__(
        self,
        bootstrap_servers: str,
        transactions_topic: str = TRANSACTIONS_TOPIC,
        labels_topic: str = LABELS_TOPIC,
        *,
        card_key: CardKey,
        **config: Any,
    ) -> None:
        from kafka import KafkaProducer

        self.card_key = card_key
        self.topics = {TransactionEvent: transactions_topic, LabelEvent: labels_topic}
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers.split(","),
            acks="all",
            linger_ms=0,
            retries=5,
            request_timeout_ms=5000,
            max_block_ms=5000,
            **config,
        )

    def publish(self, events: Sequence[Event], timeout: float = 2.0) -> None:
        futures = [
            self.producer.send(
                self.topics[type(event)],
                value=_payload(event),
                key=partition_key(event, self.card_key).encode(),
            )
            for event in events
        ]
        self.producer.flush(timeout)
        for future in futures:
            future.get(timeout)  # raises if a send failed

    def close(self) -> None:
        self.producer.close(5)


class KinesisPublisher:
    def __init__(self, stream_name: str, *, card_key: CardKey, client: "KinesisClient | None" = None) -> None:
        import boto3

        self.card_key = card_key
        self.stream_name = stream_name
        self.client = client or boto3.client(
            "kinesis", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_KINESIS")
        )

    def publish(self, events: Sequence[Event], timeout: float = 2.0) -> None:
        if not events:
            return
        response = self.client.put_records(
            StreamName=self.stream_name,
            Records=[{"Data": _payload(e), "PartitionKey": partition_key(e, self.card_key)} for e in events],
        )
        if response.get("FailedRecordCount"):
            raise RuntimeError(f"{response['FailedRecordCount']} records were not accepted by Kinesis")

    def close(self) -> None:
        return None


def kafka_security_config() -> dict[str, Any]:
    """TLS/IAM settings from the environment (``AWS_MSK_IAM`` on MSK)."""
    config: dict[str, Any] = {}
    if protocol := os.environ.get("KAFKA_SECURITY_PROTOCOL"):
        config["security_protocol"] = protocol
    if mechanism := os.environ.get("KAFKA_SASL_MECHANISM"):
        config["sasl_mechanism"] = mechanism
    return config
