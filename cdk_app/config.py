"""Stage configuration: one frozen, validated model per deployment stage.

The values live in ``cdk.json`` under ``context.fraudsys.stages.<name>``; anything a stage does not set
falls back to the defaults below. ``load_stage_configs`` turns that context into ``StageConfig``
objects and fails synth early (with pydantic's message) on a typo or an inconsistent value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTEXT_KEY = "fraudsys"
STAGE_SELECT_KEY = "fraudsys:stages"
#: ``-c fraudsys:redis_url=redis://...``: the Redis of every ``platform: localstack`` stage
REDIS_URL_KEY = "fraudsys:redis_url"
#: ``-c fraudsys:bundle_layers=true``: ``LocalStackConfig.bundle_layers`` of those stages
BUNDLE_LAYERS_KEY = "fraudsys:bundle_layers"

StreamKind = Literal["msk", "kinesis"]
#: ``aws``: everything of docs/infra.md; ``localstack``: the same app for LocalStack's community
#: edition, which lacks some services (``StageConfig.platform``, docs/localstack.md)
Platform = Literal["aws", "localstack"]
Architecture = Literal["x86_64", "arm64"]
StartingPosition = Literal["LATEST", "TRIM_HORIZON"]

PositiveInt = Annotated[int, Field(gt=0)]
LambdaMemory = Annotated[int, Field(ge=128, le=10240)]
RetentionDays = Literal[
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653
]

_SCHEDULE = re.compile(r"^(cron\(.+\)|rate\(\d+ (minute|minutes|hour|hours|day|days)\))$")
_AZ = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class VpcConfig(_Frozen):
    cidr: str = "10.40.0.0/16"
    max_azs: Annotated[int, Field(ge=2, le=3)] = 2
    nat_gateways: Annotated[int, Field(ge=1, le=3)] = 1
    # Explicit AZ names keep synth offline when account and region are set (no context lookup).
    availability_zones: tuple[str, ...] | None = None
    flow_log_retention_days: RetentionDays = 30
    #: Interface endpoints (Secrets Manager, CloudWatch Logs, Kinesis) in every app subnet: traffic
    #: to those APIs stays in the VPC. Off: it goes through the NAT gateway (dev: ~$44/month saved,
    #: docs/infra.md's cost table). The S3 gateway endpoint is free and always there.
    interface_endpoints: bool = True

    @model_validator(mode="after")
    def _azs_match(self) -> VpcConfig:
        if self.availability_zones is not None:
            bad = [az for az in self.availability_zones if not _AZ.match(az)]
            if bad:
                raise ValueError(f"not availability zone names: {bad}")
            if len(self.availability_zones) != self.max_azs:
                raise ValueError("availability_zones must list exactly max_azs zones")
        return self


class RedisConfig(_Frozen):
    """ElastiCache Redis with cluster mode enabled: ``num_shards`` node groups (hash slots split
    evenly), each a primary plus ``replicas_per_shard`` replicas in other AZs."""

    node_type: str = "cache.t4g.small"
    engine_version: Annotated[str, Field(pattern=r"^\d+\.\d+(\.\d+)?$")] = "7.1"
    # Not the default 6379 (cdk-nag AwsSolutions-AEC5); REDIS_URL carries the port.
    port: Annotated[int, Field(ge=1024, le=65535)] = 6380
    # Shards (node groups). Adding shards later is an online resharding (docs/infra.md).
    num_shards: Annotated[int, Field(ge=1, le=500)] = 1
    # Replicas per shard. 0 saves money in a throwaway stage but turns off Multi-AZ: a lost primary
    # loses its slots' data until it is replaced. 1 or more: Multi-AZ with automatic failover.
    replicas_per_shard: Annotated[int, Field(ge=0, le=5)] = 1
    snapshot_retention_days: Annotated[int, Field(ge=0, le=35)] = 1
    slow_log_retention_days: RetentionDays = 14

    @model_validator(mode="after")
    def _engine(self) -> RedisConfig:
        if int(self.engine_version.split(".")[0]) < 7:
            raise ValueError("engine_version must be 7.x or later (the cluster-mode parameter group redis7)")
        return self

    @property
    def multi_az(self) -> bool:
        """Multi-AZ needs a replica in another AZ to fail over to."""
        return self.replicas_per_shard >= 1

    @property
    def parameter_family(self) -> str:
        """The parameter group family of the engine (the construct's group: cluster mode on, the
        feature store's server settings)."""
        return f"redis{self.engine_version.split('.')[0]}"

    @property
    def node_count(self) -> int:
        return self.num_shards * (1 + self.replicas_per_shard)


class MskConfig(_Frozen):
    kafka_version: str = "3.6.0"
    broker_instance_type: str = "kafka.t3.small"
    # Must be a multiple of the number of AZs (one broker per client subnet at least).
    broker_count: PositiveInt = 2
    broker_volume_gib: Annotated[int, Field(ge=1, le=16384)] = 100
    partitions: PositiveInt = 6
    log_retention_days: RetentionDays = 14


class KinesisConfig(_Frozen):
    # None: on-demand capacity mode; a number: provisioned with that many shards.
    shard_count: PositiveInt | None = None
    retention_hours: Annotated[int, Field(ge=24, le=8760)] = 24


class ScorerConfig(_Frozen):
    memory_mb: LambdaMemory = 1024
    #: at least 4 s: a failed publish waits up to 2 s for the stream, then the outbox write has
    #: 1.5 s (handlers.predict); shorter, every publish would get less than its 2 s
    timeout_seconds: Annotated[int, Field(ge=4, le=29)] = 5
    reserved_concurrency: PositiveInt | None = None
    provisioned_concurrency: Annotated[int, Field(ge=0)] = 0
    redis_timeout_ms: PositiveInt = 50
    model_pointer_ttl_seconds: PositiveInt = 30
    reasons_method: Literal["shap", "approx"] = "shap"
    log_retention_days: RetentionDays = 30
    #: Requests per second one scorer instance answers (it takes one invocation at a time):
    #: 1000 ms / the invocation's time. The planning figure and how to measure it: docs/infra.md.
    instance_capacity_rps: PositiveInt = 50
    #: API Gateway throttling (stage and usage plan). Unset: derived from the scorer's concurrency
    #: N and ``instance_capacity_rps`` C (``StageConfig.scorer_throttle``): burst N, rate N x C / 2.
    #: Set: at most those ceilings (burst <= N, rate <= N x C), checked at synth.
    throttle_rate_limit: PositiveInt | None = None
    throttle_burst_limit: PositiveInt | None = None
    usage_plan_quota_per_day: PositiveInt | None = None

    @model_validator(mode="after")
    def _concurrency(self) -> ScorerConfig:
        if self.reserved_concurrency is not None and self.provisioned_concurrency > self.reserved_concurrency:
            raise ValueError("provisioned_concurrency cannot exceed reserved_concurrency")
        return self


class StreamConsumerConfig(_Frozen):
    """A function fed by the stream through event source mappings: the updater or the archiver."""

    memory_mb: LambdaMemory = 512
    timeout_seconds: Annotated[int, Field(ge=1, le=900)] = 60
    reserved_concurrency: PositiveInt | None = None
    log_retention_days: RetentionDays = 30
    batch_size: Annotated[int, Field(ge=1, le=10000)] = 100
    max_batching_window_seconds: Annotated[int, Field(ge=0, le=300)] = 1
    starting_position: StartingPosition = "TRIM_HORIZON"
    retry_attempts: Annotated[int, Field(ge=0, le=10000)] = 5
    max_record_age_seconds: Annotated[int, Field(ge=60, le=604800)] = 86400
    # Kinesis only: concurrent batches per shard (ordering is per partition key = card).
    parallelization_factor: Annotated[int, Field(ge=1, le=10)] = 1
    # MSK only: provisioned event pollers (needed for the Kafka error-handling controls).
    min_pollers: Annotated[int, Field(ge=1, le=200)] = 1
    max_pollers: Annotated[int, Field(ge=1, le=2000)] = 2

    @model_validator(mode="after")
    def _pollers(self) -> StreamConsumerConfig:
        if self.min_pollers > self.max_pollers:
            raise ValueError("min_pollers cannot exceed max_pollers")
        if self.timeout_seconds < self.max_batching_window_seconds:
            raise ValueError("timeout_seconds must not be shorter than the batching window")
        return self


class UpdaterConfig(StreamConsumerConfig):
    """The feature updater: stream -> Redis."""

    redis_timeout_ms: PositiveInt = 1000


class ArchiverConfig(StreamConsumerConfig):
    """The archiver: stream -> the event lake, a consumer of its own (docs/infra.md). Larger
    batches than the updater's by default: fewer, larger Parquet objects and PUTs; the lake is
    read by the training job and the backfill, not by the scorer, so seconds of delay cost nothing."""

    batch_size: Annotated[int, Field(ge=1, le=10000)] = 1000
    max_batching_window_seconds: Annotated[int, Field(ge=0, le=300)] = 10


class OutboxConfig(_Frozen):
    """The publish outbox (SQS) and its relay: a scored transaction whose publish failed waits in
    the queue until the relay sends it to the stream (docs/architecture.md, "Stream events")."""

    memory_mb: LambdaMemory = 256
    timeout_seconds: Annotated[int, Field(ge=1, le=900)] = 30
    reserved_concurrency: PositiveInt | None = None
    log_retention_days: RetentionDays = 30
    batch_size: Annotated[int, Field(ge=1, le=100)] = 10
    max_batching_window_seconds: Annotated[int, Field(ge=0, le=300)] = 1
    #: concurrent relay invocations at most (the event source's scaling limit): a stream coming
    #: back after an outage gets the backlog at this pace, not all at once
    max_concurrency: Annotated[int, Field(ge=2, le=1000)] = 2
    #: receives of one message before SQS moves it to the outbox's dead-letter queue
    max_receive_count: Annotated[int, Field(ge=1, le=1000)] = 10
    #: how long a message may wait in the outbox (and in its DLQ): SQS's maximum
    retention_days: Annotated[int, Field(ge=1, le=14)] = 14

    @model_validator(mode="after")
    def _window(self) -> OutboxConfig:
        if self.batch_size > 10 and self.max_batching_window_seconds < 1:
            raise ValueError("an SQS batch of more than 10 messages needs a batching window of 1 s or more")
        return self


class LakeConfig(_Frozen):
    """The event archive's bucket: storage classes by object age, and how long it is kept."""

    # S3 moves objects to Standard-IA no earlier than 30 days after creation
    infrequent_access_after_days: Annotated[int, Field(ge=30)] = 30
    glacier_ir_after_days: PositiveInt | None = 90
    # None: kept for good (the lake is the source of truth); a number: deleted at that age
    expire_after_days: PositiveInt | None = None

    @model_validator(mode="after")
    def _ordered(self) -> LakeConfig:
        last = self.glacier_ir_after_days or self.infrequent_access_after_days
        if (
            self.glacier_ir_after_days is not None
            and self.glacier_ir_after_days <= self.infrequent_access_after_days
        ):
            raise ValueError("glacier_ir_after_days must come after infrequent_access_after_days")
        if self.expire_after_days is not None and self.expire_after_days <= last:
            raise ValueError("expire_after_days must come after the last storage-class transition")
        return self


class TrainingConfig(_Frozen):
    schedule: str = "cron(0 3 ? * MON *)"
    cpu: Literal[256, 512, 1024, 2048, 4096, 8192, 16384] = 2048
    memory_mib: Annotated[int, Field(ge=512, le=122880)] = 8192
    ephemeral_storage_gib: Annotated[int, Field(ge=21, le=200)] = 50
    log_retention_days: RetentionDays = 90
    #: ``server``: a SageMaker managed MLflow tracking server (billed per hour while it exists);
    #: ``app``: a serverless SageMaker MLflow App (no server-hours: the cheap choice for dev).
    mlflow: Literal["server", "app"] = "server"
    mlflow_server_size: Literal["Small", "Medium", "Large"] = "Small"
    #: the tracking server's MLflow version; None: the major.minor of the client in uv.lock
    #: (``cdk_app.constructs.mlflow.client_mlflow_version``), so client and server agree
    mlflow_version: Annotated[str, Field(pattern=r"^\d+\.\d+$")] | None = None
    # Container arguments after the image's ENTRYPOINT ("fraudsys"): the training CLI command.
    command: tuple[str, ...] = ("pipeline",)

    @model_validator(mode="after")
    def _schedule(self) -> TrainingConfig:
        if not _SCHEDULE.match(self.schedule):
            raise ValueError(f"schedule must be an EventBridge cron(...) or rate(...): {self.schedule}")
        return self


class SparkJobConfig(_Frozen):
    """The feature job on EMR Serverless (``cdk_app.constructs.feature_job``): the Spark step of the
    scheduled retraining. Sizes from the measured rate: docs/infra.md ("The Spark feature job")."""

    #: an EMR Serverless release (Spark 3.5.x on emr-7.x); the job's Python and libraries come from
    #: the environment archive (docs/infra.md), not from the release's image
    release_label: Annotated[str, Field(pattern=r"^emr-\d+\.\d+\.\d+$")] = "emr-7.8.0"
    #: the application's ceiling (all of its running jobs together)
    max_vcpu: Annotated[int, Field(ge=4, le=4000)] = 400
    max_memory_gb: Annotated[int, Field(ge=16, le=24000)] = 3000
    #: executors: cores and memory each (EMR Serverless workers: 4 vCPU with 8-30 GB)
    executor_cores: Literal[1, 2, 4, 8, 16] = 4
    executor_memory_gb: Annotated[int, Field(ge=2, le=120)] = 16
    driver_memory_gb: Annotated[int, Field(ge=2, le=120)] = 16
    #: rows per card / merchant group (``training.spark_features.SparkFeatureConfig.bucket_rows``)
    bucket_rows: PositiveInt = 500_000
    idle_timeout_minutes: Annotated[int, Field(ge=1, le=10080)] = 15
    #: the job's Python environment (``scripts/build_emr_env.sh``), uploaded under the Features
    #: bucket's ``emr/`` prefix
    environment_archive: Annotated[str, Field(pattern=r"^[A-Za-z0-9._/-]+\.tar\.gz$")] = "fraudsys-env.tar.gz"
    #: the training task's share of legitimate rows after the Spark step (``sampling.legit_rate``)
    legit_sample_rate: Annotated[float, Field(gt=0, le=1)] = 1.0
    log_retention_days: RetentionDays = 90
    #: the whole workflow (Spark step and training task) is stopped past this
    timeout_hours: Annotated[int, Field(ge=1, le=48)] = 12


class AlarmConfig(_Frozen):
    scorer_p99_latency_ms: PositiveInt = 150
    api_5xx_per_minute: PositiveInt = 5
    throttles_per_minute: PositiveInt = 1
    updater_errors_per_minute: PositiveInt = 5
    iterator_age_ms: PositiveInt = 60_000
    offset_lag_records: PositiveInt = 10_000
    dead_letters_per_5_minutes: PositiveInt = 1
    #: the publish outbox's oldest message (seconds): the relay is not getting records to the stream
    outbox_oldest_message_seconds: PositiveInt = 900
    #: events refused by the time guard or older than their key's retention, per 5 minutes
    late_or_refused_events_per_5_minutes: PositiveInt = 1
    fraud_rate_percent: Annotated[float, Field(gt=0, le=100)] = 5.0
    min_predictions_for_fraud_rate: PositiveInt = 100
    email: str | None = None


class LocalStackConfig(_Frozen):
    """What a ``platform: localstack`` stage uses instead of what LocalStack's community edition
    lacks: a Redis of its own (no ElastiCache), reached at ``redis_url`` by the functions."""

    #: the compose file's Redis as the host sees it (docker-compose.localstack.yml); the functions
    #: of a LocalStack that runs them as host processes see the same. Lambda containers on the
    #: compose network reach it as redis://redis:6379/0: deploy with ``-c fraudsys:redis_url=...``.
    redis_url: Annotated[str, Field(pattern=r"^rediss?://")] = "redis://127.0.0.1:6390/0"
    #: the layers' packages also inside each function's code asset: LocalStack's community
    #: edition does not mount layers in its Lambda containers (the Docker path, a Pro feature
    #: there); its host executor (localstack_host) applies them. ``-c fraudsys:bundle_layers=true``
    bundle_layers: bool = False


class StageConfig(_Frozen):
    """Everything that differs between deployments of FraudSys."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{1,15}$")]
    account: Annotated[str, Field(pattern=r"^\d{12}$")] | None = None
    region: Annotated[str, Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")] | None = None
    #: ``localstack``: deployed into LocalStack (community) with ``cdklocal deploy``: no VPC (its
    #: Lambdas run outside any), a Redis of its own instead of ElastiCache (``localstack``), no WAF,
    #: no training stack (ECS, SageMaker), and buckets emptied by nobody (no custom resources: the
    #: whole emulator is thrown away). Needs ``stream_kind: kinesis`` (no MSK there).
    platform: Platform = "aws"
    localstack: LocalStackConfig = LocalStackConfig()
    stream_kind: StreamKind = "msk"
    architecture: Architecture = "x86_64"
    service_name: str = "fraudsys"
    model_name: str = "fraudsys"
    label_delay_seconds: Annotated[int, Field(ge=0)] = 604_800
    #: Time guard (fraud_core.timeguard): how far after its receipt an event may be dated, and
    #: how far before its receipt a POST /predict may be: at most the store's out-of-order slack
    #: (fraud_core.spec.HISTORY_SLACK, 1 day), the range in which its windows are exact.
    max_clock_skew_seconds: Annotated[int, Field(ge=0, le=86_400)] = 300
    max_request_age_seconds: Annotated[int, Field(gt=0, le=86_400)] | None = 86_400
    transactions_topic: str = "fraudsys.transactions"
    labels_topic: str = "fraudsys.labels"
    # prod keeps buckets, keys and the Redis snapshot on stack deletion; dev cleans up.
    retain_data: bool = False
    #: API Gateway's CloudWatch role is an account-and-region-wide setting: exactly one stage per
    #: account and region manages it (``true``); the others rely on it (``false``). See docs/infra.md.
    manage_api_gateway_account: bool = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    vpc: VpcConfig = VpcConfig()
    redis: RedisConfig = RedisConfig()
    msk: MskConfig = MskConfig()
    kinesis: KinesisConfig = KinesisConfig()
    scorer: ScorerConfig = ScorerConfig()
    updater: UpdaterConfig = UpdaterConfig()
    archiver: ArchiverConfig = ArchiverConfig()
    outbox: OutboxConfig = OutboxConfig()
    training: TrainingConfig = TrainingConfig()
    spark: SparkJobConfig = SparkJobConfig()
    lake: LakeConfig = LakeConfig()
    alarms: AlarmConfig = AlarmConfig()
    tags: Mapping[str, str] = Field(default_factory=dict)
    #: the account's Lambda concurrent-executions quota in the stage's region (a new account: 10).
    #: Reserved concurrency must leave AWS's minimum unreserved (100, or all of a quota <= 100):
    #: synth fails early instead of the deploy ("decreases account's UnreservedConcurrentExecution
    #: below its minimum value").
    lambda_concurrency_quota: PositiveInt = 1000

    @model_validator(mode="after")
    def _consistent(self) -> StageConfig:
        if self.platform == "localstack" and self.stream_kind != "kinesis":
            raise ValueError(
                "a localstack stage needs stream_kind: kinesis (LocalStack community has no MSK)"
            )
        if self.stream_kind == "msk" and self.msk.broker_count % self.vpc.max_azs != 0:
            raise ValueError("msk.broker_count must be a multiple of vpc.max_azs")
        reserved = sum(
            part.reserved_concurrency or 0 for part in (self.scorer, self.updater, self.archiver, self.outbox)
        )
        quota = self.lambda_concurrency_quota
        if reserved and reserved > quota - min(100, quota):
            raise ValueError(
                f"reserved concurrency {reserved} (scorer, updater, archiver, outbox relay) leaves "
                f"less than AWS's minimum unreserved concurrency of the account's quota {quota}: raise "
                "the quota (lambda_concurrency_quota) or set reserved_concurrency to null"
            )
        if self.account and self.region and self.vpc.availability_zones is None:
            raise ValueError("set vpc.availability_zones when account and region are set (offline synth)")
        n, capacity = self.scorer_concurrency, self.scorer.instance_capacity_rps
        rate, burst = self.scorer.throttle_rate_limit, self.scorer.throttle_burst_limit
        if burst is not None and burst > n:
            raise ValueError(
                f"scorer.throttle_burst_limit {burst} exceeds the scorer's concurrency {n}: requests "
                "beyond it would be throttled by Lambda, which API Gateway answers 500, not 429"
            )
        if rate is not None and rate > n * capacity:
            raise ValueError(
                f"scorer.throttle_rate_limit {rate}/s exceeds what {n} instances of "
                f"{capacity} requests/s answer (scorer.instance_capacity_rps, docs/infra.md)"
            )
        return self

    @property
    def scorer_concurrency(self) -> int:
        """The most scorer instances that can run at once: its reserved concurrency, else the
        account's quota less what the updater reserves (shared with every other function)."""
        if self.scorer.reserved_concurrency is not None:
            return self.scorer.reserved_concurrency
        return max(1, self.lambda_concurrency_quota - (self.updater.reserved_concurrency or 0))

    @property
    def scorer_throttle(self) -> tuple[int, int]:
        """API Gateway's (rate, burst) for the scorer: as set, else derived from the concurrency N
        and the per-instance capacity C: burst N (no more requests at once than instances to take
        them), rate N x C / 2 (half the fleet's capacity: the other half absorbs invocations that
        a slow dependency lengthens, e.g. Redis timeouts)."""
        n, capacity = self.scorer_concurrency, self.scorer.instance_capacity_rps
        rate = self.scorer.throttle_rate_limit or max(1, n * capacity // 2)
        return rate, self.scorer.throttle_burst_limit or n

    @property
    def on_aws(self) -> bool:
        return self.platform == "aws"

    @property
    def prefix(self) -> str:
        """Name prefix for physical names, e.g. ``fraudsys-dev``."""
        return f"fraudsys-{self.name}"


def load_stage_configs(context: Mapping[str, Any] | None, selected: str | None = None) -> list[StageConfig]:
    """Validate ``context['fraudsys']['stages']``; ``selected`` is a comma list of stage names."""
    stages = dict((context or {}).get("stages", {}))
    if not stages:
        raise ValueError(f"cdk.json context '{CONTEXT_KEY}.stages' is empty")
    names = [s.strip() for s in selected.split(",") if s.strip()] if selected else list(stages)
    unknown = sorted(set(names) - set(stages))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; known: {sorted(stages)}")
    configs = [StageConfig.model_validate({"name": name, **stages[name]}) for name in names]
    owners: dict[tuple[str, str], str] = {}
    for config in configs:
        if config.manage_api_gateway_account and config.account and config.region:
            place = (config.account, config.region)
            if place in owners:
                raise ValueError(
                    f"stages {owners[place]} and {config.name} both manage API Gateway's account "
                    f"settings in {place[0]}/{place[1]}: set manage_api_gateway_account: false in one"
                )
            owners[place] = config.name
    return configs


def read_cdk_json_context(path: Path = REPO_ROOT / "cdk.json") -> dict[str, Any]:
    """The ``context`` of cdk.json, so ``python app.py`` sees what ``cdk synth`` sees."""
    data = json.loads(path.read_text(encoding="utf-8"))
    context = data.get("context", {})
    if not isinstance(context, dict):
        raise TypeError("cdk.json 'context' must be an object")
    return context
