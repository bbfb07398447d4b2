"""The LocalStack deployer (local_stack/localstack.py).

Always run, no Docker: the deployer against a real moto server (IAM, S3, Kinesis, Lambda create
/layers/event source mappings, API Gateway; nothing is invoked), checking every resource and its
properties, the champion upload, idempotency, ``destroy`` and the CLI.

Marked ``localstack``: the same deploy into a running LocalStack (``docker compose -f
docker-compose.localstack.yml up -d``), then real requests through its API Gateway, the Kinesis
event source into Redis and a poison record into the dead-letter bucket. Skipped, with the
reason, when no LocalStack answers at ``$LOCALSTACK_ENDPOINT`` / ``http://localhost:4566``
(not ``$AWS_ENDPOINT_URL``: an earlier test's local S3 may have left it pointing at a server
that stops, and the suite then failed here instead of skipping).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
import pytest
import yaml
from typer.testing import CliRunner

from cdk_app.config import StageConfig
from fraudsys_cli import app
from local_stack import localstack as localstack_module
from local_stack.localstack import (
    API_ROUTES,
    LAMBDA_AWS_ENDPOINT,
    MIN_SCORER_TIMEOUT_SECONDS,
    Deployment,
    LocalStackConfig,
    LocalStackDeployer,
    LocalStackError,
    bundle_with_layer,
    code_sha256,
    code_zip,
    default_endpoint,
    dev_stage_config,
    localstack_health,
)
from local_stack.services import Service, free_port, start_moto
from tests.support.models import publish_test_model

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.localstack.yml"

# A stage whose stream settings differ from every AWS/moto default, so the test sees they are used.
STAGE = StageConfig.model_validate(
    {
        "name": "dev",
        "stream_kind": "kinesis",
        "scorer": {"memory_mb": 1536, "timeout_seconds": 6, "redis_timeout_ms": 60},
        "updater": {
            "memory_mb": 768,
            "timeout_seconds": 45,
            "batch_size": 250,
            "max_batching_window_seconds": 3,
            "retry_attempts": 7,
            "max_record_age_seconds": 3600,
            "parallelization_factor": 2,
        },
    }
)


def dummy_layer(path: Path) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("python/fraudsys_dummy_layer.py", "LAYER = True\n")
    path.write_bytes(buffer.getvalue())
    return path


def client(service: str, endpoint: str) -> Any:
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",  # pragma: allowlist secret
    )


@pytest.fixture(scope="module")
def moto() -> Iterator[Service]:
    service = start_moto(free_port())
    yield service
    service.stop()


@pytest.fixture(scope="module")
def moto_endpoint(moto: Service) -> str:
    return f"http://127.0.0.1:{moto.port}"


@pytest.fixture(scope="module")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model_store")
    publish_test_model(str(root), version="7")
    return root


@pytest.fixture(scope="module")
def cfg(moto_endpoint: str, model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> LocalStackConfig:
    layer = dummy_layer(tmp_path_factory.mktemp("layer") / "layer.zip")
    return LocalStackConfig(endpoint=moto_endpoint, layer_zip=layer, model_store=model_store, wait_timeout=30)


@pytest.fixture(scope="module")
def deployment(cfg: LocalStackConfig) -> Deployment:
    return LocalStackDeployer(cfg, stage=STAGE).deploy()


@pytest.fixture(scope="module")
def lam(moto_endpoint: str) -> Any:
    return client("lambda", moto_endpoint)


@pytest.fixture(scope="module")
def apigw(moto_endpoint: str) -> Any:
    return client("apigateway", moto_endpoint)


def test_buckets_and_stream_exist(deployment: Deployment, moto_endpoint: str) -> None:
    s3, kinesis = client("s3", moto_endpoint), client("kinesis", moto_endpoint)

    buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    summary = kinesis.describe_stream_summary(StreamName="fraudsys-local-events")["StreamDescriptionSummary"]

    assert {"fraudsys-models", "fraudsys-dead-letters"} <= buckets
    assert deployment.buckets == ("fraudsys-models", "fraudsys-dead-letters")
    assert summary["StreamStatus"] == "ACTIVE"
    assert summary["StreamARN"] == deployment.stream_arn


def test_role_is_assumable_by_lambda_with_scoped_inline_policy(
    deployment: Deployment, moto_endpoint: str
) -> None:
    iam = client("iam", moto_endpoint)

    role = iam.get_role(RoleName="fraudsys-local-lambda")["Role"]
    policy = iam.get_role_policy(RoleName="fraudsys-local-lambda", PolicyName="fraudsys-local")

    trust = role["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert role["Arn"] == deployment.role_arn
    assert trust["Statement"][0]["Principal"] == {"Service": "lambda.amazonaws.com"}
    document = policy["PolicyDocument"]
    document = json.loads(document) if isinstance(document, str) else document
    resources = json.dumps(document["Statement"])
    assert deployment.stream_arn in resources
    assert "arn:aws:s3:::fraudsys-models/models/*" in resources


def test_layer_is_published_for_python313_x86_64(deployment: Deployment, lam: Any) -> None:
    versions = lam.list_layer_versions(LayerName="fraudsys-local-xgboost")["LayerVersions"]

    assert [v["LayerVersionArn"] for v in versions] == [deployment.layer_version_arn]
    assert versions[0]["CompatibleRuntimes"] == ["python3.13"]
    assert versions[0]["CompatibleArchitectures"] == ["x86_64"]


@pytest.mark.parametrize(
    ("name", "handler", "memory", "timeout"),
    [
        ("fraudsys-local-scorer", "handlers.predict.handler", 1536, MIN_SCORER_TIMEOUT_SECONDS),
        ("fraudsys-local-updater", "handlers.update_features.handler", 768, 45),
    ],
)
def test_functions_run_the_handlers_on_python313_with_the_layer(
    deployment: Deployment, lam: Any, name: str, handler: str, memory: int, timeout: int
) -> None:
    conf = lam.get_function(FunctionName=name)["Configuration"]

    assert conf["Runtime"] == "python3.13"
    assert conf["Handler"] == handler
    assert conf["Architectures"] == ["x86_64"]
    assert conf["Role"] == deployment.role_arn
    assert conf["MemorySize"] == memory
    assert conf["Timeout"] == timeout
    assert [layer["Arn"] for layer in conf["Layers"]] == [deployment.layer_version_arn]
    assert conf["CodeSha256"] == code_sha256(code_zip())  # not bundled: moto is not LocalStack
    assert deployment.layer_bundled is False


def test_code_zip_is_lambdas_without_caches(tmp_path: Path) -> None:
    data = code_zip()

    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert "handlers/predict.py" in names
    assert "handlers/update_features.py" in names
    assert "fraud_core/spec.py" in names
    assert "fraud_adapters/publisher.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "_cache" in n]
    assert code_zip() == data  # deterministic: an unchanged tree keeps its CodeSha256


def test_scorer_environment_follows_the_architecture_contract(deployment: Deployment, lam: Any) -> None:
    env = lam.get_function_configuration(FunctionName="fraudsys-local-scorer")["Environment"]["Variables"]

    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["MODEL_STORE_URI"] == "s3://fraudsys-models/models"
    assert env["MODEL_NAME"] == "fraudsys"
    assert env["STREAM_KIND"] == "kinesis"
    assert env["KINESIS_STREAM_NAME"] == "fraudsys-local-events"
    assert env["TRANSACTIONS_TOPIC"] == "fraudsys.transactions"
    assert env["LABELS_TOPIC"] == "fraudsys.labels"
    assert env["LABEL_DELAY_SECONDS"] == str(STAGE.label_delay_seconds)
    assert int(env["REDIS_TIMEOUT_MS"]) >= STAGE.scorer.redis_timeout_ms
    assert float(env["MODEL_POINTER_TTL_SECONDS"]) > 0
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_KINESIS"):
        assert env[name] == LAMBDA_AWS_ENDPOINT
    assert env["POWERTOOLS_SERVICE_NAME"] == "fraudsys"
    # Lambda reserves these; the runtime sets them
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION"} & set(env)


def test_updater_environment_has_redis_and_dead_letters(deployment: Deployment, lam: Any) -> None:
    env = lam.get_function_configuration(FunctionName="fraudsys-local-updater")["Environment"]["Variables"]

    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["REDIS_TIMEOUT_MS"] == str(STAGE.updater.redis_timeout_ms)
    assert env["DEAD_LETTER_URI"] == "s3://fraudsys-dead-letters/updater"
    assert env["AWS_ENDPOINT_URL_S3"] == LAMBDA_AWS_ENDPOINT
    assert "STREAM_KIND" not in env  # the updater consumes, it does not publish


def test_event_source_mapping_uses_the_stage_batching_and_partial_failures(
    deployment: Deployment, lam: Any
) -> None:
    mappings = lam.list_event_source_mappings(FunctionName="fraudsys-local-updater")["EventSourceMappings"]

    assert len(mappings) == 1
    m = mappings[0]
    assert m["UUID"] == deployment.event_source_mapping_uuid
    assert m["EventSourceArn"] == deployment.stream_arn
    assert m["FunctionArn"] == deployment.updater_arn
    assert m["BatchSize"] == 250
    assert m["MaximumBatchingWindowInSeconds"] == 3
    assert m["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert m["StartingPosition"] == "TRIM_HORIZON"
    assert m["BisectBatchOnFunctionError"] is True
    assert m["MaximumRetryAttempts"] == 7
    assert m["MaximumRecordAgeInSeconds"] == 3600
    assert m["ParallelizationFactor"] == 2


def test_rest_api_proxies_predict_and_health_to_the_scorer(deployment: Deployment, apigw: Any) -> None:
    resources = {r["path"]: r for r in apigw.get_resources(restApiId=deployment.api_id)["items"]}
    uri = f"arn:aws:apigateway:us-east-1:lambda:path/2015-03-31/functions/{deployment.scorer_arn}/invocations"

    assert set(resources) == {"/", "/predict", "/health"}
    for path, method in API_ROUTES:
        got = apigw.get_method(
            restApiId=deployment.api_id, resourceId=resources[path]["id"], httpMethod=method
        )
        assert got["authorizationType"] == "NONE"
        integration = got["methodIntegration"]
        assert integration["type"] == "AWS_PROXY"
        assert integration["httpMethod"] == "POST"
        assert integration["uri"] == uri
    stages = [s["stageName"] for s in apigw.get_stages(restApiId=deployment.api_id)["item"]]
    assert stages == ["local"]
    assert deployment.invoke_url == (
        f"{deployment.endpoint}/restapis/{deployment.api_id}/local/_user_request_/predict"
    )
    assert deployment.health_url.endswith(f"/restapis/{deployment.api_id}/local/_user_request_/health")


def test_api_gateway_may_invoke_the_scorer(deployment: Deployment, lam: Any) -> None:
    policy = json.loads(lam.get_policy(FunctionName="fraudsys-local-scorer")["Policy"])

    statements = policy["Statement"]
    assert len(statements) == 1
    assert statements[0]["Principal"] in ({"Service": "apigateway.amazonaws.com"}, "apigateway.amazonaws.com")
    assert deployment.api_id in json.dumps(statements[0]["Condition"])


def test_the_champion_of_the_local_model_store_is_published_to_the_models_bucket(
    deployment: Deployment, moto_endpoint: str
) -> None:
    s3 = client("s3", moto_endpoint)

    pointer = json.loads(
        s3.get_object(Bucket="fraudsys-models", Key="models/fraudsys/champion.json")["Body"].read()
    )
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="fraudsys-models", Prefix="models/")["Contents"]}

    assert deployment.champion_version == "7"
    assert pointer["version"] == "7"
    assert {
        "models/fraudsys/versions/7/model.ubj",
        "models/fraudsys/versions/7/baseline.ubj",
        "models/fraudsys/versions/7/manifest.json",
    } <= keys


def test_deploying_again_updates_in_place(
    deployment: Deployment, cfg: LocalStackConfig, lam: Any, apigw: Any
) -> None:
    # given a second run with a changed setting
    again = LocalStackDeployer(replace(cfg, log_level="DEBUG"), stage=STAGE).deploy()

    # then the same resources, updated, and nothing duplicated
    assert again.api_id == deployment.api_id
    assert again.event_source_mapping_uuid == deployment.event_source_mapping_uuid
    assert again.layer_version_arn == deployment.layer_version_arn  # same zip: no new layer version
    assert again.scorer_arn == deployment.scorer_arn
    assert (
        len(lam.list_event_source_mappings(FunctionName="fraudsys-local-updater")["EventSourceMappings"]) == 1
    )
    assert len(lam.list_layer_versions(LayerName="fraudsys-local-xgboost")["LayerVersions"]) == 1
    names = [f["FunctionName"] for f in lam.list_functions()["Functions"]]
    assert sorted(n for n in names if n.startswith("fraudsys-local")) == [
        "fraudsys-local-scorer",
        "fraudsys-local-updater",
    ]
    apis = [a for a in apigw.get_rest_apis()["items"] if a["name"] == "fraudsys-local-scorer"]
    assert len(apis) == 1
    assert len(apigw.get_resources(restApiId=again.api_id)["items"]) == 3
    env = lam.get_function_configuration(FunctionName="fraudsys-local-scorer")["Environment"]["Variables"]
    assert env["POWERTOOLS_LOG_LEVEL"] == "DEBUG"


def test_the_default_stage_is_the_cdk_dev_stage() -> None:
    dev = dev_stage_config()

    assert dev.name == "dev"
    assert dev.stream_kind == "kinesis"
    assert LocalStackDeployer().stage == dev


def test_endpoint_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCALSTACK_ENDPOINT", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert default_endpoint() == "http://localhost:4566"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://aws-endpoint:4566")
    assert default_endpoint() == "http://aws-endpoint:4566"
    monkeypatch.setenv("LOCALSTACK_ENDPOINT", "http://localstack:4566")
    assert default_endpoint() == "http://localstack:4566"


def test_no_endpoint_is_a_clear_error(tmp_path: Path) -> None:
    cfg = LocalStackConfig(
        endpoint=f"http://127.0.0.1:{free_port()}", layer_zip=dummy_layer(tmp_path / "l.zip")
    )

    with pytest.raises(LocalStackError, match=r"no AWS endpoint answers at .*docker compose"):
        LocalStackDeployer(cfg).deploy()


def test_a_model_store_without_champion_is_a_clear_error(moto_endpoint: str, tmp_path: Path) -> None:
    cfg = LocalStackConfig(endpoint=moto_endpoint, model_store=tmp_path)

    with pytest.raises(LocalStackError, match="no champion"):
        LocalStackDeployer(cfg).publish_champion(tmp_path)


def test_destroy_removes_its_stack_only_and_is_repeatable(
    deployment: Deployment, moto_endpoint: str, tmp_path: Path, lam: Any, apigw: Any
) -> None:
    # given a second stack (other prefix and buckets) next to the module's deployment
    cfg = LocalStackConfig(
        endpoint=moto_endpoint,
        layer_zip=dummy_layer(tmp_path / "l.zip"),
        prefix="fraudsys-tmp",
        models_bucket="fraudsys-tmp-models",
        dead_letter_bucket="fraudsys-tmp-dead-letters",
    )
    LocalStackDeployer(cfg, stage=STAGE).deploy()

    # when it is destroyed
    removed = LocalStackDeployer(cfg).destroy()

    # then none of its resources are left, and the other stack is untouched
    functions = {f["FunctionName"] for f in lam.list_functions()["Functions"]}
    assert not {n for n in functions if n.startswith("fraudsys-tmp")}
    assert {"fraudsys-local-scorer", "fraudsys-local-updater"} <= functions
    assert lam.list_event_source_mappings(FunctionName="fraudsys-tmp-updater")["EventSourceMappings"] == []
    assert lam.list_layer_versions(LayerName="fraudsys-tmp-xgboost")["LayerVersions"] == []
    assert [a["name"] for a in apigw.get_rest_apis()["items"]] == ["fraudsys-local-scorer"]
    buckets = {b["Name"] for b in client("s3", moto_endpoint).list_buckets()["Buckets"]}
    assert not {b for b in buckets if b.startswith("fraudsys-tmp")}
    assert "fraudsys-models" in buckets
    assert client("kinesis", moto_endpoint).list_streams()["StreamNames"] == ["fraudsys-local-events"]
    assert any(r.startswith("REST API") for r in removed)
    assert any(r == "role fraudsys-tmp-lambda" for r in removed)
    assert LocalStackDeployer(cfg).destroy() == []


def test_bundling_puts_the_layer_packages_at_the_code_root(tmp_path: Path) -> None:
    code = code_zip()
    layer = dummy_layer(tmp_path / "l.zip")

    bundled = bundle_with_layer(code, layer, cache_dir=tmp_path / "cache")

    names = zipfile.ZipFile(io.BytesIO(bundled)).namelist()
    assert "fraudsys_dummy_layer.py" in names
    assert "handlers/predict.py" in names
    assert not [n for n in names if n.startswith("python/")]
    assert bundle_with_layer(code, layer, cache_dir=None) == bundled  # deterministic
    assert bundle_with_layer(code, layer, cache_dir=tmp_path / "cache") == bundled  # from the cache
    assert len(list((tmp_path / "cache").glob("code-with-layer-*.zip"))) == 1


def test_layer_is_bundled_on_localstack_community_only(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployer = LocalStackDeployer(LocalStackConfig(endpoint=moto_endpoint))
    assert deployer.bundles_layer() is False  # moto is not LocalStack: layers as on AWS

    health = {"services": {"lambda": "available"}, "edition": "community", "version": "4.4.0"}
    monkeypatch.setattr(localstack_module, "localstack_health", lambda *_a, **_k: health)
    assert deployer.bundles_layer() is True
    health["edition"] = "pro"
    assert deployer.bundles_layer() is False
    assert LocalStackDeployer(LocalStackConfig(endpoint=moto_endpoint, bundle_layer=True)).bundles_layer()


def test_a_bundled_deploy_ships_layer_and_code_in_one_zip_and_still_attaches_the_layer(
    moto_endpoint: str, tmp_path: Path, lam: Any
) -> None:
    layer = dummy_layer(tmp_path / "l.zip")
    cfg = LocalStackConfig(
        endpoint=moto_endpoint,
        layer_zip=layer,
        bundle_layer=True,
        bundle_cache=tmp_path / "cache",
        prefix="fraudsys-bundled",
        models_bucket="fraudsys-bundled-models",
        dead_letter_bucket="fraudsys-bundled-dead-letters",
    )
    try:
        deployed = LocalStackDeployer(cfg, stage=STAGE).deploy()

        conf = lam.get_function(FunctionName="fraudsys-bundled-scorer")["Configuration"]
        assert deployed.layer_bundled is True
        assert conf["CodeSha256"] == code_sha256(bundle_with_layer(code_zip(), layer, None))
        assert [x["Arn"] for x in conf["Layers"]] == [deployed.layer_version_arn]
    finally:
        LocalStackDeployer(cfg).destroy()


# What LocalStack's python3.13 runtime would run, without Docker: the deployed zip unpacked, the
# runtime's boto3 beside it, nothing else importable (-I -S), the deployed environment re-pointed
# at moto and a local redis-server, driven with API Gateway and Kinesis events.
RUNTIME_SCRIPT = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import boto3
from handlers import predict, update_features

class Context:
    function_name, function_version, memory_limit_in_mb = "fraudsys-local", "$LATEST", 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:fraudsys-local"
    aws_request_id, log_group_name, log_stream_name = "request-1", "/aws/lambda/fraudsys-local", "local"
    def get_remaining_time_in_millis(self):
        return 30000

events = json.load(sys.stdin)
out = {name: predict.handler(event, Context()) for name, event in events.items()}
kinesis = boto3.client("kinesis")
stream = out["stream"] = __import__("os").environ["KINESIS_STREAM_NAME"]
shard = kinesis.list_shards(StreamName=stream)["Shards"][0]["ShardId"]
iterator = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
records = kinesis.get_records(ShardIterator=iterator["ShardIterator"])["Records"]
import base64
event = {"Records": [{
    "kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": r["PartitionKey"],
                "sequenceNumber": r["SequenceNumber"], "data": base64.b64encode(r["Data"]).decode(),
                "approximateArrivalTimestamp": r["ApproximateArrivalTimestamp"].timestamp()},
    "eventSource": "aws:kinesis", "eventVersion": "1.0", "eventID": "shardId-0:" + r["SequenceNumber"],
    "eventName": "aws:kinesis:record", "awsRegion": "us-east-1",
    "eventSourceARN": "arn:aws:kinesis:us-east-1:000000000000:stream/" + stream} for r in records]}
out["updater"] = update_features.handler(event, Context())
out["records"] = len(records)
import numpy, pydantic, redis, xgboost
out["origins"] = {m.__name__: m.__file__ for m in (boto3, numpy, pydantic, redis, xgboost)}
print(json.dumps(out))
"""
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "dateutil", "six.py", "urllib3")


@pytest.mark.slow
@pytest.mark.integration
def test_the_deployed_bundle_scores_and_updates_with_the_deployed_environment(
    moto_endpoint: str, model_store: Path, redis_service: Service, tmp_path: Path
) -> None:
    import subprocess
    import sys
    import sysconfig

    import redis

    from local_stack.events import api_gateway_event
    from local_stack.localstack import build_layer_zip

    # given the real layer, bundled as for LocalStack community, deployed (to moto) with a champion
    cfg = LocalStackConfig(
        endpoint=moto_endpoint,
        layer_zip=build_layer_zip(),
        bundle_layer=True,
        bundle_cache=tmp_path / "cache",
        model_store=model_store,
        prefix="fraudsys-pkg",
        models_bucket="fraudsys-pkg-models",
        dead_letter_bucket="fraudsys-pkg-dead-letters",
    )
    deployer = LocalStackDeployer(cfg)
    deployed = deployer.deploy()
    bundle = bundle_with_layer(code_zip(), cfg.layer_zip or Path(), cfg.bundle_cache)
    conf = client("lambda", moto_endpoint).get_function_configuration(FunctionName="fraudsys-pkg-scorer")
    assert conf["CodeSha256"] == code_sha256(bundle)
    task, runtime = tmp_path / "task", tmp_path / "runtime"
    zipfile.ZipFile(io.BytesIO(bundle)).extractall(task)
    runtime.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for name in RUNTIME_PACKAGES:
        (runtime / name).symlink_to(site / name)
    env = {
        **deployer.updater_environment(),
        **deployer.scorer_environment(),
        "REDIS_URL": f"redis://127.0.0.1:{redis_service.port}/0",
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ENDPOINT_URL_S3": moto_endpoint,
        "AWS_ENDPOINT_URL_KINESIS": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",  # pragma: allowlist secret
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
    }
    transaction_id = f"pkg-{uuid.uuid4().hex[:12]}"
    events = {
        "predict": api_gateway_event(
            "POST", "/predict", json.dumps(transaction(transaction_id)), {"Content-Type": "application/json"}
        ),
        "health": api_gateway_event("GET", "/health"),
    }

    # when the runtime invokes the scorer, then the updater with what the scorer published
    run = subprocess.run(
        [sys.executable, "-I", "-S", "-c", RUNTIME_SCRIPT, str(task), str(runtime)],
        input=json.dumps(events),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )

    # then the answer is the champion's, the event went through Kinesis into Redis
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["predict"]["statusCode"] == 200, out["predict"]
    body = json.loads(out["predict"]["body"])
    assert body["transaction_id"] == transaction_id
    assert body["model_version"] == deployed.champion_version == "7"
    assert body.get("degraded") in (False, None)
    health = json.loads(out["health"]["body"])
    assert out["health"]["statusCode"] == 200, health
    assert health["dependencies"]["redis"]["ok"] is True
    assert out["stream"] == deployed.stream_name
    assert out["records"] == 1
    assert out["updater"] == {"batchItemFailures": []}
    store = redis.Redis(port=redis_service.port, decode_responses=True)
    assert store.zscore(merchant_set(MERCHANT), transaction_id) is not None  # in the merchant's set
    assert out["origins"]["xgboost"].startswith(str(task))
    assert out["origins"]["numpy"].startswith(str(task))
    assert out["origins"]["boto3"].startswith(str(runtime))
    LocalStackDeployer(cfg).destroy()


def test_cli_deploys_and_prints_the_invoke_url(moto_endpoint: str, tmp_path: Path) -> None:
    layer = dummy_layer(tmp_path / "l.zip")

    result = CliRunner().invoke(
        app,
        ["local", "localstack-deploy", "--endpoint", moto_endpoint, "--layer-zip", str(layer)],
        env={"COLUMNS": "250"},
    )

    assert result.exit_code == 0, result.output
    assert "invoke URL: " in result.output
    assert "/_user_request_/predict" in result.output
    assert "fraudsys-local-scorer" in result.output


def test_cli_without_endpoint_exits_with_the_hint() -> None:
    result = CliRunner().invoke(
        app,
        ["local", "localstack-deploy", "--endpoint", f"http://127.0.0.1:{free_port()}"],
        env={"COLUMNS": "250"},
    )

    assert result.exit_code == 1
    assert "no AWS endpoint answers" in result.output
    assert "docker-compose.localstack.yml" in result.output


def test_compose_file_pins_images_wires_the_lambda_network_and_checks_health() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    services = compose["services"]
    localstack, redis_service, kafka = services["localstack"], services["redis"], services["kafka"]
    network = compose["networks"]["fraudsys"]["name"]

    assert re.fullmatch(r"localstack/localstack:4\.\d+(\.\d+)?", localstack["image"])
    assert redis_service["image"] == "redis:7"
    assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", kafka["image"])
    assert set(localstack["environment"]["SERVICES"].split(",")) == {
        "s3", "kinesis", "lambda", "apigateway", "iam", "logs", "sts", "secretsmanager"
    }  # fmt: skip
    assert "/var/run/docker.sock:/var/run/docker.sock" in localstack["volumes"]
    assert localstack["environment"]["LAMBDA_DOCKER_NETWORK"] == network
    assert all(s["networks"] == ["fraudsys"] for s in services.values())
    assert all("healthcheck" in s for s in services.values())
    assert "127.0.0.1:4566:4566" in localstack["ports"]
    # the Lambdas' REDIS_URL names the compose service
    assert urlparse(LocalStackConfig().redis_url).hostname in services
    env = kafka["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"]
    assert set(env["KAFKA_ADVERTISED_LISTENERS"].split(",")) == {
        "INTERNAL://kafka:29092",
        "HOST://localhost:9092",
    }
    assert "127.0.0.1:9092:9092" in kafka["ports"]


# ---- against a running LocalStack (Docker) -------------------------------------------------------


def localstack_endpoint() -> str:
    return os.environ.get("LOCALSTACK_ENDPOINT") or "http://localhost:4566"


def http(url: str, body: dict[str, Any] | None = None, timeout: float = 120.0) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 - the LocalStack URL of this test
        url, data=data, headers={"Content-Type": "application/json"}, method="POST" if data else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"{}")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


MERCHANT = "fraud_Kirlin and Sons"


def transaction(transaction_id: str) -> dict[str, Any]:
    return {
        "transaction_id": transaction_id,
        "cc_num": "4111111111111111",
        "merchant_name": MERCHANT,
        "category": "shopping_net",
        "amount_usd": 912.4,
        "transaction_time": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "lat": 40.7,
        "long": -74.0,
        "city_pop": 8_000_000,
        "merch_lat": 41.2,
        "merch_long": -75.1,
    }


@pytest.fixture(scope="module")
def localstack(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    endpoint = localstack_endpoint()
    health = localstack_health(endpoint, timeout=2.0)
    if health is None:
        pytest.skip(
            f"no LocalStack answers at {endpoint}/_localstack/health: start it with "
            "`docker compose -f docker-compose.localstack.yml up -d` (needs Docker) "
            "or set LOCALSTACK_ENDPOINT"
        )
    missing = {"s3", "kinesis", "lambda", "apigateway", "iam"} - set(health.get("services", {}))
    if missing:
        pytest.skip(f"LocalStack at {endpoint} does not run {sorted(missing)}")
    store = tmp_path_factory.mktemp("ls_model_store")
    publish_test_model(str(store), version="1")
    # The real layer (layers/build.py, cached) unless FRAUDSYS_LAYER_ZIP points at a prebuilt one.
    layer = os.environ.get("FRAUDSYS_LAYER_ZIP")
    # Own names, so a stack deployed with `fraudsys local localstack-deploy` is left alone.
    cfg = LocalStackConfig(
        endpoint=endpoint,
        model_store=store,
        layer_zip=Path(layer) if layer else None,
        prefix="fraudsys-test",
        models_bucket="fraudsys-test-models",
        dead_letter_bucket="fraudsys-test-dead-letters",
        model_pointer_ttl_seconds=1,
    )
    deployment = LocalStackDeployer(cfg).deploy()
    warm_up(deployment.health_url)
    return deployment


def warm_up(url: str, timeout: float = 600.0) -> None:
    """The first call pulls the runtime image and cold-starts the scorer: longer than API Gateway waits."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, _ = http(url, timeout=60)
            if status not in (502, 504):
                return
            last = status
        except (OSError, ValueError) as exc:
            last = exc
        time.sleep(2.0)
    raise AssertionError(f"the scorer did not answer {url} within {timeout:.0f} s (last: {last})")


@pytest.mark.localstack
@pytest.mark.slow
def test_localstack_predict_through_api_gateway(localstack: Deployment) -> None:
    transaction_id = f"ls-{uuid.uuid4().hex[:12]}"

    status, body = http(localstack.invoke_url, transaction(transaction_id))

    assert status == 200, body
    assert body["transaction_id"] == transaction_id
    assert isinstance(body["is_fraud"], bool)
    assert 0.0 <= body["fraud_probability"] <= 1.0
    assert body["model_version"] == "1"
    assert body.get("degraded") in (False, None), "the scorer did not reach Redis (see docs/localstack.md)"


@pytest.mark.localstack
@pytest.mark.slow
def test_localstack_health_and_bad_input(localstack: Deployment) -> None:
    status, health = http(localstack.health_url)
    bad_status, bad = http(localstack.invoke_url, {**transaction("ls-bad"), "amount_usd": "lots"})

    assert status == 200, health
    assert health["model_version"] == "1"
    assert health["dependencies"]["redis"]["ok"] is True, health
    assert bad_status == 422
    assert "amount_usd" in json.dumps(bad)


@pytest.mark.localstack
@pytest.mark.slow
def test_localstack_kinesis_event_source_feeds_redis(localstack: Deployment) -> None:
    import redis

    url = os.environ.get("LOCALSTACK_REDIS_URL", "redis://127.0.0.1:6390/0")
    store = redis.Redis.from_url(url, decode_responses=True, socket_timeout=2)
    try:
        store.ping()
    except redis.RedisError as exc:
        pytest.skip(f"the compose Redis is not reachable at {url} (set LOCALSTACK_REDIS_URL): {exc}")
    transaction_id = f"ls-{uuid.uuid4().hex[:12]}"

    # when the scorer publishes the scored transaction to Kinesis
    status, _ = http(localstack.invoke_url, transaction(transaction_id))

    # then the event source mapping hands it to the updater, which applies it to Redis
    assert status == 200
    wait_until(
        lambda: store.zscore(merchant_set(MERCHANT), transaction_id) is not None,
        180,
        "the updater to apply it",
    )


@pytest.mark.localstack
@pytest.mark.slow
def test_localstack_poison_record_goes_to_the_dead_letter_bucket(localstack: Deployment) -> None:
    endpoint, bucket = localstack.endpoint, localstack.buckets[1]
    s3, kinesis = client("s3", endpoint), client("kinesis", endpoint)
    marker = f"poison-{uuid.uuid4().hex[:8]}"

    kinesis.put_record(
        StreamName=localstack.stream_name, Data=f"not json {marker}".encode(), PartitionKey="x"
    )

    def dead_lettered() -> bool:
        listing = s3.list_objects_v2(Bucket=bucket, Prefix="updater/")
        for obj in listing.get("Contents", []):
            letter = json.loads(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
            if marker in base64.b64decode(letter["payload_b64"]).decode(errors="replace"):
                return True
        return False

    wait_until(dead_lettered, 180, "the poison record in the dead-letter bucket")


def merchant_set(merchant: str) -> str:
    """The merchant's transaction set (fraud_adapters.redis_store, layout 4)."""
    from fraud_adapters.redis_store import merchant_hash

    return f"fs:{{m:{merchant_hash(merchant).hex()}}}:e"
