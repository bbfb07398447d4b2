"""A small IAM evaluator over synthesized CloudFormation templates, and a recorder of the AWS calls
code makes (botocore ``before-call`` hooks on every client, MLflow REST requests).

``Resolver`` turns the intrinsic functions CDK emits (``Ref``, ``Fn::GetAtt``, ``Fn::Join``,
``Fn::Select``, ``Fn::Split``, ``Fn::GetStackOutput``, ``Fn::ImportValue``) into strings, given the
physical values a test chose for the resources (bucket names, stream names, secret ARNs, ...).
A ``Ref`` to a resource without a physical value resolves to ``<unresolved:LogicalId>``, which no
ARN of a recorded call can match except through a ``*`` resource.

``RolePolicy.allows(action, resource, context)`` evaluates the role's identity policies (inline
``AWS::IAM::Policy`` documents attached to the role and the role's own ``Policies``): explicit deny
wins, an allow needs the action (wildcards, case-insensitive), the resource (ARN wildcards) and
every condition (``StringEquals``/``StringLike`` on keys the call supplies) to match.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

PARTITION = "aws"
ACCOUNT = "123456789012"
REGION = "us-east-1"


@dataclass(frozen=True)
class StackTemplate:
    name: str  # the CloudFormation stack name (fraudsys-dev-data)
    template: dict[str, Any]

    @property
    def resources(self) -> dict[str, Any]:
        resources: dict[str, Any] = self.template.get("Resources", {})
        return resources


def load_assembly(folder: Path) -> dict[str, StackTemplate]:
    """Every stack of a synthesized stage assembly (``assembly-FraudSys-<stage>``), by stack name."""
    manifest = json.loads((folder / "manifest.json").read_text())
    out = {}
    for artifact in manifest["artifacts"].values():
        if artifact["type"] != "aws:cloudformation:stack":
            continue
        props = artifact["properties"]
        template = json.loads((folder / props["templateFile"]).read_text())
        out[props.get("stackName")] = StackTemplate(props.get("stackName"), template)
    return out


class Resolver:
    def __init__(
        self,
        stacks: Mapping[str, StackTemplate],
        physical: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
    ) -> None:
        self.stacks = stacks
        #: (stack name, logical id) -> {"Ref": ..., "<attribute>": ...}
        self.physical: dict[tuple[str, str], dict[str, str]] = {
            k: dict(v) for k, v in (physical or {}).items()
        }

    def set(self, stack: str, logical_id: str, **values: str) -> None:
        self.physical.setdefault((stack, logical_id), {}).update(values)

    def resolve(self, value: Any, stack: str) -> Any:
        if isinstance(value, str | int | float | bool) or value is None:
            return value
        if isinstance(value, list):
            return [self.resolve(v, stack) for v in value]
        if not isinstance(value, dict):
            raise TypeError(f"cannot resolve {value!r}")
        if len(value) != 1:
            return {k: self.resolve(v, stack) for k, v in value.items()}
        ((fn, arg),) = value.items()
        if fn == "Ref":
            pseudo = {
                "AWS::Partition": PARTITION,
                "AWS::AccountId": ACCOUNT,
                "AWS::Region": REGION,
                "AWS::URLSuffix": "amazonaws.com",
                "AWS::StackName": stack,
            }
            if arg in pseudo:
                return pseudo[arg]
            return self.physical.get((stack, arg), {}).get("Ref", f"<unresolved:{arg}>")
        if fn == "Fn::GetAtt":
            logical_id, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
            return self.physical.get((stack, logical_id), {}).get(
                attribute, f"<unresolved:{logical_id}.{attribute}>"
            )
        if fn == "Fn::Join":
            separator, parts = arg
            return separator.join(str(self.resolve(p, stack)) for p in parts)
        if fn == "Fn::Select":
            index, items = arg
            return self.resolve(items, stack)[int(index)]
        if fn == "Fn::Split":
            separator, source = arg
            return str(self.resolve(source, stack)).split(separator)
        if fn == "Fn::GetStackOutput":
            producer = self.stacks[arg["StackName"]]
            output = producer.template["Outputs"][arg["OutputName"]]
            return self.resolve(output["Value"], producer.name)
        if fn == "Fn::ImportValue":
            name = self.resolve(arg, stack)
            for other in self.stacks.values():
                for output in other.template.get("Outputs", {}).values():
                    if self.resolve(output.get("Export", {}).get("Name"), other.name) == name:
                        return self.resolve(output["Value"], other.name)
            raise KeyError(f"no export {name}")
        if fn == "Fn::Sub":
            text = arg if isinstance(arg, str) else arg[0]
            return re.sub(r"\$\{([^}]+)\}", lambda m: str(self.resolve({"Ref": m.group(1)}, stack)), text)
        return {fn: self.resolve(arg, stack)}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _match(pattern: str, value: str, *, case: bool = True) -> bool:
    # IAM wildcards: * any run of characters, ? one character; nothing else is special
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, 0 if case else re.IGNORECASE) is not None


@dataclass
class Statement:
    effect: str
    actions: list[str]
    resources: list[str]
    conditions: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def applies(self, action: str, resource: str, context: Mapping[str, str]) -> bool:
        if not any(_match(a, action, case=False) for a in self.actions):
            return False
        if not any(_match(r, resource) for r in self.resources):
            return False
        for operator, keys in self.conditions.items():
            for key, expected in keys.items():
                if key not in context:
                    return False  # the request does not supply the key: the condition fails
                test: Callable[[str, str], bool] = {
                    "StringEquals": lambda e, v: e == v,
                    "StringLike": _match,
                }[operator]
                if not any(test(e, context[key]) for e in expected):
                    return False
        return True


@dataclass
class RolePolicy:
    role: str  # logical id
    statements: list[Statement]

    def allows(self, action: str, resource: str, context: Mapping[str, str] | None = None) -> bool:
        ctx = context or {}
        if any(s.effect == "Deny" and s.applies(action, resource, ctx) for s in self.statements):
            return False
        return any(s.effect == "Allow" and s.applies(action, resource, ctx) for s in self.statements)


def role_policy(resolver: Resolver, stack: StackTemplate, role_logical_id: str) -> RolePolicy:
    """The identity policies of one role: its inline ``Policies`` and every ``AWS::IAM::Policy``
    of the stack attached to it (managed policies are not evaluated: our code's calls must be
    granted by our own statements)."""
    documents = []
    role = stack.resources[role_logical_id]
    for policy in role["Properties"].get("Policies", []):
        documents.append(policy["PolicyDocument"])
    for resource in stack.resources.values():
        if resource["Type"] == "AWS::IAM::Policy" and {"Ref": role_logical_id} in resource["Properties"].get(
            "Roles", []
        ):
            documents.append(resource["Properties"]["PolicyDocument"])
    statements = []
    for document in documents:
        for raw in _as_list(resolver.resolve(document, stack.name)["Statement"]):
            conditions = {
                op: {k: [str(x) for x in _as_list(v)] for k, v in keys.items()}
                for op, keys in raw.get("Condition", {}).items()
            }
            unknown = set(conditions) - {"StringEquals", "StringLike"}
            if unknown:
                raise NotImplementedError(f"condition operators {unknown}")
            statements.append(
                Statement(
                    effect=raw["Effect"],
                    actions=[str(a) for a in _as_list(raw["Action"])],
                    resources=[str(r) for r in _as_list(raw["Resource"])],
                    conditions=conditions,
                )
            )
    return RolePolicy(role_logical_id, statements)


# --------------------------------------------------------------------------- calls


@dataclass(frozen=True)
class AwsCall:
    service: str  # botocore service name (s3, kinesis, secretsmanager) or "mlflow"
    operation: str  # API operation (GetObject) or the MLflow RPC name
    params: tuple[tuple[str, str], ...] = ()
    origin: str = ""

    def param(self, name: str) -> str | None:
        return dict(self.params).get(name)


@dataclass(frozen=True)
class Permission:
    """One IAM check a call needs: action on resource, with the request's condition keys."""

    action: str
    resource: str
    context: tuple[tuple[str, str], ...] = ()
    why: str = ""


class CallRecorder:
    """Records every botocore call (``before-call`` on each client created while active) and every
    HTTP request to ``mlflow_base`` (the MLflow REST client uses ``requests``)."""

    def __init__(self, mlflow_base: str | None = None) -> None:
        self.calls: list[AwsCall] = []
        self.mlflow_base = mlflow_base.rstrip("/") if mlflow_base else None
        self.origin = ""
        self._lock = threading.Lock()

    def _on_call(self, model: Any, params: Mapping[str, Any], **_: Any) -> None:
        flat = tuple(sorted((k, str(v)) for k, v in params.items() if isinstance(v, str | int)))
        with self._lock:
            self.calls.append(AwsCall(model.service_model.service_name, model.name, flat, self.origin))

    @contextlib.contextmanager
    def active(self) -> Iterator[CallRecorder]:
        import botocore.session
        import requests

        original_create = botocore.session.Session.create_client
        original_request = requests.Session.request
        recorder = self

        def create_client(session: Any, *args: Any, **kwargs: Any) -> Any:
            client = original_create(session, *args, **kwargs)
            client.meta.events.register("before-parameter-build.*.*", recorder._on_call)
            return client

        def request(session: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            if recorder.mlflow_base and str(url).startswith(recorder.mlflow_base):
                path = urlparse(str(url)).path
                with recorder._lock:
                    recorder.calls.append(AwsCall("mlflow", f"{method.upper()} {path}", (), recorder.origin))
            return original_request(session, method, url, *args, **kwargs)

        botocore.session.Session.create_client = create_client  # type: ignore[method-assign,assignment]
        requests.Session.request = request  # type: ignore[method-assign,assignment]
        try:
            yield self
        finally:
            botocore.session.Session.create_client = original_create  # type: ignore[method-assign]
            requests.Session.request = original_request  # type: ignore[method-assign]

    @contextlib.contextmanager
    def component(self, name: str) -> Iterator[None]:
        previous, self.origin = self.origin, name
        try:
            yield
        finally:
            self.origin = previous


# MLflow REST path -> the RPC name (MLflow's own service descriptors) -> the sagemaker-mlflow action
_MLFLOW_ACTION_ALIASES = {
    # the IAM action names of "Amazon SageMaker with MLflow" that differ from the RPC names
    "GetModelVersionDownloadUri": "GetDownloadURIForModelVersionArtifacts",
    "GetLatestVersions": "GetLatestModelVersions",
    "LogLoggedModelParamsRequest": "LogLoggedModelParams",
    # MLflow 3's log_model creates a logged model first; IAM has no CreateLoggedModel action: the
    # closest, "log a model", is assumed to authorize it (to confirm on a real tracking server)
    "CreateLoggedModel": "LogModel",
}


def mlflow_routes() -> list[tuple[str, re.Pattern[str], str]]:
    from mlflow.protos.model_registry_pb2 import ModelRegistryService
    from mlflow.protos.service_pb2 import MlflowService
    from mlflow.utils.rest_utils import _REST_API_PATH_PREFIX, extract_api_info_for_service

    routes = []
    for service in (MlflowService, ModelRegistryService):
        for request_class, (endpoint, method) in extract_api_info_for_service(  # type: ignore[no-untyped-call]
            service, _REST_API_PATH_PREFIX
        ).items():
            pattern = re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(endpoint)) + "$")
            rpc = request_class.__name__
            routes.append((method.upper(), pattern, _MLFLOW_ACTION_ALIASES.get(rpc, rpc)))
    # literal paths before templated ones (logged-models/search before logged-models/{id})
    routes.sort(key=lambda r: r[1].pattern.count("[^/]+"))
    return routes


def mlflow_action(operation: str, routes: list[tuple[str, re.Pattern[str], str]]) -> str:
    method, path = operation.split(" ", 1)
    for route_method, pattern, action in routes:
        if route_method == method and pattern.match(path):
            return f"sagemaker-mlflow:{action}"
    raise KeyError(f"no MLflow REST route for {operation}")


S3_OBJECT_ACTIONS = {
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "DeleteObject": "s3:DeleteObject",
}
S3_READS = {"GetObject", "HeadObject"}
NO_PERMISSION_NEEDED = {("sts", "GetCallerIdentity")}


def permissions(
    call: AwsCall,
    *,
    bucket_keys: Mapping[str, str],
    stream_keys: Mapping[str, str],
    mlflow_arn: str | None,
    routes: list[tuple[str, re.Pattern[str], str]] | None = None,
    queue_keys: Mapping[str, str] | None = None,
) -> list[Permission]:
    """The IAM checks one recorded call needs (including the KMS use implied by SSE-KMS buckets and
    streams: ``bucket_keys``/``stream_keys`` name each one's key ARN). Unknown calls raise, so a new
    kind of call is mapped before it can pass."""
    arn_prefix = f"arn:{PARTITION}"
    if (call.service, call.operation) in NO_PERMISSION_NEEDED:
        return []
    if call.service == "s3":
        bucket = call.param("Bucket") or ""
        kms = bucket_keys.get(bucket)
        if call.operation in S3_OBJECT_ACTIONS:
            out = [
                Permission(
                    S3_OBJECT_ACTIONS[call.operation], f"{arn_prefix}:s3:::{bucket}/{call.param('Key')}"
                )
            ]
            if kms and call.operation in S3_READS:
                out.append(Permission("kms:Decrypt", kms, why=f"SSE-KMS read of {bucket}"))
            elif kms and call.operation not in {"DeleteObject", "AbortMultipartUpload"}:
                out.append(Permission("kms:GenerateDataKey", kms, why=f"SSE-KMS write to {bucket}"))
            return out
        if call.operation in {"ListObjectsV2", "ListObjects", "ListObjectVersions"}:
            return [
                Permission(
                    "s3:ListBucket",
                    f"{arn_prefix}:s3:::{bucket}",
                    (("s3:prefix", call.param("Prefix") or ""),),
                )
            ]
        if call.operation == "HeadBucket":
            return [Permission("s3:ListBucket", f"{arn_prefix}:s3:::{bucket}")]
        if call.operation == "GetBucketLocation":
            return [Permission("s3:GetBucketLocation", f"{arn_prefix}:s3:::{bucket}")]
    if call.service == "kinesis":
        name = call.param("StreamName") or (call.param("StreamARN") or "").rsplit("/", 1)[-1]
        arn = f"{arn_prefix}:kinesis:{REGION}:{ACCOUNT}:stream/{name}"
        out = [Permission(f"kinesis:{call.operation}", arn)]
        if call.operation in {"PutRecord", "PutRecords"} and name in stream_keys:
            out.append(Permission("kms:GenerateDataKey", stream_keys[name], why=f"KMS stream {name}"))
        return out
    if call.service == "sqs" and call.operation in {"SendMessage", "SendMessageBatch"}:
        # https://sqs.<region>.amazonaws.com/<account>/<name>; SendMessageBatch is authorized as
        # SendMessage; an SSE-KMS queue's producer needs GenerateDataKey and Decrypt on its key
        name = (call.param("QueueUrl") or "").rstrip("/").rsplit("/", 1)[-1]
        out = [Permission("sqs:SendMessage", f"{arn_prefix}:sqs:{REGION}:{ACCOUNT}:{name}")]
        key = (queue_keys or {}).get(name)
        if key:
            out.append(Permission("kms:GenerateDataKey", key, why=f"SSE-KMS queue {name}"))
            out.append(Permission("kms:Decrypt", key, why=f"SSE-KMS queue {name}"))
        return out
    if call.service == "secretsmanager" and call.operation in {"GetSecretValue", "DescribeSecret"}:
        return [Permission(f"secretsmanager:{call.operation}", call.param("SecretId") or "")]
    if call.service == "mlflow":
        if mlflow_arn is None:
            raise AssertionError(f"an MLflow call without a tracking server: {call}")
        action = mlflow_action(call.operation, routes or mlflow_routes())
        if ":mlflow-app/" in mlflow_arn:
            # a serverless MLflow App: every REST call is authorized by one sagemaker action
            return [Permission("sagemaker:CallMlflowAppApi", mlflow_arn, why=action)]
        return [Permission(action, mlflow_arn)]
    raise NotImplementedError(f"map this AWS call to its IAM action(s) in tests/support/iam.py: {call}")


@functools.cache
def _iam_reference() -> dict[str, Any]:
    """cfn-lint's copy of the Service Authorization Reference (actions and resource ARN formats)."""
    import cfnlint  # type: ignore[import-untyped]

    path = Path(cfnlint.__file__).parent / "data" / "AdditionalSpecs" / "Policies.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def unknown_action(action: str, resource: str) -> str | None:
    """Why IAM would not know ``action`` on ``resource`` (None: it does): the action must exist, and
    when it is scoped to resource types, ``resource`` must have one of their ARN formats."""
    service, _, name = action.partition(":")
    reference = _iam_reference().get(service)
    if reference is None:
        return f"no IAM service {service}"
    spec = reference["Actions"].get(name.lower())
    if spec is None:
        return f"{action} is not an IAM action"
    types = spec.get("Resources") or []
    if not types or resource == "*":
        return None
    formats = {k.lower(): v.get("ARNFormats", []) for k, v in reference["Resources"].items()}
    for kind in types:
        for fmt in formats.get(kind.lower(), []):
            regex = re.sub(r"\$\{[^}]+\}", "[^:]*", fmt)
            if re.fullmatch(regex, resource):
                return None
    return f"{action} applies to {types}, not to {resource}"
