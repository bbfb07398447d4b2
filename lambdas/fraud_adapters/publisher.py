"""Stream publisher: scored transactions (and labels) to Kafka/MSK, Kinesis, or nowhere.

Records are keyed so that one card's transactions share a partition (shard), by the card's
keyed hash (``CardHasher``), never the card number: keys show up in broker tooling, partition
metrics and consumer logs that payload encryption does not cover. Labels are keyed by merchant.
"""

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from fraud_adapters.journal import Journal, Span
from fraud_core.schemas import LabelEvent, TransactionEvent

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient

TRANSACTIONS_TOPIC = "fraudsys.transactions"
LABELS_TOPIC = "fraudsys.labels"

Event = TransactionEvent | LabelEvent
#: ``(topic, key, value)``: one stream record as a publisher builds it (on Kinesis, the topic is the
#: stream's name); what the publish outbox keeps of a record whose publish failed
Record = tuple[str, bytes, bytes]
log = logging.getLogger("fraudsys.publisher")


class JournalWriteError(OSError):
    """The producer journal could not take the records: they were neither kept nor sent."""


class Publisher(Protocol):
    #: whether a record whose ``publish`` raised is still kept and sent again later (the local
    #: stack's producer journal), unless the error is a ``JournalWriteError``
    keeps_failed: bool

    def publish(self, events: Sequence[Event], timeout: float = 2.0) -> None:
        """Deliver ``events`` (keyed by card) or raise."""

    def record(self, event: Event) -> Record:
        """The topic, key and value the stream gets for ``event`` (what ``publish`` sends)."""

    def publish_records(self, records: Sequence[Record], timeout: float = 2.0) -> list[str | None]:
        """Send records built by ``record`` (the outbox's relay) and wait for them: per record,
        None when the stream acknowledged it, else why not."""

    def take_late_failures(self) -> int:
        """Records that failed after ``publish`` returned (background delivery), since the last call."""

    def warm(self, timeout: float = 10.0) -> None:
        """Connect and learn the topics now, so that the first ``publish`` does not pay for it."""

    def check(self, timeout: float = 0.25) -> str:
        """What the stream looks like now (for ``GET /health``), or raise if it cannot be reached."""

    def close(self) -> None: ...


def _payload(event: Event) -> bytes:
    return event.model_dump_json().encode()


CardKey = Callable[[str], str]


def partition_key(event: Event, card_key: CardKey) -> str:
    """Per-card ordering for transactions (by the card's hash); labels are keyed by merchant."""
    return card_key(event.cc_num) if isinstance(event, TransactionEvent) else event.merchant


class NullPublisher:
    keeps_failed = False

    def publish(self, events: Sequence[Event], timeout: float = 2.0) -> None:
        return None

    def record(self, event: Event) -> Record:
        return "", b"", _payload(event)  # nothing is published, so nothing is ever kept

    def publish_records(self, records: Sequence[Record], timeout: float = 2.0) -> list[str | None]:
        raise RuntimeError("no stream (STREAM_KIND=none): nowhere to send outbox records")

    def take_late_failures(self) -> int:
        return 0

    def warm(self, timeout: float = 10.0) -> None:
        return None

    def check(self, timeout: float = 0.25) -> str:
        return "no stream (STREAM_KIND=none)"

    def close(self) -> None:
        return None


class _Deliveries:
    """Delivery reports of one ``publish`` call (a late report of an earlier call lands in its own):
    where each of its records landed, (partition, offset) by position."""

    def __init__(self, pending: int) -> None:
        self.pending = pending
        self.errors: dict[int, str] = {}  # why a record was refused, by its position
        self.offsets: list[tuple[int, int]] = [(-1, -1)] * pending

    def delivered(self, i: int, error: Any, message: Any) -> None:
        self.pending -= 1
        if error is not None:
            self.errors[i] = f"{message.topic()}: {error}"
        else:
            self.offsets[i] = (message.partition(), message.offset())


class KafkaPublisher:
    """Kafka/MSK through librdkafka (confluent-kafka): ~0.1 ms of CPU per publish + flush, ten
    times less than a pure-Python client (docs/benchmarks-http.md). ``config`` is librdkafka's.

    ``background=True`` (``PUBLISH_MODE=background``): ``publish`` queues and returns; librdkafka
    gathers records for ``linger_ms`` into one produce request and delivers from its own threads;
    failures reported later are logged and counted (``take_late_failures``); ``close`` flushes.

    ``journal`` (the local stack, ``fraud_adapters.journal``): each call's records are appended to
    it before they are sent (one write), and the broker's answer is marked there afterwards; a
    record the broker lost or refused is sent again by the stack's relay (``local_stack.relay``)."""

    def __init__(
        self,
        bootstrap_servers: str,
        transactions_topic: str = TRANSACTIONS_TOPIC,
        labels_topic: str = LABELS_TOPIC,
        *,
        card_key: CardKey,
        background: bool = False,
        linger_ms: int = 100,
        journal: Journal | None = None,
        **config: Any,
    ) -> None:
        from confluent_kafka import Producer

        self.journal = journal
        self.keeps_failed = journal is not None
        self.background = background
        self.linger_ms = linger_ms if background else 0
        self._late_failures = 0
        self.card_key = card_key
        self.topics = {TransactionEvent: transactions_topic, LabelEvent: labels_topic}
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap_servers,
                "acks": "all",
                "linger.ms": self.linger_ms,
                "message.timeout.ms": 5000,  # delivery deadline, retries included
                "socket.nagle.disable": True,
                # a restarted broker is reconnected to within a second (librdkafka's default
                # backoff grows to 10 s, during which every sync publish times out)
                "reconnect.backoff.max.ms": 1000,
                "logger": logging.getLogger("fraudsys.kafka"),
                **config,
            }
        )
        self.producer.poll(0)  # serves an OAUTHBEARER token callback (MSK IAM) before the first send
        self._reports: threading.Thread | None = None
        self._closed = threading.Event()
        self._count_lock = threading.Lock()
        if background and journal is not None:
            # the broker's reports marked in the journal as they come, not at the next publish: an
            # API gone idle would otherwise leave its last records unmarked, and the relay would
            # take them for lost and send them again
            self._reports = threading.Thread(target=self._serve_reports, name="kafka-reports", daemon=True)
            self._reports.start()

    def warm(self, timeout: float = 10.0) -> None:
        """Connect to the brokers and fetch both topics' metadata (librdkafka is lazy: without
        this the first sync publish waits for the connection, the metadata and the ack)."""
        for topic in self.topics.values():
            self.producer.list_topics(topic, timeout=timeout)

    def check(self, timeout: float = 0.25) -> str:
        """A metadata round trip to the brokers for the transactions topic (raises if none answers
        within ``timeout``, or the topic does not exist)."""
        topic = self.topics[TransactionEvent]
        metadata = self.producer.list_topics(topic, timeout=timeout)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            raise RuntimeError(f"topic {topic}: {found.error if found is not None else 'missing'}")
        return f"{len(metadata.brokers)} broker(s), {topic}: {len(found.partitions)} partition(s)"

    def publish(self, events: Sequence[Event], timeout: float = 2.0) -> None:
        """Send and wait for this call's acknowledgements only (not the rest of the queue);
        in background mode, queue and return (a full queue raises). With a journal, the records
        are in it before anything is sent (and stay there when this raises)."""
        records = [self.record(event) for event in events]
        try:
            span = self.journal.append(records) if self.journal is not None and records else None
        except OSError as exc:  # a full or read-only disk: nothing kept, nothing sent
            raise JournalWriteError(f"producer journal: {exc}") from exc
        if self.background:
            self._produce(records, span, None)
            self.producer.poll(0)  # serves the reports of earlier records
            return
        outcome = _Deliveries(len(records))
        try:
            self._produce(records, None, outcome)
            deadline = time.monotonic() + timeout
            while outcome.pending and (left := deadline - time.monotonic()) > 0:
                self.producer.poll(left)  # serves delivery callbacks
        except BaseException:
            self._failed(span)
            raise
        if span is not None and self.journal is not None:
            if outcome.errors or outcome.pending:
                self.journal.failed(span)
            else:
                self.journal.acknowledged(span, outcome.offsets)
        if outcome.errors:
            raise RuntimeError("Kafka refused records: " + "; ".join(outcome.errors.values()))
        if outcome.pending:
            raise TimeoutError(
                f"{outcome.pending} of {len(events)} records not acknowledged by Kafka within {timeout} s"
            )

    def record(self, event: Event) -> Record:
        """The topic, key and value the broker gets for ``event``."""
        return self.topics[type(event)], partition_key(event, self.card_key).encode(), _payload(event)

    def publish_records(self, records: Sequence[Record], timeout: float = 2.0) -> list[str | None]:
        """Send records as they are (the outbox's relay: built by ``record`` in the scorer, the key
        already hashed) and wait at most ``timeout`` for their acknowledgements, in either mode.
        A record for a topic other than this publisher's two is refused, not sent. Not journaled
        (the local stack's journal has a relay of its own)."""
        known = set(self.topics.values())
        errors: list[str | None] = [None] * len(records)
        outcome = _Deliveries(len(records))
        for i, (topic, key, value) in enumerate(records):
            if topic not in known:
                errors[i] = f"unknown topic {topic!r} (this publisher sends to {sorted(known)})"
                outcome.pending -= 1
                continue
            try:
                self.producer.produce(
                    topic, value=value, key=key, on_delivery=functools.partial(outcome.delivered, i)
                )
            except Exception as exc:  # BufferError (queue full), KafkaException
                errors[i] = f"{topic}: not queued: {exc}"
                outcome.pending -= 1
        deadline = time.monotonic() + timeout
        while outcome.pending and (left := deadline - time.monotonic()) > 0:
            self.producer.poll(left)
        for i in range(len(records)):
            if errors[i] is None and i in outcome.errors:
                errors[i] = outcome.errors[i]
            elif errors[i] is None and outcome.offsets[i] == (-1, -1):
                errors[i] = f"not acknowledged by Kafka within {timeout} s"
        return errors

    def _failed(self, span: Span | None) -> None:
        if span is not None and self.journal is not None:
            self.journal.failed(span)

    def _produce(
        self,
        records: Sequence[tuple[str, bytes, bytes]],
        span: Span | None,
        outcome: _Deliveries | None,
    ) -> None:
        """Queue ``records``; each one's report goes to ``outcome`` (sync), else (background) it is
        logged, counted and, with a journal, marked there (record ``span.first + i``)."""
        for i, (topic, key, value) in enumerate(records):
            callback: Callable[[Any, Any], None]
            if outcome is not None:
                callback = functools.partial(outcome.delivered, i)
            else:
                callback = self._delivered_late if span is None else self._late_report(span, i)
            self.producer.produce(topic, value=value, key=key, on_delivery=callback)

    def _late_report(self, span: Span, i: int) -> Callable[[Any, Any], None]:
        def delivered(error: Any, message: Any) -> None:
            self._delivered_late(error, message)
            if self.journal is None:
                return
            one = Span(span.segment, span.first + i, 1)
            if error is None:
                self.journal.acknowledged(one, [(message.partition(), message.offset())])
            else:
                self.journal.failed(one)

        return delivered

    def _serve_reports(self) -> None:
        while not self._closed.is_set():
            self.producer.poll(0.5)  # returns at once when a report comes

    def _delivered_late(self, error: Any, message: Any) -> None:
        if error is not None:
            with self._count_lock:
                self._late_failures += 1
            log.error("Kafka refused a record after publish returned: %s: %s", message.topic(), error)

    def take_late_failures(self) -> int:
        if self.background:
            self.producer.poll(0)
        with self._count_lock:
            failures, self._late_failures = self._late_failures, 0
        return failures

    def close(self) -> None:
        left = self.producer.flush(5)
        self._closed.set()
        if self._reports is not None:
            self._reports.join(2)
        if left:
            log.error("%d Kafka records not delivered at close", left)
        if self.journal is not None:
            self.journal.close()


class KinesisPublisher:
    keeps_failed = False

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

    def record(self, event: Event) -> Record:
        """The stream's name, the partition key and the data Kinesis gets for ``event``."""
        return self.stream_name, partition_key(event, self.card_key).encode(), _payload(event)

    def publish_records(self, records: Sequence[Record], timeout: float = 2.0) -> list[str | None]:
        """Put records as they are (the outbox's relay) on this publisher's stream: one stream
        carries both kinds of event (``kind`` in the payload), so the record's topic is not used."""
        if not records:
            return []
        try:
            response = self.client.put_records(
                StreamName=self.stream_name,
                Records=[{"Data": value, "PartitionKey": key.decode()} for _, key, value in records],
            )
        except Exception as exc:
            return [f"kinesis: {type(exc).__name__}: {exc}"[:300]] * len(records)
        return [
            f"kinesis: {r['ErrorCode']}: {r.get('ErrorMessage', '')}" if r.get("ErrorCode") else None
            for r in response["Records"]
        ]

    def take_late_failures(self) -> int:
        return 0

    def warm(self, timeout: float = 10.0) -> None:
        return None  # boto3 connects on the first put; nothing to learn beforehand

    def check(self, timeout: float = 0.25) -> str:
        # a DescribeStreamSummary per /health would count against the stream's API limits
        return f"kinesis stream {self.stream_name}: not probed"

    def close(self) -> None:
        return None


def kafka_security_config() -> dict[str, Any]:
    """librdkafka TLS/SASL settings from the environment. ``KAFKA_SASL_MECHANISM=AWS_MSK_IAM``
    (MSK with IAM access control) signs OAUTHBEARER tokens with the function's role."""
    config: dict[str, Any] = {}
    if protocol := os.environ.get("KAFKA_SECURITY_PROTOCOL"):
        config["security.protocol"] = protocol
    mechanism = os.environ.get("KAFKA_SASL_MECHANISM")
    if mechanism == "AWS_MSK_IAM":
        config["sasl.mechanism"] = "OAUTHBEARER"
        config["oauth_cb"] = msk_iam_token
    elif mechanism:
        config["sasl.mechanism"] = mechanism
    return config


def msk_iam_token(_config: str | None = None) -> tuple[str, float]:
    """An MSK IAM auth token and its expiry (epoch seconds), as librdkafka's ``oauth_cb`` wants."""
    from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    token, expiry_ms = MSKAuthTokenProvider.generate_auth_token(region)
    return token, expiry_ms / 1000
