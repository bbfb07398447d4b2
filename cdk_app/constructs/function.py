"""The FraudSys Lambda function shape shared by the scorer, the stream consumers and the outbox relay."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import jsii
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from cdk_app.config import (
    REPO_ROOT,
    Architecture,
    OutboxConfig,
    ScorerConfig,
    StageConfig,
    StreamConsumerConfig,
)
from cdk_app.constructs.common import log_group
from cdk_app.constructs.layer import FALLBACK_IMAGE, lambda_architecture
from cdk_app.constructs.network import Network
from cdk_app.nag import acknowledge
from layers import build

LAMBDA_CODE_EXCLUDES = [
    "**/__pycache__",
    "**/*.pyc",
    "**/.mypy_cache",
    "**/.pytest_cache",
    "**/.ruff_cache",
    "**/.DS_Store",
]


@jsii.implements(cdk.ILocalBundling)
class CodeWithLayers:
    """``lambdas/`` with the built layers' ``python/`` trees at its root (``/var/task`` is on the
    path as ``/opt/python`` is), for a runtime that does not apply layers."""

    def __init__(self, arch: Architecture, kinds: tuple[build.LayerKind, ...]) -> None:
        self.arch = arch
        self.kinds = kinds

    def try_bundle(self, output_dir: str, *args: Any, **kwargs: Any) -> bool:
        out = Path(output_dir)
        shutil.copytree(
            REPO_ROOT / "lambdas",
            out,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns(*(p.removeprefix("**/") for p in LAMBDA_CODE_EXCLUDES)),
        )
        for kind in self.kinds:  # as layers extract into /opt in order: a file already there is kept
            shutil.copytree(
                build.build_layer(self.arch, kind=kind).python_dir,
                out,
                dirs_exist_ok=True,
                copy_function=_link_or_copy_new,
            )
        return True


def _link_or_copy_new(source: str, destination: str) -> None:
    if Path(destination).exists():
        return
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def lambda_code(
    config: StageConfig | None = None, layer_kinds: tuple[build.LayerKind, ...] = ()
) -> lambda_.Code:
    """``lambdas/`` as-is (third-party code comes from the layers); with the layers' packages
    inside too for a LocalStack stage that bundles them (``localstack.bundle_layers``)."""
    if config is None or config.on_aws or not config.localstack.bundle_layers:
        return lambda_.Code.from_asset(str(REPO_ROOT / "lambdas"), exclude=LAMBDA_CODE_EXCLUDES)
    return lambda_.Code.from_asset(
        str(REPO_ROOT / "lambdas"),
        exclude=LAMBDA_CODE_EXCLUDES,
        bundling=cdk.BundlingOptions(
            image=cdk.DockerImage.from_registry(FALLBACK_IMAGE),
            # part of the asset hash: bundles of other layers never share a staged asset
            environment={
                "FRAUDSYS_BUNDLED_LAYERS": ",".join(layer_kinds),
                "FRAUDSYS_LAYER_ARCH": config.architecture,
            },
            local=CodeWithLayers(config.architecture, layer_kinds),
        ),
    )


def powertools_environment(config: StageConfig) -> dict[str, str]:
    return {
        "POWERTOOLS_SERVICE_NAME": config.service_name,
        "POWERTOOLS_METRICS_NAMESPACE": "FraudSys",
        "POWERTOOLS_LOG_LEVEL": config.log_level,
    }


def vpc_function(
    scope: Construct,
    construct_id: str,
    *,
    config: StageConfig,
    handler: str,
    description: str,
    settings: ScorerConfig | StreamConsumerConfig | OutboxConfig,
    layer: lambda_.ILayerVersion,
    network: Network | None,
    security_group: ec2.ISecurityGroup | None,
    environment: dict[str, str],
    extra_layers: tuple[lambda_.ILayerVersion, ...] = (),
    layer_kinds: tuple[build.LayerKind, ...] = ("xgboost",),
) -> lambda_.Function:
    """A Python function of the project with its own role and log group (``Logs`` in ``scope``):
    ``settings`` gives its memory, timeout, reserved concurrency and log retention; ``layer_kinds``
    what ``layer`` and ``extra_layers`` are built from (bundled when the stage says so,
    ``lambda_code``)."""
    # network None: a platform: localstack stage (no VPC there); the function runs outside any
    managed = "AWSLambdaVPCAccessExecutionRole" if network is not None else "AWSLambdaBasicExecutionRole"
    role = iam.Role(
        scope,
        f"{construct_id}Role",
        assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
        description=f"{config.prefix} {description}",
        managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name(f"service-role/{managed}")],
    )
    acknowledge(
        role,
        f"AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/{managed}]",
        "AWS's minimal policy for a Lambda (in a VPC: ENI management, whose actions have no "
        "resource-level scoping) and its own log streams.",
    )
    acknowledge(
        role,
        "AwsSolutions-IAM5[Resource::*]",
        "X-Ray PutTraceSegments/PutTelemetryRecords (active tracing) and the EC2 Describe* calls of "
        "the MSK event pollers support no resource-level permissions.",
    )
    function = lambda_.Function(
        scope,
        construct_id,
        runtime=lambda_.Runtime.PYTHON_3_13,
        architecture=lambda_architecture(config.architecture),
        handler=handler,
        code=lambda_code(config, layer_kinds),
        layers=[layer, *extra_layers],
        description=f"{config.prefix} {description}",
        memory_size=settings.memory_mb,
        timeout=cdk.Duration.seconds(settings.timeout_seconds),
        reserved_concurrent_executions=settings.reserved_concurrency,
        role=role,
        vpc=network.vpc if network else None,
        vpc_subnets=network.app_subnets if network else None,
        security_groups=[security_group] if security_group else None,
        tracing=lambda_.Tracing.ACTIVE,
        log_group=log_group(scope, "Logs", config, settings.log_retention_days),
        environment=environment,
    )
    acknowledge(
        function,
        "AwsSolutions-L1",
        "The project targets Python 3.13 (pyproject, uv.lock, the layer's wheels); moving to a newer "
        "runtime is a deliberate upgrade of all three together.",
    )
    return function
