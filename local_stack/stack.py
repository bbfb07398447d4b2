"""``fraudsys local up``: the whole system on 127.0.0.1, on real parts.

redis-server (feature store), the local S3 (``local_stack.s3_server``, objects on disk: model
store, dead letters, the event lake), tansu (Kafka protocol, its log in memory, topics created;
with ``durable_broker`` every producer journals its records on disk first and a relay sends again
what a restarted broker lost: ``local_stack.relay``), optionally the MLflow server, the local API
Gateway in front of the real scorer handler and, each in a process of its own with its own
consumer group (``local_stack.workers.PollerWorker``), the local MSK event source mappings in
front of the real updater handler and of the real archiver (``handlers.archive_events``: the
event lake). Only the archiver has ``LAKE_URI``.
"""

import contextlib
import gc
import logging
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from local_stack import DEFAULT_BROKER_ROLL_RECORDS, freeze_heap, s3_snapshot
from local_stack.api import LocalApi
from local_stack.champion import ChampionReport, ensure_champion
from local_stack.instance import InstanceProcess
from local_stack.poller import PollerConfig
from local_stack.relay import JournalRelay
from local_stack.replay import ConsumerProgress
from local_stack.services import (
    RedisTls,
    Service,
    ServiceError,
    Supervisor,
    free_port,
    port_open,
    start_kafka,
    start_mlflow,
    start_redis,
    start_s3,
)
from local_stack.workers import UPDATER_METRICS_ENV, ApiWorkers, PollerWorker

if TYPE_CHECKING:
    from cdk_app.config import StageConfig

log = logging.getLogger(__name__)

MODELS_BUCKET = "fraudsys-models"
DEAD_LETTER_BUCKET = "fraudsys-dead-letters"
LAKE_BUCKET = "fraudsys-lake"
# Buckets copied to <run_dir>/s3 at `down` (local_stack.s3_snapshot: a folder of plain files to read
# the lake from), and restored from there into a new local S3; not the broker's log.
PERSISTENT_BUCKETS = (MODELS_BUCKET, DEAD_LETTER_BUCKET, LAKE_BUCKET)
# moto's dummy credentials (the local S3); one line, so that bandit's nosec applies to it alone
LOCAL_DUMMY_SECRET = "testing"  # noqa: S105  # nosec B105  # pragma: allowlist secret
TRANSACTIONS_TOPIC = "fraudsys.transactions"
LABELS_TOPIC = "fraudsys.labels"
UPDATER_GROUP = "fraudsys-updater"
ARCHIVER_GROUP = "fraudsys-archiver"


@dataclass(frozen=True)
class StackConfig:
    run_dir: Path = Path("data/local")
    api_port: int = 8080
    redis_port: int = 6380
    kafka_port: int = 19092
    s3_port: int = 5055
    mlflow_port: int = 5050
    with_mlflow: bool = True
    label_delay_seconds: int = 7 * 86400
    model_pointer_ttl_seconds: float = 2.0
    redis_timeout_ms: int = 100
    partitions: int = 2
    # None: the CDK dev stage's settings of each consumer (updater, archiver); a value: both
    batch_size: int | None = None
    batching_window: float | None = None
    max_retries: int = 5
    session_timeout_ms: int = 6000
    # True: what the broker acknowledged survives its crash. Its log stays in memory (tansu's only
    # durable engine in this build, s3://, measured unusable: docs/architecture.md), but every
    # producer of the stack appends each record to a journal on disk (<run_dir>/journal) before it
    # sends it, and the stack's relay sends again what a restarted broker lost, what failed, and
    # deletes what every consumer group has consumed (local_stack.relay). False: no journal; a
    # broker killed loses what it acknowledged and nobody consumed yet.
    durable_broker: bool = True
    # an fdatasync of the journal per publish call (survives an operating-system crash too); off:
    # one write per call, which a killed process does not lose (docs/benchmarks-http.md: the cost)
    journal_fsync: bool = False
    # with durable_broker: restart ("roll") the in-memory broker once its log holds this many
    # records and the journal less than half that (what is not yet consumed is sent again to the
    # new, empty log): tansu 0.6 deletes nothing, so this is what bounds the broker's memory
    # (~100 MB at the default: docs/benchmarks-http.md); None: never, and it grows while the
    # stack is up
    broker_roll_records: int | None = DEFAULT_BROKER_ROLL_RECORDS
    redis_password: str | None = None  # redis-server --requirepass; in REDIS_URL (local only)
    redis_tls: RedisTls | None = None  # TLS-only redis-server; rediss:// with the CA in REDIS_URL
    # redis-server keeps an append-only file in <run_dir>/redis (fsync every second): the feature
    # store survives a crash, a restart and the next `up`
    redis_appendonly: bool = True
    # 1: the API in this process, its handler in an instance process (api_instance_process; one
    # invocation at a time, like one Lambda instance); N > 1:
    # N worker processes on the same port (local_stack.workers), like N concurrent instances,
    # each with its own instance process
    api_workers: int = 1
    # the handler runs in a process of its own (local_stack.instance), as a Lambda instance runs
    # apart from API Gateway, so the HTTP event loop (and the poller, updater and relay here)
    # never hold its interpreter lock; False: on a thread of the API's process
    api_instance_process: bool = True
    # background (the default): the API answers once the record is in the producer journal
    # (durable_broker) and queued, without waiting for the broker; sync: every answer also waits
    # for the broker's acknowledgement, as the Lambda does (handlers.settings.Settings.publish_mode).
    # With the journal, waiting adds no guarantee here (the broker's log is in memory; the relay
    # sends whatever it did not acknowledge), only latency, and it caps one API process at the
    # broker's pace: 300 answers/s against 672 (docs/benchmarks-http.md, overload)
    publish_mode: str = "background"
    # admission control of each API process (local_stack.api.Admission): every request's deadline
    # from its arrival, and the most requests admitted and not finished; beyond either, a 503
    request_deadline_ms: float = 250.0
    api_max_queue: int = 128
    # The API process hands the GIL over every 0.5 ms instead of 5: a request thread that wakes
    # from a Redis or Kafka round trip waits less behind the other threads (docs/benchmarks-http.md)
    gil_switch_interval_ms: float = 0.5
    # before the API starts, make the local S3 serve a champion (local_stack.champion): the one
    # restored there, else one of these local model stores', else the stack's MLflow alias's, else
    # (train_champion) a quick model trained now. Off by default: tests publish their own.
    champion: bool = False
    champion_model_stores: tuple[Path, ...] = ()
    train_champion: bool = True

    @classmethod
    def on_free_ports(cls, run_dir: Path, **settings: Any) -> "StackConfig":
        """A stack on free loopback ports, without MLflow (tests, benchmarks, a second stack)."""
        ports = {name: free_port() for name in ("api_port", "redis_port", "kafka_port", "s3_port")}
        return cls(run_dir=run_dir, **{"with_mlflow": False, **ports, **settings})

    @property
    def model_store_uri(self) -> str:
        return f"s3://{MODELS_BUCKET}/models"

    @property
    def dead_letter_uri(self) -> str:
        return f"s3://{DEAD_LETTER_BUCKET}/updater"

    @property
    def archiver_dead_letter_uri(self) -> str:
        """Where the archiver's poller parks a batch that failed every retry (its records)."""
        return f"s3://{DEAD_LETTER_BUCKET}/archiver"

    @property
    def lake_uri(self) -> str:
        """The event lake in the local S3 (the deployed stack's is ``s3://<lake bucket>/archive``)."""
        return f"s3://{LAKE_BUCKET}/archive"

    @property
    def journal_dir(self) -> Path:
        """The producers' journal (``fraud_adapters.journal``), when ``durable_broker``."""
        return self.run_dir / "journal"

    @property
    def s3_snapshot_dir(self) -> Path:
        return self.run_dir / "s3"

    @property
    def s3_data_dir(self) -> Path:
        """Where the local S3 server keeps its buckets (``local_stack.s3_server``)."""
        return self.run_dir / "s3-server"

    @property
    def kafka(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        """``redis://`` or ``rediss://`` (then ``ssl_ca_certs`` in the query: redis-py reads it)."""
        auth = f":{quote(self.redis_password, safe='')}@" if self.redis_password else ""
        if self.redis_tls is None:
            return f"redis://{auth}127.0.0.1:{self.redis_port}/0"
        ca = quote(str(self.redis_tls.ca_file.resolve()), safe="/")
        return f"rediss://{auth}127.0.0.1:{self.redis_port}/0?ssl_ca_certs={ca}"


def cdk_updater_settings() -> tuple[int, float]:
    """Batch size and batching window of the deployed updater (cdk.json, stage dev)."""
    return cdk_consumer_settings("updater")


def _cdk_dev_stage() -> "StageConfig | None":
    """cdk.json's dev stage, whose settings the local stack mirrors; None when it cannot be read."""
    try:
        from cdk_app.config import CONTEXT_KEY, load_stage_configs, read_cdk_json_context

        return load_stage_configs(read_cdk_json_context().get(CONTEXT_KEY), "dev")[0]
    except Exception as exc:  # cdk.json missing or invalid: the callers' defaults
        log.debug("cdk.json not read (%s); using defaults", exc)
        return None


def cdk_updater_redis_timeout_ms() -> int:
    """The deployed updater's Redis timeout (cdk.json, stage dev; without it the updater's own
    default)."""
    stage = _cdk_dev_stage()
    if stage is None:
        from handlers.update_features import UPDATER_REDIS_TIMEOUT_MS

        return UPDATER_REDIS_TIMEOUT_MS
    return stage.updater.redis_timeout_ms


def cdk_consumer_settings(part: str) -> tuple[int, float]:
    """Batch size and batching window of a deployed stream consumer, ``updater`` or ``archiver``
    (cdk.json, stage dev; without it Lambda's MSK defaults)."""
    stage = _cdk_dev_stage()
    if stage is None:
        return 100, 0.5
    consumer = stage.archiver if part == "archiver" else stage.updater
    return consumer.batch_size, float(consumer.max_batching_window_seconds)


def updater_progress(bootstrap: str) -> ConsumerProgress:
    """Records of both topics the updater's consumer group has handled since now (a replay's
    guard, ``local_stack.replay``), on the broker at ``bootstrap``."""
    return ConsumerProgress(bootstrap, UPDATER_GROUP, (TRANSACTIONS_TOPIC, LABELS_TOPIC))


def handler_environment(cfg: StackConfig) -> dict[str, str]:
    """The Lambda environment of the scorer and the updater, pointed at the local parts (no
    ``LAKE_URI``: the archiver writes the lake, ``archiver_environment``)."""
    return {
        "REDIS_URL": cfg.redis_url,
        "REDIS_TIMEOUT_MS": str(cfg.redis_timeout_ms),
        # the updater's own timeout, the deployed updater's (its process has this environment)
        "UPDATER_REDIS_TIMEOUT_MS": str(cdk_updater_redis_timeout_ms()),
        "MODEL_STORE_URI": cfg.model_store_uri,
        "MODEL_POINTER_TTL_SECONDS": str(cfg.model_pointer_ttl_seconds),
        "DEAD_LETTER_URI": cfg.dead_letter_uri,
        "STREAM_KIND": "kafka",
        "PUBLISH_MODE": cfg.publish_mode,
        "KAFKA_BOOTSTRAP_SERVERS": cfg.kafka,
        "TRANSACTIONS_TOPIC": TRANSACTIONS_TOPIC,
        "LABELS_TOPIC": LABELS_TOPIC,
        "LABEL_DELAY_SECONDS": str(cfg.label_delay_seconds),
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{cfg.s3_port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": LOCAL_DUMMY_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": os.environ.get("POWERTOOLS_LOG_LEVEL", "WARNING"),
        "POWERTOOLS_SERVICE_NAME": "fraudsys",
        **journal_environment(cfg),
    }


def journal_environment(cfg: StackConfig) -> dict[str, str]:
    """Where the stack's producers journal their records (``durable_broker``), else nothing."""
    if not cfg.durable_broker:
        return {}
    return {
        "PUBLISH_JOURNAL_DIR": str(cfg.journal_dir.resolve()),
        "PUBLISH_JOURNAL_FSYNC": str(cfg.journal_fsync).lower(),
    }


def archiver_environment(cfg: StackConfig) -> dict[str, str]:
    """The archiver's Lambda environment: the lake, its own dead-letter prefix, the card hash key
    and topics of the others (it uses no Redis; ``REDIS_URL`` is there but never opened)."""
    return {
        **handler_environment(cfg),
        "LAKE_URI": cfg.lake_uri,
        "DEAD_LETTER_URI": cfg.archiver_dead_letter_uri,
    }


def create_topics(bootstrap: str, partitions: int) -> None:
    """Create the topics that do not exist yet (a durable broker keeps them across restarts)."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        existing = set(admin.list_topics())
        for topic in (TRANSACTIONS_TOPIC, LABELS_TOPIC):
            if topic in existing:
                continue
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def create_buckets() -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"])
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in PERSISTENT_BUCKETS:
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)


@dataclass
class LocalStack:
    cfg: StackConfig = field(default_factory=StackConfig)
    supervisor: Supervisor = field(default_factory=Supervisor)
    api: LocalApi | None = None
    workers: ApiWorkers | None = None
    saved_switch_interval: float | None = None
    froze: bool = False
    poller: PollerWorker | None = None  # the updater's
    archiver: PollerWorker | None = None
    relay: JournalRelay | None = None
    saved_environment: dict[str, str | None] = field(default_factory=dict)
    s3_restored: bool = False
    champion_report: "ChampionReport | None" = None
    store_report: str = ""  # the feature store at `up` (its fill marker; local_stack.stack.store_state)
    on_step: Callable[[str], None] | None = None  # progress lines (the CLI prints them)

    def _set_environment(self, env: dict[str, str], unset: tuple[str, ...] = ()) -> None:
        """The handlers read their settings from the process environment; ``down`` restores it."""
        for key in (*env, *unset):
            self.saved_environment.setdefault(key, os.environ.get(key))
        for key, value in env.items():
            os.environ[key] = value
        for key in unset:
            os.environ.pop(key, None)

    def _restore_environment(self) -> None:
        for key, value in self.saved_environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self.saved_environment.clear()

    def up(self) -> "LocalStack":
        cfg = self.cfg
        warnings.filterwarnings("ignore", message="No application metrics to publish")
        logs = cfg.run_dir / "logs"
        try:
            # the processes started from here inherit this environment: no LAKE_URI, even one of
            # the shell's (the updater would archive too); the archiver's process has it
            self._set_environment(handler_environment(cfg), unset=("LAKE_URI",))
            self._set_environment({UPDATER_METRICS_ENV: str(self.updater_metrics)})  # GET /metrics
            sup = self.supervisor
            sup.add(self._start_redis(), "redis", self._start_redis, self._after_redis_restart)
            new_s3 = not cfg.s3_data_dir.exists()
            sup.add(self._start_s3(), "s3", self._start_s3, self._after_s3_restart)
            if new_s3:  # a run folder of a stack from before the S3 on disk: its last `down`'s copy
                restored = s3_snapshot.restore(self._s3_endpoint, cfg.s3_snapshot_dir)
                if restored:
                    log.info("local S3: %d objects restored from %s", restored, cfg.s3_snapshot_dir)
            self.s3_restored = True
            create_buckets()
            sup.add(self._start_kafka(), "kafka", self._start_kafka, self._after_kafka_restart)
            if cfg.with_mlflow:
                sup.add(
                    start_mlflow(cfg.mlflow_port, cfg.run_dir / "mlflow", logs),
                    "mlflow",
                    lambda: start_mlflow(cfg.mlflow_port, cfg.run_dir / "mlflow", logs),
                )
            create_topics(cfg.kafka, cfg.partitions)
            if cfg.durable_broker:  # first: what the journal kept of an earlier run is sent again
                cfg.journal_dir.mkdir(parents=True, exist_ok=True)
                topics, groups = (TRANSACTIONS_TOPIC, LABELS_TOPIC), (UPDATER_GROUP, ARCHIVER_GROUP)
                self.relay = JournalRelay(
                    cfg.journal_dir,
                    cfg.kafka,
                    topics,
                    groups,
                    roll_records=cfg.broker_roll_records,
                    roll=lambda: self.restart("kafka"),
                ).start()
            self.store_report = store_state(cfg)
            if cfg.champion:
                self.champion_report = ensure_champion(
                    cfg.model_store_uri,
                    cfg.label_delay_seconds,
                    cfg.champion_model_stores,
                    self.endpoints().get("mlflow"),
                    cfg.run_dir / "quickstart",
                    cfg.train_champion,
                    step=self.on_step or log.info,
                )
            self._reset_handlers()
            self.saved_switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(cfg.gil_switch_interval_ms / 1000)
            if cfg.api_workers > 1:
                self.workers = ApiWorkers(
                    cfg.api_port or free_port(),
                    cfg.api_workers,
                    handler_environment(cfg),
                    cfg.run_dir / "metrics",
                    cfg.gil_switch_interval_ms / 1000,
                    cfg.request_deadline_ms,
                    cfg.api_max_queue,
                    cfg.api_instance_process,
                ).start()
            else:
                # like each worker: warm (imports, champion, Redis, Kafka producer) before binding,
                # so the first request costs what the next ones do
                instance = (
                    InstanceProcess(handler_environment(cfg), cfg.gil_switch_interval_ms / 1000)
                    if cfg.api_instance_process
                    else None
                )
                self.api = LocalApi(
                    port=cfg.api_port,
                    bind=False,
                    deadline_ms=cfg.request_deadline_ms,
                    max_queue=cfg.api_max_queue,
                    instance=instance,
                )
                self.api.warm()
                self.api.bind()
                self.api.start()
            # the consumers' processes: started again after an exit by the supervisor's rule
            # (given up after MAX_RESTARTS exits in RESTART_WINDOW_SECONDS, as a service is); the
            # new process resumes from its group's committed offsets (the handlers are idempotent)
            for consumer in (self._start_poller(), self._start_archiver()):
                self.supervisor.add_process(consumer.name, consumer, consumer.start)
            self.supervisor.watch()
            freeze_heap()  # what this process holds now is never garbage: no full-collection stalls
            self.froze = True
        except BaseException:
            self.down()
            raise
        return self

    @property
    def services(self) -> dict[str, Service]:
        """The service processes the stack runs now, by name (a restart replaces one)."""
        return self.supervisor.services

    def _start_redis(self) -> Service:
        cfg = self.cfg
        return start_redis(
            cfg.redis_port,
            cfg.run_dir / "redis",
            cfg.run_dir / "logs",
            cfg.redis_password,
            cfg.redis_tls,
            cfg.redis_appendonly,
        )

    def _after_redis_restart(self) -> None:
        """The handlers' clients reconnect by themselves; the store may have lost its data."""
        log.warning("redis: feature store %s", store_state(self.cfg))

    def _after_kafka_restart(self) -> None:
        """The topics, before anyone produces (auto-creation fails at times); the producers and
        the poller reconnect by themselves."""
        create_topics(self.cfg.kafka, self.cfg.partitions)

    def _start_s3(self) -> Service:
        return start_s3(self.cfg.s3_port, self.cfg.s3_data_dir, self.cfg.run_dir / "logs")

    def _after_s3_restart(self) -> None:
        """The restarted local S3 serves what it had acknowledged (kept on disk); the broker, the
        handlers and the archiver retry what failed while it was down."""
        create_buckets()
        log.warning("local S3 restarted with its buckets from %s", self.cfg.s3_data_dir)

    @property
    def _s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.cfg.s3_port}"

    def _save_s3(self) -> None:
        """Copy the local S3's buckets (the lake, the models, the dead letters) to plain files in
        ``s3_snapshot_dir``, to read the lake from there. Only once the S3 was set up: a stack that
        failed before would overwrite the copy."""
        if not self.s3_restored or not port_open(self.cfg.s3_port):
            return
        try:
            saved = s3_snapshot.save(self._s3_endpoint, self.cfg.s3_snapshot_dir, PERSISTENT_BUCKETS)
            log.info("local S3: %d objects saved to %s", saved, self.cfg.s3_snapshot_dir)
        except Exception as exc:  # the stack still goes down; the previous snapshot stays whole
            log.error("local S3 not saved to %s: %s", self.cfg.s3_snapshot_dir, exc)
        self.s3_restored = False

    def _start_kafka(self) -> Service:
        """The broker, in memory, with a new cluster id: each start is a new incarnation."""
        return start_kafka(self.cfg.kafka_port, self.cfg.run_dir / "logs")

    def _poller_config(self, part: str, group_id: str) -> PollerConfig:
        batch, window = cdk_consumer_settings(part)
        # the archiver's batches fail when the local S3 is down: 8 tries (backoff 0.5 s to 10 s,
        # 45.5 s) outlast its restart (4-17 s on a busy 2-core machine), so a batch is archived
        # late rather than dead-lettered (with 5, 15.5 s, a chaos run dead-lettered 100 events)
        retries = max(self.cfg.max_retries, 8) if part == "archiver" else self.cfg.max_retries
        return PollerConfig(
            bootstrap_servers=self.cfg.kafka,
            topics=(TRANSACTIONS_TOPIC, LABELS_TOPIC),
            group_id=group_id,
            batch_size=self.cfg.batch_size or batch,
            batching_window=self.cfg.batching_window if self.cfg.batching_window is not None else window,
            max_retries=retries,
            session_timeout_ms=self.cfg.session_timeout_ms,
            name=part,
        )

    @property
    def updater_metrics(self) -> Path:
        """The file the updater's process keeps its poller metrics in, for ``GET /metrics``."""
        return self.cfg.run_dir / "updater-metrics.prom"

    def _start_poller(self) -> PollerWorker:
        """The updater in its own process, as on AWS (``local_stack.workers``)."""
        cfg = self._poller_config("updater", UPDATER_GROUP)
        self.updater_metrics.unlink(missing_ok=True)  # an earlier run's
        env = handler_environment(self.cfg)
        self.poller = PollerWorker(cfg, env, "handlers.update_features", metrics=self.updater_metrics)
        return self.poller.start()

    def _start_archiver(self) -> PollerWorker:
        """The archiver in its own process, its own consumer group on the same topics."""
        cfg = self._poller_config("archiver", ARCHIVER_GROUP)
        env = archiver_environment(self.cfg)
        self.archiver = PollerWorker(cfg, env, "handlers.archive_events", warm=("pyarrow.parquet",))
        return self.archiver.start()

    @staticmethod
    def _reset_handlers() -> None:
        from handlers import bootstrap, predict

        bootstrap.reset()
        predict.scorer.cache_clear()

    def restart(self, name: str) -> None:
        """Stop and start one service on the same port (fault drills), and what follows its restart
        (topics, buckets)."""
        self.supervisor.hold(name)
        self.supervisor.resume(name)

    @property
    def api_url(self) -> str:
        if self.workers is not None:
            return f"http://127.0.0.1:{self.workers.port}"
        return self.api.url if self.api else ""

    def check(self) -> None:
        """Raise when a service or a consumer's process (the updater's, the archiver's) was given
        up on (it kept exiting: ``Supervisor``) or an API worker died; one that exited once is
        restarted by the supervisor."""
        dead = self.supervisor.check() + (self.workers.dead() if self.workers else [])
        if dead:
            raise ServiceError(
                f"local services down: {', '.join(dead)} (logs in {self.cfg.run_dir / 'logs'})"
            )

    def dead_letters(self) -> dict[str, int]:
        """Dead letters in the local S3 per reason (the updater's and the archiver's): what the
        stream's consumers refused, one record each (a poison batch's records share a reason)."""
        import json

        s3 = s3_snapshot.client(self._s3_endpoint)
        out: dict[str, int] = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=DEAD_LETTER_BUCKET):
            for item in page.get("Contents", []):
                body = s3.get_object(Bucket=DEAD_LETTER_BUCKET, Key=item["Key"])["Body"].read()
                reason = str(json.loads(body).get("reason", "?"))
                out[reason] = out.get(reason, 0) + 1
        return out

    def replay_progress(self) -> ConsumerProgress:
        """How many records the updater has handled of those published from now on (a replay's
        guard: ``local_stack.replay``)."""
        return updater_progress(self.cfg.kafka)

    def endpoints(self) -> dict[str, str]:
        out = {
            "api": self.api_url,
            "redis": f"redis://127.0.0.1:{self.cfg.redis_port}",
            "kafka": self.cfg.kafka,
            "s3": f"http://127.0.0.1:{self.cfg.s3_port}",
        }
        if self.cfg.with_mlflow:
            out["mlflow"] = f"http://127.0.0.1:{self.cfg.mlflow_port}"
        return out

    def down(self) -> None:
        # first the consumers, held (stopped, never started again) while their broker, Redis and
        # S3 still run: each finishes its batch; the archiver's last one lands in the lake before
        # the S3 is saved
        for consumer in (self.poller, self.archiver):
            if consumer is None:
                continue
            if consumer.name in self.supervisor.entries:
                self.supervisor.hold(consumer.name)
            else:  # up failed between its start and its supervision
                consumer.stop()
        self.poller = self.archiver = None
        if self.api is not None:
            self.api.stop()
            self.api = None
        if self.workers is not None:
            self.workers.stop()
            self.workers = None
        from handlers import bootstrap

        try:
            bootstrap.publisher().close()
        except Exception as exc:
            log.debug("publisher close: %s", exc)
        if self.relay is not None:  # what it has not sent yet stays in the journal: the next `up`
            self.relay.stop()
            self.relay = None
        self._save_s3()
        self.supervisor.stop()
        self._restore_environment()
        if self.saved_switch_interval is not None:
            sys.setswitchinterval(self.saved_switch_interval)
            self.saved_switch_interval = None
        if self.froze:
            gc.unfreeze()
            self.froze = False
        self._reset_handlers()


def store_state(cfg: StackConfig) -> str:
    """The feature store's fill marker (``fraud_adapters.store_marker``) as the stack finds it; a
    new system's store (Redis empty, and the lake too: nothing to backfill) is marked filled."""
    import boto3
    import redis

    from fraud_adapters.store_marker import EMPTY, StoreMarker

    client = redis.Redis.from_url(cfg.redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        marker = StoreMarker(client)
        filled = marker.read()
        if filled is not None:
            return f"filled (by {filled.by})"
        lake = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{cfg.s3_port}")
        lake_empty = not lake.list_objects_v2(Bucket=LAKE_BUCKET, Prefix="archive/", MaxKeys=1).get(
            "KeyCount"
        )
        if client.dbsize() == 0 and lake_empty:
            marker.mark("local stack (a new store: nothing in the lake to backfill)")
            return "new (nothing in the lake to backfill)"
    finally:
        client.close()
    message = (
        f"{EMPTY.replace('fraudsys backfill', 'uv run fraudsys backfill --local')}: answers are degraded"
    )
    log.warning("feature store %s", message)
    return message
