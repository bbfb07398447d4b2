"""The FraudSys Lambda function shape shared by the scorer and the feature updater."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk_app.config import REPO_ROOT, StageConfig
from cdk_app.constructs.layer import lambda_architecture
from cdk_app.constructs.network import Network
from cdk_app.nag import acknowledge

LAMBDA_CODE_EXCLUDES = [
    "**/__pycache__",
    "**/*.pyc",
    "**/.mypy_cache",
    "**/.pytest_cache",
    "**/.ruff_cache",
    "**/.DS_Store",
]


def lambda_code() -> lambda_.Code:
    """``lambdas/`` as-is (third-party code comes from the layer)."""
    return lambda_.Code.from_asset(str(REPO_ROOT / "lambdas"), exclude=LAMBDA_CODE_EXCLUDES)


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
    memory_mb: int,
    timeout_seconds: int,
    reserved_concurrency: int | None,
    layer: lambda_.ILayerVersion,
    network: Network | None,
    security_group: ec2.ISecurityGroup | None,
    log_group: logs.ILogGroup,
    environment: dict[str, str],
    extra_layers: tuple[lambda_.ILayerVersion, ...] = (),
) -> lambda_.Function:
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
        code=lambda_code(),
        layers=[layer, *extra_layers],
        description=f"{config.prefix} {description}",
        memory_size=memory_mb,
        timeout=cdk.Duration.seconds(timeout_seconds),
        reserved_concurrent_executions=reserved_concurrency,
        role=role,
        vpc=network.vpc if network else None,
        vpc_subnets=network.app_subnets if network else None,
        security_groups=[security_group] if security_group else None,
        tracing=lambda_.Tracing.ACTIVE,
        log_group=log_group,
        environment=environment,
    )
    acknowledge(
        function,
        "AwsSolutions-L1",
        "The project targets Python 3.13 (pyproject, uv.lock, the layer's wheels); moving to a newer "
        "runtime is a deliberate upgrade of all three together.",
    )
    return function
