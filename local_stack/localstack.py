"""Deploy the serverless stack's local equivalent into LocalStack (or any AWS-compatible endpoint).

``docker compose -f docker-compose.localstack.yml up -d`` starts LocalStack, Redis and Kafka; then
``fraudsys local localstack-deploy`` (or ``deploy(LocalStackConfig())``) creates through boto3:

- S3 buckets for the model store and the dead letters (the same names as ``fraudsys local up``),
- a Kinesis stream (LocalStack community has no MSK event-source mapping, so ``STREAM_KIND=kinesis``),
- an IAM role for both functions, the slim XGBoost layer (``layers/build.py``, x86_64) and the code
  zip of ``lambdas/`` (on LocalStack community, which stores layers but does not mount them when it
  runs a function, the layer's packages are bundled into the code zip as well),
- the scorer (``handlers.predict.handler``) and the feature updater
  (``handlers.update_features.handler``) on python3.13, with the environment of
  docs/architecture.md pointed at the compose services,
- a REST API with ``POST /predict`` and ``GET /health`` (``AWS_PROXY`` to the scorer), deployed to a
  stage,
- a Kinesis event source mapping to the updater with the CDK dev stage's batch size, batching
  window, retries and ``ReportBatchItemFailures``,
- optionally the champion of a local model store folder, published into the models bucket.

Every step looks up what exists first, so running it again updates in place. ``destroy`` removes
it all. Nothing here needs Docker by itself: against a moto server the same calls create the same
resources (moto cannot invoke them without Docker), which is what the always-run tests check.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from local_stack.services import http_request
from local_stack.stack import DEAD_LETTER_BUCKET, LABELS_TOPIC, MODELS_BUCKET, TRANSACTIONS_TOPIC

if TYPE_CHECKING:
    import boto3
    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_s3 import S3Client

    from cdk_app.config import StageConfig

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
LAMBDAS_DIR = REPO_ROOT / "lambdas"
BUNDLE_CACHE = REPO_ROOT / "build" / "localstack"
PRO_EDITIONS = frozenset({"pro", "team", "enterprise", "ultimate"})
DEFAULT_ENDPOINT = "http://localhost:4566"
# Containers that LocalStack starts (the Lambdas) resolve this name and all its subdomains to
# LocalStack itself, so S3 virtual-hosted addressing works from inside a function too.
LAMBDA_AWS_ENDPOINT = "http://localhost.localstack.cloud:4566"
COMPOSE_REDIS_URL = "redis://redis:6379/0"
RUNTIME = "python3.13"
ARCHITECTURE: Literal["x86_64"] = "x86_64"
SCORER_HANDLER = "handlers.predict.handler"
UPDATER_HANDLER = "handlers.update_features.handler"
API_ROUTES = (("/predict", "POST"), ("/health", "GET"))
# Lambda accepts at most 50 MB inline (ZipFile); larger zips go through an artifacts bucket.
INLINE_ZIP_LIMIT = 50 * 1024 * 1024
CODE_EXCLUDE_DIRS = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
CODE_EXCLUDE_SUFFIXES = (".pyc", ".pyo")
CODE_EXCLUDE_NAMES = frozenset({".DS_Store"})
# The emulator's containers start slower than Lambda's: room for a cold start that loads XGBoost.
MIN_SCORER_TIMEOUT_SECONDS = 30
# LocalStack reaches Redis over the compose network, not the VPC: a little more than the 50 ms of AWS.
MIN_SCORER_REDIS_TIMEOUT_MS = 250
LAMBDA_TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ],
}


class LocalStackError(RuntimeError):
    """No endpoint answers, or a resource did not reach a usable state."""


def default_endpoint() -> str:
    """``LOCALSTACK_ENDPOINT``, else ``AWS_ENDPOINT_URL``, else ``http://localhost:4566``."""
    return os.environ.get("LOCALSTACK_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL") or DEFAULT_ENDPOINT


def endpoint_answers(endpoint: str, timeout: float = 2.0) -> bool:
    """Whether anything speaks HTTP at ``endpoint`` (LocalStack, moto, ...): any status counts."""
    try:
        http_request("GET", f"{endpoint.rstrip('/')}/_localstack/health", timeout=timeout)
    except (OSError, ValueError):
        return False
    return True


def localstack_health(endpoint: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """LocalStack's ``/_localstack/health`` document, or None when no LocalStack answers there."""
    try:
        status, body = http_request("GET", f"{endpoint.rstrip('/')}/_localstack/health", timeout=timeout)
        data = json.loads(body) if status == 200 else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "services" in data else None


def dev_stage_config() -> StageConfig:
    """The CDK ``dev`` stage (cdk.json), the source of sizes, timeouts and stream settings."""
    from cdk_app.config import CONTEXT_KEY, StageConfig, load_stage_configs, read_cdk_json_context

    try:
        return load_stage_configs(read_cdk_json_context().get(CONTEXT_KEY), "dev")[0]
    except (OSError, ValueError, KeyError) as exc:  # no cdk.json (installed package): the defaults
        log.warning("cdk.json dev stage not read (%s); using the StageConfig defaults", exc)
        return StageConfig(name="dev", stream_kind="kinesis")


@dataclass(frozen=True)
class LocalStackConfig:
    endpoint: str = field(default_factory=default_endpoint)
    region: str = "us-east-1"
    prefix: str = "fraudsys-local"
    stage_name: str = "local"
    models_bucket: str = MODELS_BUCKET
    dead_letter_bucket: str = DEAD_LETTER_BUCKET
    model_prefix: str = "models"
    dead_letter_prefix: str = "updater"
    # What the Lambdas use, seen from their containers on the compose network.
    redis_url: str = COMPOSE_REDIS_URL
    # HMAC key for card ids in Redis: emulated Lambdas look like AWS, where the dev default is refused.
    card_hash_key: str = "fraudsys-localstack-card-hash-key"
    lambda_aws_endpoint: str = LAMBDA_AWS_ENDPOINT
    # A prebuilt layer zip (tests pass a tiny one); None builds it with layers/build.py.
    layer_zip: Path | None = None
    # LocalStack community stores layers but does not mount them at /opt when it runs a function
    # (that is a Pro feature), so there the layer's packages also go into the code zip.
    # None: bundle when the endpoint is LocalStack and not a Pro edition.
    bundle_layer: bool | None = None
    bundle_cache: Path | None = BUNDLE_CACHE
    # A local model store root whose champion is published into the models bucket.
    model_store: Path | None = None
    model_name: str = "fraudsys"
    model_pointer_ttl_seconds: int = 5
    log_level: str = "INFO"
    wait_timeout: float = 300.0
    access_key: str = "test"  # LocalStack derives the account (000000000000) from it
    secret_key: str = "test"  # noqa: S105 - emulator credentials, not a secret

    @property
    def stream_name(self) -> str:
        return f"{self.prefix}-events"

    @property
    def scorer_name(self) -> str:
        return f"{self.prefix}-scorer"

    @property
    def updater_name(self) -> str:
        return f"{self.prefix}-updater"

    @property
    def layer_name(self) -> str:
        return f"{self.prefix}-xgboost"

    @property
    def role_name(self) -> str:
        return f"{self.prefix}-lambda"

    @property
    def api_name(self) -> str:
        return f"{self.prefix}-scorer"

    @property
    def artifacts_bucket(self) -> str:
        return f"{self.prefix}-artifacts"

    @property
    def model_store_uri(self) -> str:
        return f"s3://{self.models_bucket}/{self.model_prefix}"

    @property
    def dead_letter_uri(self) -> str:
        return f"s3://{self.dead_letter_bucket}/{self.dead_letter_prefix}"


@dataclass(frozen=True)
class Deployment:
    """What ``deploy`` created or updated."""

    endpoint: str
    region: str
    api_id: str
    stage: str
    invoke_url: str
    health_url: str
    scorer_arn: str
    updater_arn: str
    layer_version_arn: str
    role_arn: str
    stream_name: str
    stream_arn: str
    event_source_mapping_uuid: str
    buckets: tuple[str, ...]
    model_store_uri: str
    dead_letter_uri: str
    layer_bundled: bool = False
    champion_version: str | None = None

    def resources(self) -> dict[str, str]:
        return {k: ", ".join(v) if isinstance(v, tuple) else str(v) for k, v in asdict(self).items()}


def api_url(endpoint: str, api_id: str, stage: str, path: str) -> str:
    """LocalStack's path-style URL of a REST API stage (works without DNS tricks)."""
    return f"{endpoint.rstrip('/')}/restapis/{api_id}/{stage}/_user_request_/{path.lstrip('/')}"


def _zip_bytes(root: Path) -> bytes:
    """``root``'s files as a zip with fixed timestamps, so unchanged code has an unchanged hash."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for path in sorted(_code_files(root)):
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def _code_files(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part in CODE_EXCLUDE_DIRS for part in rel.parts):
            continue
        if (
            path.is_file()
            and path.suffix not in CODE_EXCLUDE_SUFFIXES
            and path.name not in CODE_EXCLUDE_NAMES
        ):
            yield path


def code_zip(root: Path = LAMBDAS_DIR) -> bytes:
    """The Lambda code asset: ``lambdas/`` as-is, without caches (handlers import from its root)."""
    return _zip_bytes(root)


def code_sha256(data: bytes) -> str:
    """Lambda's ``CodeSha256``: base64 of the SHA-256 digest."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def bundle_with_layer(code: bytes, layer_zip: Path, cache_dir: Path | None = BUNDLE_CACHE) -> bytes:
    """The code zip plus the layer's ``python/`` tree at the zip root (``/var/task`` is on sys.path).

    For runtimes that do not apply layers (LocalStack community). Cached in ``cache_dir`` by
    content (the layer is ~100 MB unzipped); only the newest bundle is kept."""
    layer = layer_zip.read_bytes()
    key = hashlib.sha256(hashlib.sha256(code).digest() + hashlib.sha256(layer).digest()).hexdigest()[:16]
    cached = cache_dir / f"code-with-layer-{key}.zip" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        return cached.read_bytes()
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as out,
        zipfile.ZipFile(io.BytesIO(code)) as code_archive,
        zipfile.ZipFile(io.BytesIO(layer)) as layer_archive,
    ):
        names = set(code_archive.namelist())
        for info in code_archive.infolist():
            out.writestr(info, code_archive.read(info))
        for info in sorted(layer_archive.infolist(), key=lambda i: i.filename):
            if info.is_dir() or not info.filename.startswith("python/"):
                continue
            name = info.filename.removeprefix("python/")
            if name in names:  # the function's own code wins, as /var/task precedes /opt/python
                continue
            entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = info.external_attr or 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            out.writestr(entry, layer_archive.read(info))
    data = buffer.getvalue()
    if cached is None:
        return data
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        for old in cached.parent.glob("code-with-layer-*.zip"):  # keep only the newest bundle
            old.unlink(missing_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(cached)
    except OSError as exc:  # a read-only checkout: no cache, same result
        log.debug("bundle cache not written: %s", exc)
    return data


def build_layer_zip() -> Path:
    """The slim XGBoost layer for x86_64, built (or reused) by ``layers/build.py``, zipped once."""
    from layers import build

    built = build.build_layer(ARCHITECTURE)
    destination = Path(built.layer_dir).parent / f"xgboost-{ARCHITECTURE}-{built.fingerprint}.zip"
    if not destination.is_file():
        partial = destination.with_suffix(".zip.partial")
        build.zip_layer(built.python_dir, partial)
        partial.replace(destination)
    return destination


def _error_code(exc: Exception) -> str:
    response: Any = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class LocalStackDeployer:
    """Creates or updates (``deploy``) and removes (``destroy``) the local stack at an endpoint."""

    def __init__(
        self,
        cfg: LocalStackConfig | None = None,
        step: Callable[[str], None] | None = None,
        stage: StageConfig | None = None,
    ) -> None:
        """``stage`` (default: the CDK dev stage) sizes the functions and the event source mapping."""
        self.cfg = cfg or LocalStackConfig()
        self.step = step or (lambda message: log.info("%s", message))
        self._session: boto3.Session | None = None
        self._account: str | None = None
        self._stage = stage
        self._clients: dict[str, Any] = {}

    # -- clients --------------------------------------------------------------------------------

    @property
    def session(self) -> boto3.Session:
        if self._session is None:
            import boto3

            self._session = boto3.Session(
                aws_access_key_id=self.cfg.access_key,
                aws_secret_access_key=self.cfg.secret_key,
                region_name=self.cfg.region,
            )
        return self._session

    def _client(self, service: str) -> Any:
        if service not in self._clients:
            from botocore.config import Config

            self._clients[service] = self.session.client(
                service,  # type: ignore[call-overload]
                endpoint_url=self.cfg.endpoint,
                config=Config(
                    retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=120
                ),
            )
        return self._clients[service]

    @property
    def s3(self) -> S3Client:
        client: S3Client = self._client("s3")
        return client

    @property
    def kinesis(self) -> KinesisClient:
        client: KinesisClient = self._client("kinesis")
        return client

    @property
    def stage(self) -> StageConfig:
        if self._stage is None:
            self._stage = dev_stage_config()
        return self._stage

    @property
    def account(self) -> str:
        if self._account is None:
            self._account = str(self._client("sts").get_caller_identity()["Account"])
        return self._account

    def check_endpoint(self) -> None:
        if not endpoint_answers(self.cfg.endpoint):
            raise LocalStackError(
                f"no AWS endpoint answers at {self.cfg.endpoint}: start LocalStack with "
                "`docker compose -f docker-compose.localstack.yml up -d` (see docs/localstack.md) "
                "or pass --endpoint / set LOCALSTACK_ENDPOINT"
            )

    # -- deploy ---------------------------------------------------------------------------------

    def deploy(self) -> Deployment:
        cfg = self.cfg
        self.check_endpoint()
        self.step(f"buckets {cfg.models_bucket}, {cfg.dead_letter_bucket}")
        for bucket in (cfg.models_bucket, cfg.dead_letter_bucket):
            self._ensure_bucket(bucket)
        self.step(f"Kinesis stream {cfg.stream_name}")
        stream_arn = self._ensure_stream()
        self.step(f"IAM role {cfg.role_name}")
        role_arn = self._ensure_role(stream_arn)
        self.step(f"layer {cfg.layer_name}")
        layer_zip = cfg.layer_zip or build_layer_zip()
        layer_arn = self._ensure_layer(layer_zip)
        bundled = self.bundles_layer()
        code = bundle_with_layer(code_zip(), layer_zip, cfg.bundle_cache) if bundled else code_zip()
        self.step(f"functions {cfg.scorer_name}, {cfg.updater_name}")
        stage = self.stage
        scorer_arn = self._ensure_function(
            cfg.scorer_name,
            SCORER_HANDLER,
            "FraudSys scorer (POST /predict, GET /health)",
            code,
            role_arn,
            layer_arn,
            self.scorer_environment(),
            stage.scorer.memory_mb,
            max(stage.scorer.timeout_seconds, MIN_SCORER_TIMEOUT_SECONDS),
        )
        updater_arn = self._ensure_function(
            cfg.updater_name,
            UPDATER_HANDLER,
            "FraudSys feature updater (Kinesis -> Redis)",
            code,
            role_arn,
            layer_arn,
            self.updater_environment(),
            stage.updater.memory_mb,
            stage.updater.timeout_seconds,
        )
        self.step(f"REST API {cfg.api_name} (stage {cfg.stage_name})")
        api_id = self._ensure_api(scorer_arn)
        self.step("Kinesis event source mapping -> updater")
        mapping = self._ensure_event_source_mapping(stream_arn)
        champion = None
        if cfg.model_store is not None:
            self.step(f"champion of {cfg.model_store} -> {cfg.model_store_uri}")
            champion = self.publish_champion(cfg.model_store)
        return Deployment(
            endpoint=cfg.endpoint,
            region=cfg.region,
            api_id=api_id,
            stage=cfg.stage_name,
            invoke_url=api_url(cfg.endpoint, api_id, cfg.stage_name, "predict"),
            health_url=api_url(cfg.endpoint, api_id, cfg.stage_name, "health"),
            scorer_arn=scorer_arn,
            updater_arn=updater_arn,
            layer_version_arn=layer_arn,
            role_arn=role_arn,
            stream_name=cfg.stream_name,
            stream_arn=stream_arn,
            event_source_mapping_uuid=mapping,
            buckets=(cfg.models_bucket, cfg.dead_letter_bucket),
            model_store_uri=cfg.model_store_uri,
            dead_letter_uri=cfg.dead_letter_uri,
            layer_bundled=bundled,
            champion_version=champion,
        )

    def bundles_layer(self) -> bool:
        """Whether the layer's packages go into the code zip (see ``LocalStackConfig.bundle_layer``)."""
        if self.cfg.bundle_layer is not None:
            return self.cfg.bundle_layer
        health = localstack_health(self.cfg.endpoint)
        if health is None:  # not LocalStack (moto, AWS): layers are what they are
            return False
        edition = str(health.get("edition", "")).lower()
        bundle = edition not in PRO_EDITIONS
        if bundle:
            self.step(f"LocalStack {edition or 'edition unknown'}: the layer is bundled into the code zip")
        return bundle

    def _common_environment(self) -> dict[str, str]:
        cfg, stage = self.cfg, self.stage
        return {
            "REDIS_URL": cfg.redis_url,
            "CARD_HASH_KEY": cfg.card_hash_key,
            "TRANSACTIONS_TOPIC": TRANSACTIONS_TOPIC,
            "LABELS_TOPIC": LABELS_TOPIC,
            "LABEL_DELAY_SECONDS": str(stage.label_delay_seconds),
            # Inside LocalStack; the adapters read the per-service variables, boto3 the generic one.
            "AWS_ENDPOINT_URL": cfg.lambda_aws_endpoint,
            "AWS_ENDPOINT_URL_S3": cfg.lambda_aws_endpoint,
            "AWS_ENDPOINT_URL_KINESIS": cfg.lambda_aws_endpoint,
            "POWERTOOLS_SERVICE_NAME": stage.service_name,
            "POWERTOOLS_METRICS_NAMESPACE": "FraudSys",
            "POWERTOOLS_LOG_LEVEL": cfg.log_level,
            "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray daemon next to the emulator
        }

    def scorer_environment(self) -> dict[str, str]:
        cfg, stage = self.cfg, self.stage
        return {
            **self._common_environment(),
            "REDIS_TIMEOUT_MS": str(max(stage.scorer.redis_timeout_ms, MIN_SCORER_REDIS_TIMEOUT_MS)),
            "MODEL_STORE_URI": cfg.model_store_uri,
            "MODEL_NAME": cfg.model_name,
            "MODEL_POINTER_TTL_SECONDS": str(cfg.model_pointer_ttl_seconds),
            "STREAM_KIND": "kinesis",
            "KINESIS_STREAM_NAME": cfg.stream_name,
        }

    def updater_environment(self) -> dict[str, str]:
        return {
            **self._common_environment(),
            "REDIS_TIMEOUT_MS": str(self.stage.updater.redis_timeout_ms),
            "DEAD_LETTER_URI": self.cfg.dead_letter_uri,
        }

    def _ensure_bucket(self, bucket: str) -> None:
        s3 = self.s3
        try:
            s3.head_bucket(Bucket=bucket)
            return
        except Exception as exc:
            if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
        try:
            if self.cfg.region == "us-east-1":
                s3.create_bucket(Bucket=bucket)
            else:
                s3.create_bucket(
                    Bucket=bucket,
                    CreateBucketConfiguration={"LocationConstraint": self.cfg.region},  # type: ignore[typeddict-item]
                )
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass

    def _ensure_stream(self) -> str:
        kinesis, name = self.kinesis, self.cfg.stream_name
        try:
            kinesis.describe_stream_summary(StreamName=name)
        except kinesis.exceptions.ResourceNotFoundException:
            shards = self.stage.kinesis.shard_count or 1
            kinesis.create_stream(StreamName=name, ShardCount=shards)
        deadline = time.monotonic() + self.cfg.wait_timeout
        while True:
            summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
            if summary["StreamStatus"] == "ACTIVE":
                return summary["StreamARN"]
            if time.monotonic() > deadline:
                raise LocalStackError(f"stream {name} is {summary['StreamStatus']}, not ACTIVE")
            time.sleep(0.5)

    def _ensure_role(self, stream_arn: str) -> str:
        iam, cfg = self._client("iam"), self.cfg
        try:
            arn = str(iam.get_role(RoleName=cfg.role_name)["Role"]["Arn"])
        except iam.exceptions.NoSuchEntityException:
            arn = str(
                iam.create_role(
                    RoleName=cfg.role_name,
                    AssumeRolePolicyDocument=json.dumps(LAMBDA_TRUST_POLICY),
                    Description="FraudSys local Lambdas (LocalStack)",
                )["Role"]["Arn"]
            )
        # What the CDK grants, scoped the same way (LocalStack only enforces it with ENFORCE_IAM=1).
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                    "Resource": "*",
                },
                {
                    "Effect": "Allow",
                    "Action": ["s3:GetObject", "s3:PutObject"],
                    "Resource": [
                        f"arn:aws:s3:::{cfg.models_bucket}/{cfg.model_prefix}/*",
                        f"arn:aws:s3:::{cfg.dead_letter_bucket}/{cfg.dead_letter_prefix}/*",
                    ],
                },
                {
                    "Effect": "Allow",
                    "Action": [
                        "kinesis:PutRecord",
                        "kinesis:PutRecords",
                        "kinesis:DescribeStream",
                        "kinesis:DescribeStreamSummary",
                        "kinesis:GetRecords",
                        "kinesis:GetShardIterator",
                        "kinesis:ListShards",
                        "kinesis:ListStreams",
                        "kinesis:SubscribeToShard",
                    ],
                    "Resource": stream_arn,
                },
            ],
        }
        iam.put_role_policy(
            RoleName=cfg.role_name, PolicyName="fraudsys-local", PolicyDocument=json.dumps(policy)
        )
        return arn

    def _ensure_layer(self, layer_zip: Path) -> str:
        lam, cfg = self._client("lambda"), self.cfg
        data = layer_zip.read_bytes()
        sha = code_sha256(data)
        versions = lam.list_layer_versions(LayerName=cfg.layer_name).get("LayerVersions", [])
        if versions:
            latest = max(versions, key=lambda v: int(v["Version"]))
            current = lam.get_layer_version(LayerName=cfg.layer_name, VersionNumber=int(latest["Version"]))
            if current.get("Content", {}).get("CodeSha256") == sha:
                return str(latest["LayerVersionArn"])
        content: dict[str, Any] = (
            self._upload_artifact(f"layers/{layer_zip.name}", data)
            if len(data) > INLINE_ZIP_LIMIT
            else {"ZipFile": data}
        )
        published = lam.publish_layer_version(
            LayerName=cfg.layer_name,
            Description="FraudSys slim XGBoost layer (layers/requirements.txt)",
            Content=content,
            CompatibleRuntimes=[RUNTIME],
            CompatibleArchitectures=[ARCHITECTURE],
        )
        return str(published["LayerVersionArn"])

    def _code_content(self, name: str, code: bytes) -> dict[str, Any]:
        if len(code) > INLINE_ZIP_LIMIT:
            return self._upload_artifact(
                f"functions/{name}-{hashlib.sha256(code).hexdigest()[:16]}.zip", code
            )
        return {"ZipFile": code}

    def _upload_artifact(self, key: str, data: bytes) -> dict[str, Any]:
        bucket = self.cfg.artifacts_bucket
        self._ensure_bucket(bucket)
        self.s3.put_object(Bucket=bucket, Key=key, Body=data)
        return {"S3Bucket": bucket, "S3Key": key}

    def _ensure_function(
        self,
        name: str,
        handler: str,
        description: str,
        code: bytes,
        role_arn: str,
        layer_arn: str,
        environment: dict[str, str],
        memory_mb: int,
        timeout_seconds: int,
    ) -> str:
        lam = self._client("lambda")
        settings: dict[str, Any] = {
            "Role": role_arn,
            "Handler": handler,
            "Runtime": RUNTIME,
            "Description": description,
            "Timeout": timeout_seconds,
            "MemorySize": memory_mb,
            "Layers": [layer_arn],
            "Environment": {"Variables": environment},
        }
        try:
            existing = lam.get_function(FunctionName=name)["Configuration"]
        except lam.exceptions.ResourceNotFoundException:
            created = lam.create_function(
                FunctionName=name,
                Code=self._code_content(name, code),
                Architectures=[ARCHITECTURE],
                Publish=False,
                **settings,
            )
            self._wait_function(name)
            return str(created["FunctionArn"])
        self._wait_function(name)
        if existing.get("CodeSha256") != code_sha256(code):
            lam.update_function_code(
                FunctionName=name, Architectures=[ARCHITECTURE], **self._code_content(name, code)
            )
            self._wait_function(name)
        lam.update_function_configuration(FunctionName=name, **settings)
        self._wait_function(name)
        return str(existing["FunctionArn"])

    def _wait_function(self, name: str) -> None:
        """Until the function is Active and no update is in progress (LocalStack emulates both)."""
        lam = self._client("lambda")
        deadline = time.monotonic() + self.cfg.wait_timeout
        while True:
            conf = lam.get_function_configuration(FunctionName=name)
            state, update = conf.get("State", "Active"), conf.get("LastUpdateStatus", "Successful")
            if state == "Failed" or update == "Failed":
                reason = conf.get("StateReason") or conf.get("LastUpdateStatusReason") or "no reason given"
                raise LocalStackError(f"function {name} failed: {reason}")
            if state == "Active" and update in ("Successful", None):
                return
            if time.monotonic() > deadline:
                raise LocalStackError(
                    f"function {name} is {state}/{update} after {self.cfg.wait_timeout:.0f} s"
                )
            time.sleep(0.5)

    def _ensure_api(self, scorer_arn: str) -> str:
        apigw, lam, cfg = self._client("apigateway"), self._client("lambda"), self.cfg
        api_id = self._find_api(apigw)
        if api_id is None:
            api_id = str(
                apigw.create_rest_api(
                    name=cfg.api_name,
                    description="FraudSys real-time scoring (local)",
                    endpointConfiguration={"types": ["REGIONAL"]},
                )["id"]
            )
        resources = self._api_resources(apigw, api_id)
        root_id = resources["/"]
        uri = f"arn:aws:apigateway:{cfg.region}:lambda:path/2015-03-31/functions/{scorer_arn}/invocations"
        for path, method in API_ROUTES:
            resource_id = resources.get(path)
            if resource_id is None:
                resource_id = str(
                    apigw.create_resource(restApiId=api_id, parentId=root_id, pathPart=path.strip("/"))["id"]
                )
            try:
                apigw.get_method(restApiId=api_id, resourceId=resource_id, httpMethod=method)
            except apigw.exceptions.NotFoundException:
                apigw.put_method(
                    restApiId=api_id, resourceId=resource_id, httpMethod=method, authorizationType="NONE"
                )
            apigw.put_integration(
                restApiId=api_id,
                resourceId=resource_id,
                httpMethod=method,
                type="AWS_PROXY",
                integrationHttpMethod="POST",
                uri=uri,
            )
        source_arn = f"arn:aws:execute-api:{cfg.region}:{self.account}:{api_id}/*/*/*"
        with contextlib.suppress(lam.exceptions.ResourceConflictException):  # granted by an earlier run
            lam.add_permission(
                FunctionName=cfg.scorer_name,
                StatementId=f"{cfg.prefix}-apigateway",
                Action="lambda:InvokeFunction",
                Principal="apigateway.amazonaws.com",
                SourceArn=source_arn,
            )
        apigw.create_deployment(
            restApiId=api_id, stageName=cfg.stage_name, description="fraudsys local deploy"
        )
        return api_id

    def _find_api(self, apigw: Any) -> str | None:
        for page in apigw.get_paginator("get_rest_apis").paginate():
            for api in page.get("items", []):
                if api.get("name") == self.cfg.api_name:
                    return str(api["id"])
        return None

    @staticmethod
    def _api_resources(apigw: Any, api_id: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for page in apigw.get_paginator("get_resources").paginate(restApiId=api_id):
            for item in page.get("items", []):
                out[str(item["path"])] = str(item["id"])
        return out

    def _ensure_event_source_mapping(self, stream_arn: str) -> str:
        lam, cfg, updater = self._client("lambda"), self.cfg, self.stage.updater
        settings: dict[str, Any] = {
            "BatchSize": updater.batch_size,
            "MaximumBatchingWindowInSeconds": updater.max_batching_window_seconds,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "BisectBatchOnFunctionError": True,
            "MaximumRetryAttempts": updater.retry_attempts,
            "MaximumRecordAgeInSeconds": updater.max_record_age_seconds,
            "ParallelizationFactor": updater.parallelization_factor,
            "Enabled": True,
        }
        existing = lam.list_event_source_mappings(
            FunctionName=cfg.updater_name, EventSourceArn=stream_arn
        ).get("EventSourceMappings", [])
        if not existing:
            created = lam.create_event_source_mapping(
                FunctionName=cfg.updater_name,
                EventSourceArn=stream_arn,
                StartingPosition=updater.starting_position,
                **settings,
            )
            return str(created["UUID"])
        uuid = str(existing[0]["UUID"])
        for extra in existing[1:]:  # only ever one mapping per stream and function
            lam.delete_event_source_mapping(UUID=extra["UUID"])
        deadline = time.monotonic() + self.cfg.wait_timeout
        while True:
            try:
                lam.update_event_source_mapping(UUID=uuid, FunctionName=cfg.updater_name, **settings)
                return uuid
            except lam.exceptions.ResourceInUseException:  # still Creating/Updating
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def publish_champion(self, model_store: Path) -> str:
        """Copy the champion of a local model store root into the models bucket; returns its version."""
        from fraud_adapters.blobs import LocalBlobStore, S3BlobStore
        from fraud_adapters.model_store import ModelStore

        source = ModelStore(LocalBlobStore(model_store), self.cfg.model_name)
        version = source.champion_version()
        if version is None:
            raise LocalStackError(
                f"no champion in {model_store / self.cfg.model_name}: run `fraudsys pipeline` first "
                "or pass the model store root that holds <model>/champion.json"
            )
        files = source.load(version)
        target = ModelStore(S3BlobStore(self.cfg.model_store_uri, self.s3), self.cfg.model_name)
        target.publish(files.manifest, files.model, files.baseline, champion=True)
        return version

    # -- destroy --------------------------------------------------------------------------------

    def destroy(self) -> list[str]:
        """Remove everything ``deploy`` creates; returns what was removed. Missing parts are skipped."""
        self.check_endpoint()
        cfg, removed = self.cfg, []
        lam, apigw, iam = self._client("lambda"), self._client("apigateway"), self._client("iam")
        for mapping in lam.list_event_source_mappings(FunctionName=cfg.updater_name).get(
            "EventSourceMappings", []
        ):
            lam.delete_event_source_mapping(UUID=mapping["UUID"])
            removed.append(f"event source mapping {mapping['UUID']}")
        api_id = self._find_api(apigw)
        if api_id is not None:
            apigw.delete_rest_api(restApiId=api_id)
            removed.append(f"REST API {api_id}")
        for name in (cfg.scorer_name, cfg.updater_name):
            try:
                lam.delete_function(FunctionName=name)
                removed.append(f"function {name}")
            except lam.exceptions.ResourceNotFoundException:
                pass
        for version in lam.list_layer_versions(LayerName=cfg.layer_name).get("LayerVersions", []):
            lam.delete_layer_version(LayerName=cfg.layer_name, VersionNumber=int(version["Version"]))
            removed.append(f"layer {version['LayerVersionArn']}")
        try:
            for policy in iam.list_role_policies(RoleName=cfg.role_name).get("PolicyNames", []):
                iam.delete_role_policy(RoleName=cfg.role_name, PolicyName=policy)
            iam.delete_role(RoleName=cfg.role_name)
            removed.append(f"role {cfg.role_name}")
        except iam.exceptions.NoSuchEntityException:
            pass
        kinesis = self.kinesis
        try:
            kinesis.delete_stream(StreamName=cfg.stream_name, EnforceConsumerDeletion=True)
            removed.append(f"stream {cfg.stream_name}")
        except kinesis.exceptions.ResourceNotFoundException:
            pass
        for bucket in (cfg.models_bucket, cfg.dead_letter_bucket, cfg.artifacts_bucket):
            if self._delete_bucket(bucket):
                removed.append(f"bucket {bucket}")
        return removed

    def _delete_bucket(self, bucket: str) -> bool:
        s3 = self.s3
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
                if keys:
                    s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})  # type: ignore[typeddict-item]
            s3.delete_bucket(Bucket=bucket)
        except s3.exceptions.NoSuchBucket:
            return False
        return True


def deploy(cfg: LocalStackConfig | None = None, step: Callable[[str], None] | None = None) -> Deployment:
    return LocalStackDeployer(cfg, step).deploy()


def destroy(cfg: LocalStackConfig | None = None, step: Callable[[str], None] | None = None) -> list[str]:
    return LocalStackDeployer(cfg, step).destroy()
