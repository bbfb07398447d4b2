"""A local event source mapping: Kafka consumer group -> MSK-shaped events -> a real handler
(the updater's, ``fraudsys-updater``; the archiver's, ``fraudsys-archiver``, in a process of its
own: ``local_stack.workers.PollerWorker``).

Like Lambda's MSK trigger it gathers up to ``batch_size`` records or waits ``batching_window``
seconds, invokes the handler, and commits the offsets only after success. A failed invocation
(the handler raised, or reported failed items) is retried with backoff from the same offsets;
after ``max_retries`` the batch goes to the dead-letter store (the on-failure destination) and
the stream goes on.

The local broker keeps its log in memory: restarted, it is a new, empty log (a new *incarnation*,
told apart by its cluster id: ``local_stack.services.start_kafka``). Each consumer is built for
one incarnation, the one whose cluster id it read before it was made (so before any of its
fetches), and commits under that incarnation's name of the group, ``group_of(group_id, cluster)``
(``local_stack.incarnation``; tansu drops commit metadata, so the label is the name). Hence:

* a consumer built on a new incarnation finds no commit of its own there and reads the new log
  from its first record (``auto_offset_reset``);
* a commit that reaches a newer incarnation than its consumer's (kafka-python reconnects
  transparently, so a commit can race a restart) is stored under the older incarnation's name,
  where nobody reads it: neither the next consumer nor the journal's relay, which deletes
  journaled records only once every group has committed past them under the current
  incarnation's name (``local_stack.relay``);
* the cluster id is read again before each commit, only so that a consumer whose broker changed
  is rebuilt at once (it would go on fetching the new log from the old log's positions); no check
  is needed after the commit, nor a re-commit of the new log's start: whatever a raced commit
  stored is under the old name.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from confluent_kafka.admin import AdminClient
from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition

from local_stack import metrics
from local_stack.events import LocalContext, StreamRecord, msk_event, quiet_lambda_metrics
from local_stack.incarnation import cluster_id, group_of

log = logging.getLogger(__name__)
Handler = Callable[[dict[str, Any], Any], dict[str, Any]]
#: A transaction event is ~450 bytes on the wire: a batch's worth of fetch bytes.
FETCH_BYTES_PER_RECORD = 512
#: The longest a fetch waits in the broker for that many bytes (seconds).
FETCH_MAX_WAIT = 0.25
#: What one fetch may bring, in all and per partition: a few batches' worth (kafka-python's
#: default is 50 MB, 1 MB per partition), so the consumer buffers at most about this per partition
#: it owns. After a catch-up that buffer of decoded records sets the process's memory for good
#: (Python keeps its fragmented arenas): at a broker restart the journal's relay sends ~30 s of
#: records again at once, and the updater stayed ~6 MB larger. At most Lambda's 6 MB invocation
#: payload; a record batch larger than this still comes (the broker returns the first batch of
#: the first partition with data, whatever the limit), others wait for the next fetch.
FETCH_BATCHES = 4
FETCH_MIN_BYTES, FETCH_MAX_BYTES = 256 << 10, 6 << 20


@dataclass(frozen=True)
class PollerConfig:
    bootstrap_servers: str
    topics: tuple[str, ...]
    group_id: str = "fraudsys-updater"
    batch_size: int = 500
    batching_window: float = 0.5
    max_retries: int = 5
    retry_backoff: float = 0.5
    session_timeout_ms: int = 6000
    stall_seconds: float = 10.0  # a consumer call running longer than this is aborted
    idle_rebuild_seconds: float = 10.0
    name: str = "updater"  # the function it stands in front of: logs, threads, dead-letter reasons


#: how often a busy poller checks that it owns every partition of its topics
PARTITION_CHECK_SECONDS = 5.0


def consumer_options(cfg: PollerConfig, cluster: str) -> dict[str, Any]:
    """The poller's KafkaConsumer settings (valid for any batching window, 0 to 300 s) for the
    broker incarnation ``cluster``: its group's offsets there are under ``group_of``."""
    return {
        "bootstrap_servers": cfg.bootstrap_servers.split(","),
        "group_id": group_of(cfg.group_id, cluster),
        "enable_auto_commit": False,
        # no commit under this incarnation's name: a new log, read from its first record
        "auto_offset_reset": "earliest",
        # never create a topic by asking for it (the broker's default partitions): the stack
        # creates them, as MSK's auto.create.topics.enable=false wants
        "allow_auto_create_topics": False,
        "max_poll_records": cfg.batch_size,
        "request_timeout_ms": 30_000,
        # the topics' partitions are re-read this often (``PARTITION_CHECK_SECONDS``): a topic
        # re-created with more partitions (a broker that restarted without its log) is followed
        "metadata_max_age_ms": int(PARTITION_CHECK_SECONDS * 1000),
        # Wait in the broker for a batch's worth of bytes (or FETCH_MAX_WAIT) instead of fetching
        # every few records: the local broker's fetch cost grows with its log, and hundreds of
        # fetches/s made it the busiest process on the machine (docs/benchmarks-http.md). The
        # wait adds at most FETCH_MAX_WAIT to freshness.
        "fetch_min_bytes": min(cfg.batch_size * FETCH_BYTES_PER_RECORD, 1 << 20),
        "fetch_max_wait_ms": max(1, int(min(cfg.batching_window, FETCH_MAX_WAIT) * 1000)),
        "fetch_max_bytes": fetch_bytes(cfg.batch_size),
        "max_partition_fetch_bytes": fetch_bytes(cfg.batch_size),
    }


def fetch_bytes(batch_size: int) -> int:
    """The most one fetch brings (``FETCH_BATCHES``)."""
    return min(max(FETCH_BATCHES * batch_size * FETCH_BYTES_PER_RECORD, FETCH_MIN_BYTES), FETCH_MAX_BYTES)


class KafkaPoller:
    def __init__(
        self, cfg: PollerConfig, handler: Handler, dead_letter: Callable[[list[StreamRecord], str], None]
    ) -> None:
        self.cfg = cfg
        self.handler = handler
        self.dead_letter = dead_letter
        self.context = LocalContext(f"fraudsys-{cfg.name}")
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"kafka-poller-{cfg.name}", daemon=True)
        self.processed = 0
        self.incarnations = 0  # broker incarnations seen after the first (restarts without their log)
        self._cluster: str | None = None  # the broker incarnation the consumer reads
        admin: dict[str, Any] = {"bootstrap.servers": cfg.bootstrap_servers, "logger": log}
        self._admin = AdminClient(admin)
        self.error: BaseException | None = None
        self._consumer: KafkaConsumer | None = None
        self._idle_since: float | None = None
        self._checked_at = 0.0  # when the topics' partitions were last compared with the assignment
        self._busy_since: float | None = None
        self.watchdog = threading.Thread(
            target=self._watch, name=f"kafka-poller-{cfg.name}-watchdog", daemon=True
        )

    def start(self) -> "KafkaPoller":
        self.thread.start()
        self.watchdog.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        consumer = self._consumer
        if consumer is not None and self._busy_since is not None:
            self._abort(consumer)
        self.thread.join(15)
        self.watchdog.join(5)

    @contextmanager
    def _consumer_call(self) -> Iterator[None]:
        """Marks a consumer call for the watchdog."""
        self._busy_since = time.monotonic()
        try:
            yield
        finally:
            self._busy_since = None

    def _watch(self) -> None:
        """kafka-python can block in a consumer call forever after a broker restart; closing the
        consumer from here makes that call raise, and the poller builds a new consumer."""
        limit = self.cfg.batching_window + self.cfg.stall_seconds
        while not self._stop.wait(1.0):
            started, consumer = self._busy_since, self._consumer
            if started is not None and consumer is not None and time.monotonic() - started > limit:
                log.warning(
                    "poller: poll() stuck for %.0f s; closing the consumer", time.monotonic() - started
                )
                self._abort(consumer)

    @staticmethod
    def _abort(consumer: KafkaConsumer) -> None:
        try:
            consumer.close(autocommit=False)
        except Exception as exc:
            log.debug("poller abort: %s", exc)

    def _consumer_or_new(self) -> KafkaConsumer:
        """One consumer owning every partition of the topics (assigned, not subscribed: a single
        local poller needs no group membership, so a broker restart leaves no stale member
        holding partitions). Offsets are still committed to, and resumed from, the group: under
        its name for the incarnation whose cluster id is read here, before the consumer exists."""
        if self._consumer is None:
            cluster = self.cluster_id(require_topics=True)
            if self._cluster is not None and cluster != self._cluster:
                self.incarnations += 1
                log.warning(
                    "%s: a new broker incarnation (%s, was %s): reading its log from the beginning",
                    self.cfg.name,
                    cluster,
                    self._cluster,
                )
            consumer = KafkaConsumer(**consumer_options(self.cfg, cluster))
            # owned (and closed by _close on failure) before its first blocking call: the metadata
            # request waits without a timeout, and a broker restart can leave it waiting forever,
            # so it runs under the watchdog like poll()
            self._consumer = consumer
            self._cluster = cluster
            with self._consumer_call():
                partitions = self._partitions(consumer)
            consumer.assign(partitions)
            self._checked_at = time.monotonic()
        return self._consumer

    def cluster_id(self, require_topics: bool = False) -> str:
        """The cluster id of the broker answering now (a new one per start of the local broker).
        ``require_topics``: raise while one of the topics does not exist (a new broker before the
        stack created them): a consumer asking for it could have tansu create it with its default
        partition count (it does not always honour ``allow_auto_create_topics=False``)."""
        return cluster_id(self._admin, self.cfg.topics if require_topics else (), timeout=5)

    def _partitions(self, consumer: KafkaConsumer) -> list[TopicPartition]:
        partitions = []
        for topic in self.cfg.topics:
            ids = consumer.partitions_for_topic(topic)
            if not ids:
                raise RuntimeError(f"topic {topic} has no partitions yet")
            partitions += [TopicPartition(topic, p) for p in sorted(ids)]
        return partitions

    def _follow_partitions(self, consumer: KafkaConsumer) -> None:
        """Every ``PARTITION_CHECK_SECONDS``: own every partition the topics have now. An idle
        poller is rebuilt anyway (``_when_idle``); a busy one would otherwise never read the
        partitions of a topic re-created with more of them."""
        now = time.monotonic()
        if now - self._checked_at < PARTITION_CHECK_SECONDS:
            return
        self._checked_at = now
        with self._consumer_call():
            partitions = self._partitions(consumer)
        if set(partitions) != consumer.assignment():
            log.warning("%s: the topics' partitions changed; now reading %d", self.cfg.name, len(partitions))
            self._close()  # a new consumer owns them all, from the committed offsets

    def _gather(self, consumer: KafkaConsumer) -> list[StreamRecord]:
        batch: list[StreamRecord] = []
        deadline = time.monotonic() + self.cfg.batching_window
        polled = extended = False
        while len(batch) < self.cfg.batch_size and not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0 and polled and not batch and not extended:
                # nothing yet: give a fetch waiting in the broker (FETCH_MAX_WAIT) time to land,
                # or records sent just before the deadline would wait a whole extra window
                deadline, extended = deadline + FETCH_MAX_WAIT, True
                remaining = FETCH_MAX_WAIT
            if remaining <= 0 and polled:
                break
            polled, remaining = True, max(remaining, 0.0)  # a window of 0 still polls once
            with self._consumer_call():
                fetched = consumer.poll(
                    timeout_ms=int(remaining * 1000), max_records=self.cfg.batch_size - len(batch)
                )
            for records in fetched.values():
                batch += [
                    StreamRecord(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value) for r in records
                ]
        return batch

    def _invoke(self, batch: list[StreamRecord]) -> str | None:
        """None on success, else the reason of the last failure."""
        event = msk_event(batch, self.cfg.bootstrap_servers)
        reason = None
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                time.sleep(min(self.cfg.retry_backoff * 2 ** (attempt - 1), 10.0))
            try:
                response = self.handler(event, self.context)
                quiet_lambda_metrics()
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                metrics.BATCHES.labels(outcome="error").inc()
                log.warning("%s failed (attempt %d): %s", self.cfg.name, attempt + 1, reason)
                continue
            failures = response.get("batchItemFailures") or []
            if not failures:
                metrics.BATCHES.labels(outcome="ok").inc()
                return None
            reason = f"{len(failures)} records failed"
            metrics.BATCHES.labels(outcome="partial").inc()
        return reason

    def _commit(self, consumer: KafkaConsumer, batch: list[StreamRecord]) -> bool:
        """Commit past ``batch`` under the group's name for the consumer's incarnation. False (and
        the consumer closed: the next one reads the new log from its start) when the broker is
        another incarnation already. The commit can still race a restart and land in the new
        broker, under the old incarnation's name: ignored there (the module's docstring)."""
        offsets: dict[TopicPartition, int] = {}
        for r in batch:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, -1), r.offset + 1)
        if self.cluster_id() != self._cluster:
            log.warning("%s: the broker restarted without its log; the batch is not committed", self.cfg.name)
            self._close()
            return False
        with self._consumer_call():
            consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
        return True

    def _lag(self, consumer: KafkaConsumer) -> int:
        """Records behind the end of the assigned partitions (also exported to /metrics)."""
        assigned = consumer.assignment()
        if not assigned:
            return 0
        with self._consumer_call():
            ends = consumer.end_offsets(list(assigned), timeout_ms=2000)
            positions = {tp: consumer.position(tp) for tp in assigned}
        total = 0
        for tp in assigned:
            lag = max(ends.get(tp, 0) - positions[tp], 0)
            metrics.CONSUMER_LAG.labels(partition=f"{tp.topic}-{tp.partition}").set(lag)
            total += lag
        return total

    def _when_idle(self, consumer: KafkaConsumer) -> None:
        """Export the lag; after ``idle_rebuild_seconds`` without records, rebuild the consumer.
        kafka-python can keep polling a restarted broker without ever fetching again (topic ids
        change); a fresh consumer resumes from the committed offsets. Cheap: no group join. At once
        when the broker is a new incarnation (its log from the start)."""
        now = time.monotonic()
        if self._idle_since is None:
            self._idle_since = now
        try:
            self._lag(consumer)
        except Exception as exc:
            log.debug("poller lag: %s", exc)
        if now - self._idle_since > self.cfg.idle_rebuild_seconds or self.cluster_id() != self._cluster:
            self._idle_since = None
            self._close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                consumer = self._consumer_or_new()
                batch = self._gather(consumer)
                if not batch:
                    self._when_idle(consumer)
                    continue
                self._idle_since = None
                metrics.RECORDS.inc(len(batch))
                reason = self._invoke(batch)
                if reason is not None:
                    self.dead_letter(
                        batch, f"{self.cfg.name} failed after {self.cfg.max_retries} retries: {reason}"
                    )
                    metrics.DEAD_LETTERED_BATCHES.inc()
                committed = self._commit(consumer, batch)
                self.processed += len(batch)
                if committed:
                    self._lag(consumer)
                    self._follow_partitions(consumer)
            except Exception as exc:  # broker gone, rebalance...: reconnect and resume from committed offsets
                if self._stop.is_set():  # stop() closed the consumer under a call: not a failure
                    log.debug("poller stopping: %s", exc)
                    break
                log.warning("poller: %s: %s; reconnecting", type(exc).__name__, exc)
                self._close()
                self._stop.wait(1.0)
        self._close()

    def _close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except Exception as exc:
                log.debug("poller close: %s", exc)
            self._consumer = None


def dead_letter_batch(batch: list[StreamRecord], reason: str) -> None:
    """The on-failure destination: each record of a batch that failed every retry, to the handler's
    dead-letter store (``DEAD_LETTER_URI``), replayable from there."""
    from fraud_adapters.dead_letters import DeadLetter
    from handlers import bootstrap

    store = bootstrap.dead_letter_store()
    for r in batch:
        store.put(DeadLetter.of(f"kafka:{r.topic}-{r.partition}@{r.offset}", reason, r.value))
