"""Every AWS call the code makes on its real paths is allowed by the synthesized role that makes it.

For each stage of cdk.json (synthesized offline, bundling skipped), in moto:

1. the training job, with its task definition's environment (resolved from the template): a tiny
   Kaggle-format CSV at ``RAW_DATA_URI``, two runs of ``fraudsys pipeline`` (the first registers
   and publishes a champion; the second meets it: champion download, gate, no promotion) against
   a local MLflow server whose artifact root is the stage's ``s3://<models>/mlflow`` (as SageMaker's:
   the client writes artifacts to S3 itself, with the task role);
2. the scorer, with its function's environment: ``GET /health``, ``POST /predict`` (loads the
   champion the training job published, publishes to the stream), ``POST /labels``;
3. the updater, with its function's environment: the records the scorer published plus a poison
   record (dead letter);
4. the archiver, with its function's environment (no Redis): the same records, archived to the lake;
5. the scorer again with its stream unreachable (its publisher's publish raises): the transaction
   goes to the publish outbox (SQS), and the outbox relay, with its function's environment, sends
   the outbox's message to the stream (Kinesis stages; on MSK its producer is declared, below);
6. the event source mappings' pollers and the Kafka producer, which are not our code: the calls AWS
   documents for them, checked against the same roles.

Every botocore call is recorded (``before-call`` on every client), every MLflow REST request is
mapped to its ``sagemaker-mlflow:`` action, and each call's IAM checks (plus the KMS use that
SSE-KMS buckets and streams imply) must be allowed by the role of the component that made it
(``tests/support/iam.py``). A missing statement fails here instead of in the account.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from local_stack.services import Service, free_port, start_redis
from tests.support.events import FakeContext, api_gateway_event, kinesis_event, sqs_event
from tests.support.iam import (
    ACCOUNT,
    PARTITION,
    REGION,
    AwsCall,
    CallRecorder,
    Permission,
    Resolver,
    RolePolicy,
    StackTemplate,
    load_assembly,
    mlflow_routes,
    permissions,
    role_policy,
    unknown_action,
)

pytestmark = pytest.mark.slow

TINY = {
    "tuning": {"n_trials": 1, "n_folds": 2, "max_rounds": 20},
}
PREDICT_BODY = {
    "cc_num": "4111111111111111",
    "merchant_name": "fraud_Kirlin and Sons",
    "category": "shopping_net",
    "amount_usd": 912.4,
    "lat": 40.7,
    "long": -74.0,
    "city_pop": 8000000,
    "merch_lat": 41.2,
    "merch_long": -75.1,
}


@dataclass
class Stage:
    name: str
    stacks: dict[str, StackTemplate]
    resolver: Resolver

    def stack(self, part: str) -> StackTemplate:
        return self.stacks[f"fraudsys-{self.name}-{part}"]

    def of_type(self, kind: str) -> Iterator[tuple[StackTemplate, str, dict[str, Any]]]:
        for stack in self.stacks.values():
            for logical_id, resource in stack.resources.items():
                if resource["Type"] == kind:
                    yield stack, logical_id, resource


def _physical_values(stage: Stage) -> None:
    """Names and ARNs for the stage's resources, as AWS would give them (moto uses the same)."""
    r = stage.resolver
    arn = f"arn:{PARTITION}"
    for stack, lid, res in stage.of_type("AWS::S3::Bucket"):
        name = r.resolve(res["Properties"].get("BucketName"), stack.name) or f"{stack.name}-{lid}".lower()
        r.set(stack.name, lid, Ref=name, Arn=f"{arn}:s3:::{name}")
    for stack, lid, _ in stage.of_type("AWS::Kinesis::Stream"):
        name = f"{stack.name}-{lid}"
        r.set(stack.name, lid, Ref=name, Arn=f"{arn}:kinesis:{REGION}:{ACCOUNT}:stream/{name}")
    for stack, lid, _ in stage.of_type("AWS::KMS::Key"):
        r.set(stack.name, lid, Ref=lid, Arn=f"{arn}:kms:{REGION}:{ACCOUNT}:key/{lid}")
    for stack, lid, res in stage.of_type("AWS::SageMaker::MlflowTrackingServer"):
        server_name = res["Properties"]["TrackingServerName"]
        server = f"{arn}:sagemaker:{REGION}:{ACCOUNT}:mlflow-tracking-server/{server_name}"
        r.set(stack.name, lid, TrackingServerArn=server)
    for stack, lid, _ in stage.of_type("AWS::SageMaker::MlflowApp"):
        r.set(stack.name, lid, Arn=f"{arn}:sagemaker:{REGION}:{ACCOUNT}:mlflow-app/app-{lid.lower()}")
    for stack, lid, res in stage.of_type("AWS::MSK::Cluster"):
        cluster_id = f"{res['Properties']['ClusterName']}/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0-2"
        cluster = f"{arn}:kafka:{REGION}:{ACCOUNT}:cluster/{cluster_id}"
        r.set(stack.name, lid, Ref=cluster, Arn=cluster)
    for stack, lid, _ in stage.of_type("AWS::SQS::Queue"):
        r.set(
            stack.name,
            lid,
            Ref=f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{lid}",
            Arn=f"{arn}:sqs:{REGION}:{ACCOUNT}:{lid}",
            QueueName=lid,
        )
    for stack, lid, _ in stage.of_type("AWS::IAM::Role"):
        r.set(stack.name, lid, Arn=f"{arn}:iam::{ACCOUNT}:role/{lid}")
    for stack, lid, _ in stage.of_type("AWS::ElastiCache::ReplicationGroup"):
        r.set(
            stack.name,
            lid,
            **{"ConfigurationEndPoint.Address": "127.0.0.1", "ConfigurationEndPoint.Port": "0"},
        )


def _role_of(stage: Stage, stack: StackTemplate, role_value: Any) -> RolePolicy:
    logical_id = role_value["Fn::GetAtt"][0]
    return role_policy(stage.resolver, stack, logical_id)


def _function(stage: Stage, handler: str) -> tuple[StackTemplate, dict[str, Any]]:
    [(stack, _, resource)] = [
        f for f in stage.of_type("AWS::Lambda::Function") if f[2]["Properties"].get("Handler") == handler
    ]
    return stack, resource


def _environment(stage: Stage, stack: StackTemplate, variables: Any) -> dict[str, str]:
    return {k: str(stage.resolver.resolve(v, stack.name)) for k, v in variables.items()}


@dataclass
class Checked:
    stage: Stage
    calls: list[AwsCall]
    roles: dict[str, RolePolicy]
    bucket_keys: dict[str, str]
    stream_keys: dict[str, str]
    mlflow_arn: str
    declared: dict[str, list[Permission]]
    queue_keys: dict[str, str]


@pytest.fixture(scope="module", params=["dev", "prod"])
def checked(
    request: pytest.FixtureRequest,
    real_assemblies: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Checked]:
    import boto3
    from moto import mock_aws

    name = request.param
    stacks = load_assembly(real_assemblies[name])
    stage = Stage(name, stacks, Resolver(stacks))
    _physical_values(stage)
    tmp = tmp_path_factory.mktemp(f"iam-{name}")
    saved = dict(os.environ)
    redis_service: Service | None = None
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",  # pragma: allowlist secret
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }
    )
    os.environ.pop("AWS_ENDPOINT_URL_S3", None)
    os.environ.pop("AWS_PROFILE", None)
    try:
        with mock_aws():
            # the stage's buckets, stream(s) and secrets, in moto
            s3 = boto3.client("s3", region_name=REGION)
            for stack, lid, _ in stage.of_type("AWS::S3::Bucket"):
                s3.create_bucket(Bucket=stage.resolver.physical[(stack.name, lid)]["Ref"])
            kinesis = boto3.client("kinesis", region_name=REGION)
            for stack, lid, _ in stage.of_type("AWS::Kinesis::Stream"):
                kinesis.create_stream(
                    StreamName=stage.resolver.physical[(stack.name, lid)]["Ref"], ShardCount=1
                )
            sqs = boto3.client("sqs", region_name=REGION)
            for _, lid, _ in stage.of_type("AWS::SQS::Queue"):
                sqs.create_queue(QueueName=lid)
            token = secrets.token_hex(24)
            secret_values = {"AuthToken": {"token": token}, "CardHashKey": {"key": secrets.token_hex(16)}}
            sm = boto3.client("secretsmanager", region_name=REGION)
            for stack, lid, _ in stage.of_type("AWS::SecretsManager::Secret"):
                kind = next(k for k in secret_values if k in lid)
                created = sm.create_secret(Name=lid, SecretString=json.dumps(secret_values[kind]))
                stage.resolver.set(stack.name, lid, Ref=created["ARN"])
            redis_service = start_redis(free_port(), tmp / "redis", password=token)

            bucket_keys, stream_keys = _encryption_keys(stage)
            mlflow_arn = _mlflow_resource(stage)
            mlflow = _start_mlflow(tmp, _environment_of_task(stage)["MLFLOW_TRACKING_URI"], stage)
            recorder = CallRecorder(mlflow_base=mlflow.url)
            raw_data_uri = _upload_raw_data(stage, tmp)  # the operator's upload, not the job's
            with recorder.active():
                with recorder.component("training"):
                    _run_training(stage, tmp, mlflow.url, raw_data_uri)
                with recorder.component("scorer"):
                    _run_scorer(stage, redis_service)
                published = _published(stage)  # the test reads the stream: no component's call
                with recorder.component("updater"):
                    _run_updater(stage, redis_service, published)
                with recorder.component("archiver"):
                    _run_archiver(stage, published)
                with recorder.component("scorer"):
                    _run_scorer_with_the_stream_down(stage, redis_service)
                outbox = _outbox_event(stage)  # the event source mapping's receive: not our code
                with recorder.component("relay"):
                    _run_relay(stage, outbox)
            mlflow.stop()
            roles = _roles(stage)
            declared = _declared_permissions(stage, mlflow_arn)
            queue_keys = _queue_keys(stage)
            yield Checked(
                stage, recorder.calls, roles, bucket_keys, stream_keys, mlflow_arn, declared, queue_keys
            )
    finally:
        if redis_service is not None:
            redis_service.stop()
        os.environ.clear()
        os.environ.update(saved)
        from handlers import bootstrap, predict

        bootstrap.reset()
        predict.scorer.cache_clear()


def _environment_of_task(stage: Stage) -> dict[str, str]:
    [(stack, _, task)] = list(stage.of_type("AWS::ECS::TaskDefinition"))
    [container] = task["Properties"]["ContainerDefinitions"]
    return {e["Name"]: str(stage.resolver.resolve(e["Value"], stack.name)) for e in container["Environment"]}


def _encryption_keys(stage: Stage) -> tuple[dict[str, str], dict[str, str]]:
    r = stage.resolver
    buckets = {}
    for stack, lid, res in stage.of_type("AWS::S3::Bucket"):
        for rule in (
            res["Properties"].get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration", [])
        ):
            key = rule["ServerSideEncryptionByDefault"].get("KMSMasterKeyID")
            if key is not None:
                buckets[r.physical[(stack.name, lid)]["Ref"]] = str(r.resolve(key, stack.name))
    streams = {}
    for stack, lid, res in stage.of_type("AWS::Kinesis::Stream"):
        key = res["Properties"].get("StreamEncryption", {}).get("KeyId")
        if key is not None:
            streams[r.physical[(stack.name, lid)]["Ref"]] = str(r.resolve(key, stack.name))
    return buckets, streams


def _mlflow_resource(stage: Stage) -> str:
    arn = _environment_of_task(stage)["MLFLOW_TRACKING_URI"]
    assert arn.startswith(f"arn:{PARTITION}:sagemaker:"), arn
    return arn


@dataclass
class _Mlflow:
    service: Service
    url: str

    def stop(self) -> None:
        self.service.stop()


def _start_mlflow(tmp: Path, _arn: str, stage: Stage) -> _Mlflow:
    """A local MLflow server with the stage's artifact store and no artifact proxy, as SageMaker's."""
    from local_stack import services

    env = _environment_of_task(stage)
    models = env["MODEL_STORE_URI"].removeprefix("s3://").split("/", 1)[0]
    port = free_port()
    argv = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", f"sqlite:///{(tmp / 'mlflow.db').resolve()}",
        "--default-artifact-root", f"s3://{models}/mlflow", "--no-serve-artifacts",
    ]  # fmt: skip
    service = services._start("mlflow", argv, port, tmp, 120, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    return _Mlflow(service, f"http://127.0.0.1:{port}")


def _upload_raw_data(stage: Stage, tmp: Path) -> str:
    """A tiny Kaggle-format CSV under the task's ``RAW_DATA_URI``; returns its URI."""
    import boto3

    from training.data.simulator import SimulatorConfig, simulate_to_csv

    uri = _environment_of_task(stage)["RAW_DATA_URI"]
    raw_bucket, _, raw_prefix = uri.removeprefix("s3://").partition("/")
    csv = tmp / "sim.csv"
    simulate_to_csv(SimulatorConfig(n_cards=60, n_days=60), csv)
    boto3.client("s3").upload_file(str(csv), raw_bucket, f"{raw_prefix}/sim.csv")
    return f"{uri}/sim.csv"


def _run_training(stage: Stage, tmp: Path, mlflow_url: str, raw_data_uri: str) -> None:
    from training.config import DEFAULT_CONFIG, load_config
    from training.pipeline import run_pipeline

    env = {
        **_environment_of_task(stage),
        "RAW_DATA_URI": raw_data_uri,
        "FRAUDSYS_DATA_DIR": str(tmp / "work"),
    }
    for _ in range(2):  # the first run publishes a champion, the second meets it
        cfg = load_config(
            DEFAULT_CONFIG, env=env, overrides={**TINY, "registry": {"tracking_uri": mlflow_url}}
        )
        result = run_pipeline(cfg)
        assert result.version


def _run_scorer(stage: Stage, redis_service: Service) -> None:
    from handlers import bootstrap, predict

    stack, function = _function(stage, "handlers.predict.handler")
    env = _environment(stage, stack, function["Properties"]["Environment"]["Variables"])
    env |= {"REDIS_URL": f"redis://127.0.0.1:{redis_service.port}/0", "REDIS_CLUSTER": "false"}
    if env["STREAM_KIND"] == "kafka":
        env["STREAM_KIND"] = "none"  # no broker here: the producer's permissions are declared below
    os.environ.update(env)
    bootstrap.reset()
    predict.scorer.cache_clear()
    context = FakeContext()
    health = predict.handler(api_gateway_event("GET", "/health"), context)
    assert health["statusCode"] == 200, health
    when = (datetime.now(UTC) - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    scored = predict.handler(
        api_gateway_event("POST", "/predict", {**PREDICT_BODY, "transaction_time": when}), context
    )
    assert scored["statusCode"] == 200, scored
    transaction_id = json.loads(scored["body"])["transaction_id"]
    labelled = predict.handler(
        api_gateway_event("POST", "/labels", {"transaction_id": transaction_id, "is_fraud": True}), context
    )
    assert labelled["statusCode"] == 202, labelled


def _published(stage: Stage) -> list[bytes]:
    """What the scorer put on the Kinesis stream (an MSK stage: a transaction event like it)."""
    import boto3

    streams = [
        stage.resolver.physical[(s.name, lid)]["Ref"] for s, lid, _ in stage.of_type("AWS::Kinesis::Stream")
    ]
    if not streams:  # MSK: the event the scorer would have produced
        from local_stack.replay import transaction_event

        row = {
            **PREDICT_BODY,
            "trans_num": "t-1",
            "merchant": PREDICT_BODY["merchant_name"],
            "amt": PREDICT_BODY["amount_usd"],
            "event_time": int((datetime.now(UTC) - timedelta(minutes=1)).timestamp()),
        }
        return [transaction_event(row).model_dump_json().encode()]
    kinesis = boto3.client("kinesis")
    shard = kinesis.list_shards(StreamName=streams[0])["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(
        StreamName=streams[0], ShardId=shard, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records = kinesis.get_records(ShardIterator=iterator)["Records"]
    assert records, "the scorer published nothing"
    return [bytes(record["Data"]) for record in records]


def _run_updater(stage: Stage, redis_service: Service, published: list[bytes]) -> None:
    from handlers import bootstrap, update_features

    stack, function = _function(stage, "handlers.update_features.handler")
    env = _environment(stage, stack, function["Properties"]["Environment"]["Variables"])
    env |= {"REDIS_URL": f"redis://127.0.0.1:{redis_service.port}/0", "REDIS_CLUSTER": "false"}
    os.environ.update(env)
    bootstrap.reset()
    event = kinesis_event([*published, b"not json: a poison record"])
    result = update_features.handler(event, FakeContext())
    assert result == {"batchItemFailures": []}, result


def _run_archiver(stage: Stage, published: list[bytes]) -> None:
    from handlers import archive_events, bootstrap

    stack, function = _function(stage, "handlers.archive_events.handler")
    env = _environment(stage, stack, function["Properties"]["Environment"]["Variables"])
    for name in ("REDIS_URL", "REDIS_CLUSTER", "REDIS_AUTH_SECRET_ARN", "DEAD_LETTER_URI"):
        os.environ.pop(name, None)  # the updater's: the archiver has none of them
    os.environ.update(env)
    bootstrap.reset()
    event = kinesis_event([*published, b"not json: a poison record"])
    result = archive_events.handler(event, FakeContext())
    assert result == {"batchItemFailures": []}, result


class _StreamDown:
    """The stage's publisher with the stream unreachable: publish raises; the records are the ones
    the stage's stream would get (topic from the settings, the card's keyed hash, the payload)."""

    keeps_failed = False  # no producer journal on AWS

    def __init__(self, real: Any) -> None:
        self.real = real

    def publish(self, events: Any, timeout: float = 2.0) -> None:
        raise ConnectionError("the stream is unreachable (test)")

    def record(self, event: Any) -> tuple[str, bytes, bytes]:
        from fraud_adapters.publisher import partition_key
        from handlers import bootstrap
        from handlers.settings import settings

        cfg = settings()
        key = partition_key(event, bootstrap.card_hasher(cfg)).encode()
        return cfg.transactions_topic, key, event.model_dump_json().encode()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def _run_scorer_with_the_stream_down(stage: Stage, redis_service: Service) -> None:
    from handlers import bootstrap, predict

    stack, function = _function(stage, "handlers.predict.handler")
    env = _environment(stage, stack, function["Properties"]["Environment"]["Variables"])
    env |= {"REDIS_URL": f"redis://127.0.0.1:{redis_service.port}/0", "REDIS_CLUSTER": "false"}
    if env["STREAM_KIND"] == "kafka":
        env["STREAM_KIND"] = "none"
    os.environ.update(env)
    bootstrap.reset()
    predict.scorer.cache_clear()
    real = bootstrap.publisher
    down = _StreamDown(real())
    bootstrap.publisher = lambda: down  # type: ignore[assignment]
    try:
        when = (datetime.now(UTC) - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
        scored = predict.handler(
            api_gateway_event("POST", "/predict", {**PREDICT_BODY, "transaction_time": when}), FakeContext()
        )
    finally:
        bootstrap.publisher = real
    assert scored["statusCode"] == 200, scored


def _outbox_queue(stage: Stage) -> tuple[str, str]:
    """The outbox's URL and ARN (the queue with a redrive policy)."""
    [lid] = [lid for _, lid, res in stage.of_type("AWS::SQS::Queue") if "RedrivePolicy" in res["Properties"]]
    physical = next(v for (_, queue), v in stage.resolver.physical.items() if queue == lid)
    return physical["Ref"], physical["Arn"]


def _outbox_event(stage: Stage) -> dict[str, Any]:
    """What the relay's event source mapping hands it: the outbox's message."""
    import boto3

    url, arn = _outbox_queue(stage)
    messages = boto3.client("sqs").receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], AttributeNames=["All"]
    )["Messages"]
    assert len(messages) == 1, messages
    return sqs_event(messages, arn, REGION)


def _run_relay(stage: Stage, event: dict[str, Any]) -> None:
    from handlers import bootstrap, relay_outbox

    stack, function = _function(stage, "handlers.relay_outbox.handler")
    env = _environment(stage, stack, function["Properties"]["Environment"]["Variables"])
    for name in ("REDIS_URL", "REDIS_CLUSTER", "REDIS_AUTH_SECRET_ARN", "CARD_HASH_KEY_SECRET_ARN"):
        os.environ.pop(name, None)  # the scorer's: the relay has none of them
    os.environ.update(env)
    bootstrap.reset()
    if env["STREAM_KIND"] == "kafka":
        return  # no broker here: its producer's permissions are declared below
    result = relay_outbox.handler(event, FakeContext())
    assert result == {"batchItemFailures": []}, result


def _queue_keys(stage: Stage) -> dict[str, str]:
    """Queue name -> the key ARN of each KMS-encrypted queue."""
    keys = {}
    for stack, lid, res in stage.of_type("AWS::SQS::Queue"):
        key = res["Properties"].get("KmsMasterKeyId")
        if key is not None:
            keys[lid] = str(stage.resolver.resolve(key, stack.name))
    return keys


def _roles(stage: Stage) -> dict[str, RolePolicy]:
    roles = {}
    for part, handler in (
        ("scorer", "handlers.predict.handler"),
        ("updater", "handlers.update_features.handler"),
        ("archiver", "handlers.archive_events.handler"),
        ("relay", "handlers.relay_outbox.handler"),
    ):
        stack, function = _function(stage, handler)
        roles[part] = _role_of(stage, stack, function["Properties"]["Role"])
    [(stack, _, task)] = list(stage.of_type("AWS::ECS::TaskDefinition"))
    roles["training"] = _role_of(stage, stack, task["Properties"]["TaskRoleArn"])
    return roles


def _declared_permissions(stage: Stage, _mlflow_arn: str) -> dict[str, list[Permission]]:
    """What AWS does with our roles on our behalf (not our code, so not recorded): the event source
    mappings' pollers with the updater's and the archiver's roles, and the MSK IAM producer of the
    scorer."""
    r = stage.resolver
    consumers = ("updater", "archiver")
    declared: dict[str, list[Permission]] = {
        "scorer": [],
        "training": [],
        "relay": [],
        **{c: [] for c in consumers},
    }
    # the relay's event source mapping polls the outbox with the relay's role (the queue's key too)
    _, outbox = _outbox_queue(stage)
    for action in ("ReceiveMessage", "DeleteMessage", "ChangeMessageVisibility", "GetQueueAttributes"):
        declared["relay"].append(Permission(f"sqs:{action}", outbox, why="SQS poller"))
    outbox_lid = outbox.rsplit(":", 1)[-1]
    declared["relay"].append(
        Permission("kms:Decrypt", _queue_keys(stage)[outbox_lid], why="SQS poller, SSE-KMS")
    )
    # the scheduled retraining (TRAINING_SOURCE=lake) reads the lake with pyarrow's own S3 client,
    # which botocore hooks do not see: its requests, as S3 authorizes them
    lake = _environment_of_task(stage)["LAKE_URI"].removeprefix("s3://")
    lake_bucket, _, lake_prefix = lake.partition("/")
    lake_key = next(
        str(r.resolve(rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"], st.name))
        for st, lid, res in stage.of_type("AWS::S3::Bucket")
        if r.physical[(st.name, lid)]["Ref"] == lake_bucket
        for rule in res["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    )
    part = f"{lake_prefix}/events/kind=transaction/dt=2026-01-01/part-0.parquet"
    declared["training"] += [
        Permission(
            "s3:ListBucket",
            f"arn:{PARTITION}:s3:::{lake_bucket}",
            (("s3:prefix", f"{lake_prefix}/events/"),),
            why="lake listing (pyarrow)",
        ),
        Permission("s3:GetObject", f"arn:{PARTITION}:s3:::{lake_bucket}/{part}", why="lake read (pyarrow)"),
        Permission("kms:Decrypt", lake_key, why="lake read (pyarrow), SSE-KMS"),
    ]
    queues = [lid for _, lid, _ in stage.of_type("AWS::SQS::Queue")]
    for consumer in consumers:  # each mapping's on-failure destination: its function's own queue
        [queue_lid] = [lid for lid in queues if lid.startswith(consumer.capitalize())]
        queue = next(v["Arn"] for (_, lid), v in r.physical.items() if lid == queue_lid)
        declared[consumer].append(Permission("sqs:SendMessage", queue, why="on-failure destination"))
    for stack, lid, res in stage.of_type("AWS::Kinesis::Stream"):
        stream = r.physical[(stack.name, lid)]["Arn"]
        key = str(r.resolve(res["Properties"]["StreamEncryption"]["KeyId"], stack.name))
        for consumer in consumers:
            for action in (
                "GetRecords",
                "GetShardIterator",
                "DescribeStream",
                "DescribeStreamSummary",
                "ListShards",
            ):
                declared[consumer].append(Permission(f"kinesis:{action}", stream, why="Kinesis poller"))
            declared[consumer].append(Permission("kms:Decrypt", key, why="Kinesis poller, encrypted stream"))
    for stack, lid, _ in stage.of_type("AWS::MSK::Cluster"):
        cluster = r.physical[(stack.name, lid)]["Arn"]
        _, name, uuid = cluster.rsplit(":", 1)[1].split("/")
        base = f"arn:{PARTITION}:kafka:{REGION}:{ACCOUNT}"
        topics = [t["Properties"]["TopicName"] for _, _, t in stage.of_type("AWS::MSK::Topic")]
        assert topics, "an MSK stage declares its topics"
        for consumer in consumers:
            for action in ("Connect", "DescribeClusterDynamicConfiguration"):
                declared[consumer].append(Permission(f"kafka-cluster:{action}", cluster, why="MSK poller"))
            declared[consumer].append(Permission("kafka:DescribeClusterV2", cluster, why="MSK poller"))
            declared[consumer].append(Permission("kafka:GetBootstrapBrokers", cluster, why="MSK poller"))
        for producer in ("scorer", "relay"):
            declared[producer].append(Permission("kafka-cluster:Connect", cluster, why="MSK IAM producer"))
        for topic in topics:
            topic_arn = f"{base}:topic/{name}/{uuid}/{topic}"
            for consumer in consumers:  # each consumer's own group per topic
                group = (
                    f"{base}:group/{name}/{uuid}/fraudsys-{stage.name}-{consumer}-{topic.replace('.', '-')}"
                )
                for action in ("DescribeTopic", "ReadData"):
                    declared[consumer].append(
                        Permission(f"kafka-cluster:{action}", topic_arn, why="MSK poller")
                    )
                for action in ("DescribeGroup", "AlterGroup"):
                    declared[consumer].append(Permission(f"kafka-cluster:{action}", group, why="MSK poller"))
            for action in ("WriteData", "DescribeTopic"):
                for producer in ("scorer", "relay"):
                    declared[producer].append(
                        Permission(f"kafka-cluster:{action}", topic_arn, why="MSK IAM producer")
                    )
    return declared


def _denied(checked: Checked, component: str) -> list[str]:
    routes = mlflow_routes()
    role = checked.roles[component]
    denied = []
    for call in (c for c in checked.calls if c.origin == component):
        for need in permissions(
            call,
            bucket_keys=checked.bucket_keys,
            stream_keys=checked.stream_keys,
            mlflow_arn=checked.mlflow_arn,
            routes=routes,
            queue_keys=checked.queue_keys,
        ):
            if problem := unknown_action(need.action, need.resource):
                denied.append(f"{problem} ({call.service} {call.operation})")
            elif not role.allows(need.action, need.resource, dict(need.context)):
                context = dict(need.context) or ""
                denied.append(
                    f"{need.action} on {need.resource} {context} ({call.service} {call.operation}) {need.why}"
                )
    for need in checked.declared.get(component, []):
        if problem := unknown_action(need.action, need.resource):
            denied.append(f"{problem} ({need.why})")
        elif not role.allows(need.action, need.resource, dict(need.context)):
            denied.append(f"{need.action} on {need.resource} ({need.why})")
    return sorted(set(denied))


@pytest.mark.parametrize("component", ["training", "scorer", "updater", "archiver", "relay"])
def test_every_call_is_allowed_by_the_role_of_its_component(checked: Checked, component: str) -> None:
    assert _denied(checked, component) == []


def test_the_recording_saw_the_real_paths(checked: Checked) -> None:
    """The check above is only as good as the calls it saw: these are the ones that matter."""
    seen = {(c.origin, c.service, c.operation) for c in checked.calls}
    routes = mlflow_routes()
    mlflow_actions = {
        permissions(c, bucket_keys={}, stream_keys={}, mlflow_arn="x", routes=routes)[0].action
        for c in checked.calls
        if c.service == "mlflow"
    }
    # the registry calls of issue 15: the tag right after a version is created, the champion's
    # download on the second run
    assert {
        "sagemaker-mlflow:SetModelVersionTag",
        "sagemaker-mlflow:GetModelVersionByAlias",
        "sagemaker-mlflow:SetRegisteredModelAlias",
        "sagemaker-mlflow:GetDownloadURIForModelVersionArtifacts",
        "sagemaker-mlflow:GetLoggedModel",
    } <= mlflow_actions, sorted(mlflow_actions)
    assert {
        ("training", "s3", "PutObject"),  # artifacts and the published model
        ("training", "s3", "GetObject"),  # raw data, artifacts of the champion
        ("training", "s3", "ListObjectsV2"),  # the raw data prefix
        ("scorer", "s3", "GetObject"),  # champion pointer, manifest, model
        ("scorer", "secretsmanager", "GetSecretValue"),
        ("updater", "s3", "PutObject"),  # dead letters
        ("updater", "secretsmanager", "GetSecretValue"),
        ("archiver", "s3", "PutObject"),  # the lake
        ("archiver", "secretsmanager", "GetSecretValue"),  # the card hash key
        ("scorer", "sqs", "SendMessageBatch"),  # the publish outbox, the stream unreachable
    } <= seen, sorted(seen)
    assert not any(c.origin == "relay" and c.service == "secretsmanager" for c in checked.calls)
    # the updater no longer writes the lake; the archiver writes nothing else and opens no Redis
    puts = {(c.origin, str(c.param("Bucket"))) for c in checked.calls if c.operation == "PutObject"}
    assert {bucket for origin, bucket in puts if origin == "archiver"} == {
        b for b in checked.bucket_keys if "-lake-" in b
    }
    assert not any("-lake-" in bucket for origin, bucket in puts if origin == "updater")
    if checked.stage.name == "dev":
        assert ("scorer", "kinesis", "PutRecord") in seen or ("scorer", "kinesis", "PutRecords") in seen
        assert ("relay", "kinesis", "PutRecords") in seen  # the outbox's record, sent on


def test_the_evaluator_refuses_what_a_role_does_not_grant(checked: Checked) -> None:
    """The evaluator is not vacuous: the roles' own statements deny what they should."""
    training, scorer = checked.roles["training"], checked.roles["scorer"]
    updater, archiver = checked.roles["updater"], checked.roles["archiver"]
    lake = next(b for b in checked.bucket_keys if "-lake-" in b)
    part = f"arn:aws:s3:::{lake}/archive/events/kind=transaction/dt=2026-01-01/part-0.parquet"
    assert archiver.allows("s3:PutObject", part)
    assert not archiver.allows("s3:GetObject", part)
    assert not archiver.allows("s3:PutObject", f"arn:aws:s3:::{lake}/other/x")
    assert not updater.allows("s3:PutObject", part)
    models = next(b for b in checked.bucket_keys if "-models-" in b)
    assert scorer.allows("s3:GetObject", f"arn:aws:s3:::{models}/registry/fraudsys/champion.json")
    assert not scorer.allows("s3:PutObject", f"arn:aws:s3:::{models}/registry/fraudsys/champion.json")
    assert not scorer.allows("s3:GetObject", f"arn:aws:s3:::{models}/mlflow/x")
    assert scorer.allows("s3:ListBucket", f"arn:aws:s3:::{models}", {"s3:prefix": "registry/fraudsys/x"})
    assert not scorer.allows("s3:ListBucket", f"arn:aws:s3:::{models}", {"s3:prefix": "mlflow/"})
    assert not scorer.allows("s3:ListBucket", f"arn:aws:s3:::{models}")  # no s3:prefix in the request
    if ":mlflow-app/" in checked.mlflow_arn:
        assert training.allows("sagemaker:CallMlflowAppApi", checked.mlflow_arn)
        assert not training.allows("sagemaker:CallMlflowAppApi", checked.mlflow_arn + "-other")
        assert not training.allows("sagemaker:DeleteMlflowApp", checked.mlflow_arn)
    else:
        assert training.allows("sagemaker-mlflow:SetModelVersionTag", checked.mlflow_arn)
        assert not training.allows("sagemaker-mlflow:DeleteRegisteredModel", checked.mlflow_arn)
        assert not training.allows("sagemaker-mlflow:SetModelVersionTag", checked.mlflow_arn + "-other")


def test_every_granted_mlflow_action_exists_for_the_server_kind(checked: Checked) -> None:
    """Granted actions are real IAM actions on that kind of resource (an app takes one action)."""
    from cdk_app.constructs.mlflow import APP_ACTIONS, TRACKING_ACTIONS

    actions = APP_ACTIONS if ":mlflow-app/" in checked.mlflow_arn else TRACKING_ACTIONS
    assert [a for a in actions if unknown_action(a, checked.mlflow_arn)] == []
    assert unknown_action("sagemaker-mlflow:CreateLoggedModel", checked.mlflow_arn) is not None
