"""The CDK app in LocalStack: cdk.json's ``localstack`` stage, deployed with ``cdklocal``.

The AWS resources are defined once, in ``cdk_app/``; a ``platform: localstack`` stage leaves out
what LocalStack's community edition lacks (docs/localstack.md). This module only drives the tools:

- ``start_localstack``: LocalStack itself without Docker, from the ``localstack_host`` environment
  (``uv sync --project localstack_host``), whose Lambda executor runs the handlers as host
  processes. With Docker, ``docker compose -f docker-compose.localstack.yml up`` does this part.
- ``deploy``: ``cdklocal bootstrap`` and ``cdklocal deploy`` of the stage (npm ``aws-cdk-local``,
  installed by ``npm ci``), then what it created: the API's id and key, the functions, the
  stream and the buckets, read back from CloudFormation.
- ``publish_champion``: a local model store's champion into the deployed models bucket.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local_stack.services import free_port, http_request

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST_PROJECT = REPO_ROOT / "localstack_host"
CDKLOCAL = REPO_ROOT / "node_modules" / ".bin" / "cdklocal"
STAGE = "localstack"
STACKS = f"FraudSys-{STAGE}/*"
DEFAULT_ENDPOINT = "http://localhost:4566"
REGION = "us-east-1"
#: LocalStack's dummy credentials: it takes any, and derives the account from the key id
DUMMY_AWS = "test"
ACCOUNT = "000000000000"  # LocalStack's account for the access key "test"
#: the host executor plugin (localstack_host/pyproject.toml's entry point)
HOST_EXECUTOR = "fraudsys-host"
REQUIRED_SERVICES = frozenset({"cloudformation", "s3", "lambda", "apigateway", "kinesis", "iam", "sqs"})
HANDLERS = {
    "handlers.predict.handler": "scorer",
    "handlers.update_features.handler": "updater",
    "handlers.archive_events.handler": "archiver",
    "handlers.relay_outbox.handler": "relay",
}


class LocalStackError(RuntimeError):
    """LocalStack is not there, not installed, or a deploy step failed."""


def default_endpoint() -> str:
    """``LOCALSTACK_ENDPOINT``, else ``http://localhost:4566`` (the compose file's port)."""
    return os.environ.get("LOCALSTACK_ENDPOINT") or DEFAULT_ENDPOINT


def localstack_health(endpoint: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """LocalStack's ``/_localstack/health`` document, or None when no LocalStack answers there."""
    try:
        status, body = http_request("GET", f"{endpoint.rstrip('/')}/_localstack/health", timeout=timeout)
        data = json.loads(body) if status == 200 else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "services" in data else None


def aws_environment(endpoint: str) -> dict[str, str]:
    """The dummy credentials, region and endpoints of every client of LocalStack (the CDK CLI's
    S3 client needs its own endpoint variable; an IP address makes it use path-style URLs)."""
    endpoint = endpoint.replace("//localhost:", "//127.0.0.1:")
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": DUMMY_AWS,
        "AWS_SECRET_ACCESS_KEY": DUMMY_AWS,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
    }


def client(service: str, endpoint: str) -> Any:
    import boto3

    env = aws_environment(endpoint)
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=REGION,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


# -- LocalStack without Docker --------------------------------------------------------------------


def host_python() -> Path | None:
    """The interpreter of the ``localstack_host`` environment, if it is installed."""
    python = HOST_PROJECT / ".venv" / "bin" / "python"
    return python if python.is_file() else None


@dataclass
class LocalStackProcess:
    """A LocalStack started by ``start_localstack``; ``stop`` ends its process group: LocalStack
    and the function processes its executor started."""

    endpoint: str
    process: subprocess.Popen[bytes]
    root: Path
    log: Path
    started_in: float

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass


def start_localstack(root: Path, port: int | None = None, timeout: float = 120.0) -> LocalStackProcess:
    """LocalStack (community) as a host process on ``127.0.0.1:port``, its files under ``root``.

    ``OVERRIDE_IN_DOCKER=0``: it would think it runs in a container otherwise. The temporary
    folder is ``root/tmp``: LocalStack keeps S3 objects and unzipped functions in it."""
    python = host_python()
    if python is None:
        raise LocalStackError(
            f"LocalStack is not installed: run `uv sync --project {HOST_PROJECT.name} --frozen` "
            "(make setup does) or start it with docker compose -f docker-compose.localstack.yml up"
        )
    port = port or free_port()
    tmp = root / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    log = root / "localstack.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LOCALSTACK_"))},
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "OVERRIDE_IN_DOCKER": "0",
        "FILESYSTEM_ROOT": str(root / "fs"),
        "TMPDIR": str(tmp),
        "LAMBDA_RUNTIME_EXECUTOR": HOST_EXECUTOR,
        "AWS_DEFAULT_REGION": REGION,
        "DNS_ADDRESS": "0",  # no DNS server of its own (nothing here resolves through it)
        "SKIP_SSL_CERT_DOWNLOAD": "1",
        "DISABLE_EVENTS": "1",
        # the scorer imports xgboost and loads the champion at its first invocation
        "LAMBDA_RUNTIME_ENVIRONMENT_TIMEOUT": "120",
    }
    started = time.monotonic()
    with log.open("ab") as out:
        process = subprocess.Popen(  # nosec B603
            [str(python), "-m", "localstack.runtime.main"],
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = LocalStackProcess(f"http://127.0.0.1:{port}", process, root, log, 0.0)
    deadline = started + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LocalStackError(f"LocalStack exited with {process.returncode}: {tail(log)}")
        health = localstack_health(running.endpoint, timeout=1.0)
        if health is not None and set(health["services"]) >= REQUIRED_SERVICES:
            running.started_in = time.monotonic() - started
            return running
        time.sleep(0.5)
    running.stop()
    raise LocalStackError(f"LocalStack did not answer within {timeout:.0f} s: {tail(log)}")


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


# -- the deploy -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """What ``cdklocal deploy`` created, read back from LocalStack."""

    endpoint: str
    api_id: str
    api_stage: str
    api_key: str
    functions: dict[str, str]  # scorer/updater/archiver/relay -> function name
    stream_name: str
    buckets: dict[str, str]  # models, deadletters, lake, ... -> bucket name
    environment: dict[str, str] = field(default_factory=dict)  # the scorer's
    timings: dict[str, float] = field(default_factory=dict)

    def url(self, path: str) -> str:
        """The API's URL at LocalStack, path-style (``*.localstack.cloud`` needs DNS)."""
        base = self.endpoint.rstrip("/")
        return f"{base}/_aws/execute-api/{self.api_id}/{self.api_stage}/{path.lstrip('/')}"

    @property
    def model_store_uri(self) -> str:
        return self.environment["MODEL_STORE_URI"]


def _run(argv: list[str], env: dict[str, str], cwd: Path, what: str, timeout: float) -> None:
    try:
        done = subprocess.run(  # nosec B603
            argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LocalStackError(f"{what} took more than {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise LocalStackError(f"{what} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")


def deploy(
    endpoint: str,
    redis_url: str | None = None,
    *,
    bundle_layers: bool = False,
    step: Callable[[str], None] = lambda _message: None,
    timeout: float = 900.0,
) -> Deployment:
    """``cdk synth`` of the ``localstack`` stage and ``cdklocal bootstrap`` at ``endpoint`` side by
    side, then ``cdklocal deploy`` of the synthesized stacks.

    ``redis_url``: where the functions reach Redis (default: the stage's, the compose file's
    Redis from the host). ``bundle_layers``: the layers' packages inside each function's code
    too, for LocalStack's Lambda containers (Docker), which do not apply layers. Running it again
    updates the stacks in place."""
    health = localstack_health(endpoint)
    if health is None:
        raise LocalStackError(
            f"no LocalStack answers at {endpoint}: start it with "
            "`docker compose -f docker-compose.localstack.yml up -d --wait` or set LOCALSTACK_ENDPOINT"
        )
    if not CDKLOCAL.exists():
        raise LocalStackError(f"{CDKLOCAL.relative_to(REPO_ROOT)} is missing: run `npm ci` (make setup does)")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        **aws_environment(endpoint),
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        "CDK_DISABLE_CLI_TELEMETRY": "true",
    }
    timings: dict[str, float] = {}
    context = [f"fraudsys:stages={STAGE}", "fraudsys:nag=false"]  # cdk-nag runs in tests/infra
    if redis_url:
        context.append(f"fraudsys:redis_url={redis_url}")
    if bundle_layers:
        context.append("fraudsys:bundle_layers=true")
    with tempfile.TemporaryDirectory(prefix="fraudsys-cdklocal-") as tmp:
        work = Path(tmp)
        assembly = work / "cdk.out"
        started = time.monotonic()
        step(f"cdk synth {STACKS}, cdklocal bootstrap")
        # The synth (jsii, the layers) and the bootstrap stack are independent: side by side.
        synth_log = work / "synth.log"
        with synth_log.open("wb") as out:
            synth = subprocess.Popen(  # nosec B603
                [
                    str(CDKLOCAL),
                    "synth",
                    *(arg for c in context for arg in ("-c", c)),
                    "--quiet",
                    "--no-notices",
                    "--output",
                    str(assembly),
                ],
                env=env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            # from a folder without cdk.json: bootstrapping an explicit environment needs no synth
            _run(
                [str(CDKLOCAL), "bootstrap", f"aws://{ACCOUNT}/{REGION}", "--no-notices"],
                env,
                work,
                "cdklocal bootstrap",
                timeout,
            )
            timings["bootstrap_s"] = time.monotonic() - started
            code = synth.wait(timeout=timeout)
        finally:
            if synth.poll() is None:
                synth.kill()
                synth.wait()
        if code != 0:
            raise LocalStackError(f"cdk synth failed ({code}):\n{tail(synth_log, 4000)}")
        timings["synth_s"] = time.monotonic() - started
        started = time.monotonic()
        step(f"cdklocal deploy {STACKS}")
        _run(
            [
                str(CDKLOCAL),
                "deploy",
                STACKS,
                "--app",
                str(assembly),
                "--require-approval",
                "never",
                "--no-notices",
            ],
            env,
            REPO_ROOT,
            "cdklocal deploy",
            timeout,
        )
        timings["deploy_s"] = time.monotonic() - started
    deployment = read_deployment(endpoint)
    return Deployment(**{**deployment.__dict__, "timings": timings})


def read_deployment(endpoint: str) -> Deployment:
    """The deployed stage's resources, found through CloudFormation (no names are assumed)."""
    cfn, apigw, lam = (
        client("cloudformation", endpoint),
        client("apigateway", endpoint),
        client("lambda", endpoint),
    )
    resources: dict[str, list[dict[str, Any]]] = {}
    for part in ("data", "serving"):
        stack = f"fraudsys-{STAGE}-{part}"
        pages = cfn.get_paginator("list_stack_resources").paginate(StackName=stack)
        resources[part] = [r for page in pages for r in page["StackResourceSummaries"]]

    def physical(part: str, kind: str) -> list[dict[str, Any]]:
        return [r for r in resources[part] if r["ResourceType"] == kind]

    api_id = physical("serving", "AWS::ApiGateway::RestApi")[0]["PhysicalResourceId"]
    key_id = physical("serving", "AWS::ApiGateway::ApiKey")[0]["PhysicalResourceId"]
    stage = apigw.get_stages(restApiId=api_id)["item"][0]["stageName"]
    functions, environment = {}, {}
    for resource in physical("serving", "AWS::Lambda::Function"):
        conf = lam.get_function_configuration(FunctionName=resource["PhysicalResourceId"])
        role = HANDLERS.get(conf["Handler"])
        if role is not None:
            functions[role] = conf["FunctionName"]
            if role == "scorer":
                environment = dict(conf.get("Environment", {}).get("Variables", {}))
    names = [r["PhysicalResourceId"] for r in physical("data", "AWS::S3::Bucket")]
    # cdk_app.constructs.storage names them fraudsys-<stage>-<kind>-<account>-<region>
    buckets = {
        kind: name
        for kind in ("rawdata", "features", "models", "deadletters", "lake")
        for name in names
        if name.startswith(f"fraudsys-{STAGE}-{kind}-")
    }
    stream = physical("data", "AWS::Kinesis::Stream")[0]["PhysicalResourceId"]
    return Deployment(
        endpoint=endpoint,
        api_id=api_id,
        api_stage=stage,
        api_key=apigw.get_api_key(apiKey=key_id, includeValue=True)["value"],
        functions=functions,
        stream_name=stream,
        buckets=buckets,
        environment=environment,
    )


def publish_champion(deployment: Deployment, model_store: Path, model_name: str = "fraudsys") -> str:
    """Copy the champion of a local model store root into the deployed models bucket."""
    from fraud_adapters.blobs import LocalBlobStore, S3BlobStore
    from fraud_adapters.model_store import ModelStore

    source = ModelStore(LocalBlobStore(model_store), model_name)
    version = source.champion_version()
    if version is None:
        raise LocalStackError(f"no champion in {model_store / model_name}: run `fraudsys pipeline` first")
    files = source.load(version)
    s3 = client("s3", deployment.endpoint)
    target = ModelStore(S3BlobStore(deployment.model_store_uri, s3), model_name)
    target.publish(files.manifest, files.model, files.baseline, champion=True)
    return version


def destroy(endpoint: str, timeout: float = 600.0) -> None:
    """``cdklocal destroy`` of the stage's stacks."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **aws_environment(endpoint)}
    _run(
        [
            str(CDKLOCAL),
            "destroy",
            STACKS,
            "--force",
            "-c",
            f"fraudsys:stages={STAGE}",
            "-c",
            "fraudsys:nag=false",
        ],
        env,
        REPO_ROOT,
        "cdklocal destroy",
        timeout,
    )
