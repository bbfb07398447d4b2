"""The training job: ``training/Dockerfile`` on ECS Fargate, on a schedule and on demand."""

from __future__ import annotations

from typing import cast

import aws_cdk as cdk
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as sfn_tasks
from constructs import Construct

from cdk_app.config import REPO_ROOT, StageConfig
from cdk_app.constructs.common import log_group
from cdk_app.constructs.feature_job import FEATURE_TABLE, SparkFeatureJob
from cdk_app.constructs.mlflow import MlflowTracking
from cdk_app.constructs.network import Network
from cdk_app.constructs.storage import (
    LAKE_PREFIX,
    MLFLOW_ARTIFACT_PREFIX,
    MODEL_STORE_PREFIX,
    RAW_DATA_PREFIX,
    Storage,
)
from cdk_app.nag import acknowledge

# Kept out of the Docker build context (besides .dockerignore): caches, local data, other assets.
IMAGE_EXCLUDES = [
    ".git",
    ".venv",
    "node_modules",
    "cdk.out",
    "build",
    "data",
    "mlruns",
    "**/__pycache__",
    "**/.mypy_cache",
    "**/.pytest_cache",
    "**/.ruff_cache",
    "**/.hypothesis",
]
ON_DEMAND_SOURCE = "fraudsys.training"
ON_DEMAND_DETAIL_TYPE = "TrainingRequested"
CONTAINER_NAME = "training"


class TrainingJob(Construct):
    """Fargate task definition, the scheduled retraining workflow (the Spark feature step, then
    the task on its table) and two EventBridge rules (cron schedule -> the workflow, on-demand
    event -> the task on the raw data set)."""

    cluster: ecs.Cluster
    image: ecr_assets.DockerImageAsset
    task_definition: ecs.FargateTaskDefinition
    features: SparkFeatureJob
    workflow: sfn.StateMachine
    schedule_rule: events.Rule
    on_demand_rule: events.Rule

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: StageConfig,
        network: Network,
        storage: Storage,
        mlflow: MlflowTracking,
    ) -> None:
        super().__init__(scope, construct_id)
        cfg = config.training
        arm = config.architecture == "arm64"
        cluster_name = f"{config.prefix}-training"
        self.cluster = ecs.Cluster(
            self,
            "Cluster",
            cluster_name=cluster_name,
            vpc=network.vpc,
            container_insights_v2=ecs.ContainerInsights.ENHANCED,
        )
        self.image = ecr_assets.DockerImageAsset(
            self,
            "Image",
            directory=str(REPO_ROOT),
            file="training/Dockerfile",
            platform=ecr_assets.Platform.LINUX_ARM64 if arm else ecr_assets.Platform.LINUX_AMD64,
            exclude=IMAGE_EXCLUDES,
        )
        self.task_definition = ecs.FargateTaskDefinition(
            self,
            "Task",
            cpu=cfg.cpu,
            memory_limit_mib=cfg.memory_mib,
            ephemeral_storage_gib=cfg.ephemeral_storage_gib,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.ARM64 if arm else ecs.CpuArchitecture.X86_64,
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
            ),
        )
        task_role = self.task_definition.task_role
        storage.grant_objects(task_role, "RawData", RAW_DATA_PREFIX, read=True)
        storage.grant_objects(task_role, "Models", MODEL_STORE_PREFIX, read=True, write=True)
        storage.grant_objects(task_role, "Lake", LAKE_PREFIX, read=True)
        storage.grant_objects(task_role, "Features", FEATURE_TABLE, read=True)
        mlflow.grant_tracking(task_role)
        # The sagemaker-mlflow client writes run artifacts straight to the artifact store.
        storage.grant_objects(task_role, "Models", MLFLOW_ARTIFACT_PREFIX, read=True, write=True)

        self.features = SparkFeatureJob(self, "Features", config=config, storage=storage)
        container = self.task_definition.add_container(
            CONTAINER_NAME,
            image=ecs.ContainerImage.from_docker_image_asset(self.image),
            command=list(cfg.command),
            logging=ecs.LogDrivers.aws_logs(
                stream_prefix="training", log_group=log_group(self, "Logs", config, cfg.log_retention_days)
            ),
            environment={
                "RAW_DATA_URI": storage.uri("RawData", RAW_DATA_PREFIX),
                "LAKE_URI": storage.lake_uri,
                "MODEL_STORE_URI": storage.model_store_uri,
                "MODEL_NAME": config.model_name,
                "MLFLOW_TRACKING_URI": mlflow.tracking_server_arn,
                "LABEL_DELAY_SECONDS": str(config.label_delay_seconds),
                "FEATURE_TABLE_URI": self.features.table_uri,
                "LEGIT_SAMPLE_RATE": f"{config.spark.legit_sample_rate:g}",
            },
        )
        acknowledge(
            self.task_definition,
            "AwsSolutions-ECS2",
            "The environment holds only bucket URIs, the MLflow server ARN and tuning numbers; the job "
            "has no secrets (it reaches S3 and MLflow with its task role).",
        )

        acknowledge(
            self.task_definition,
            "AwsSolutions-IAM5[Resource::*]",
            "The execution role's ecr:GetAuthorizationToken has no resource-level permissions (the image "
            "pull itself is scoped to the asset repository).",
        )
        cluster_ref = cdk.Stack.of(self).get_logical_id(cast(cdk.CfnElement, self.cluster.node.default_child))
        acknowledge(
            self.task_definition,
            f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ecs:<AWS::Region>:*:task/<{cluster_ref}>/*]",
            "EventBridge's role may tag only the tasks it starts in this one cluster (task ids are unknown "
            "before RunTask).",
        )

        def target(source: str) -> targets.EcsTask:
            """``source``: ``lake`` trains on the archived traffic (the retraining loop); ``raw``
            on RAW_DATA_URI (the first model, before the lake holds anything)."""
            return targets.EcsTask(
                cluster=self.cluster,
                task_definition=self.task_definition,
                launch_type=ecs.LaunchType.FARGATE,
                platform_version=ecs.FargatePlatformVersion.LATEST,
                subnet_selection=network.app_subnets,
                security_groups=[network.training_sg],
                assign_public_ip=False,
                container_overrides=[
                    targets.ContainerOverride(
                        container_name=CONTAINER_NAME,
                        environment=[targets.TaskEnvironmentVariable(name="TRAINING_SOURCE", value=source)],
                    )
                ],
            )

        self.workflow = self._workflow(config, network, container, storage)
        self.schedule_rule = events.Rule(
            self,
            "Schedule",
            description=f"{config.prefix}: retrain on schedule (the Spark feature step, then training)",
            schedule=events.Schedule.expression(cfg.schedule),
            targets=[targets.SfnStateMachine(self.workflow)],
        )
        self.on_demand_rule = events.Rule(
            self,
            "OnDemand",
            description=f"{config.prefix}: retrain when a {ON_DEMAND_DETAIL_TYPE} event arrives",
            event_pattern=events.EventPattern(source=[ON_DEMAND_SOURCE], detail_type=[ON_DEMAND_DETAIL_TYPE]),
            targets=[target("raw")],
        )

    def _workflow(
        self, config: StageConfig, network: Network, container: ecs.ContainerDefinition, storage: Storage
    ) -> sfn.StateMachine:
        """Spark step (the feature table from the lake) -> training task (``TRAINING_SOURCE=features``:
        the table, its legitimate rows sampled at ``spark.legit_sample_rate``)."""
        train = sfn_tasks.EcsRunTask(
            self,
            "Train",
            comment="the training task on the feature table: tune, fit, gate, register, publish",
            cluster=self.cluster,
            task_definition=self.task_definition,
            launch_target=sfn_tasks.EcsFargateLaunchTarget(
                platform_version=ecs.FargatePlatformVersion.LATEST
            ),
            integration_pattern=sfn.IntegrationPattern.RUN_JOB,
            subnets=network.app_subnets,
            security_groups=[network.training_sg],
            assign_public_ip=False,
            container_overrides=[
                sfn_tasks.ContainerOverride(
                    container_definition=container,
                    environment=[sfn_tasks.TaskEnvironmentVariable(name="TRAINING_SOURCE", value="features")],
                )
            ],
            result_path=sfn.JsonPath.DISCARD,
        )
        definition = self.features.step(self, config, storage.lake_uri).next(train)
        workflow = sfn.StateMachine(
            self,
            "Workflow",
            state_machine_name=f"{config.prefix}-retraining",
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            timeout=cdk.Duration.hours(config.spark.timeout_hours),
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=log_group(self, "WorkflowLogs", config, config.training.log_retention_days),
                level=sfn.LogLevel.ALL,
                include_execution_data=False,
            ),
        )
        self.features.grant_start(workflow)
        acknowledge(
            workflow,
            "AwsSolutions-IAM5[Resource::*]",
            "Step Functions' own grants: X-Ray and CloudWatch Logs delivery have no resource-level "
            "permissions, and ecs:DescribeTasks/StopTask name task ids unknown before RunTask.",
        )
        acknowledge(
            workflow,
            f"AwsSolutions-IAM5[Resource::{self.features.job_runs_rendered}]",
            "GetJobRun/CancelJobRun of the job runs of this one application (run ids are unknown before "
            "StartJobRun).",
        )
        return workflow

    def run_task_command(self, network: Network) -> str:
        """The ``aws ecs run-task`` line for an operator (also printed as a stack output)."""
        subnets = ",".join(network.private_subnet_ids)
        return (
            f"aws ecs run-task --cluster {self.cluster.cluster_name} --launch-type FARGATE "
            f"--task-definition {self.task_definition.task_definition_arn} "
            f"--network-configuration awsvpcConfiguration={{subnets=[{subnets}],"
            f"securityGroups=[{network.training_sg.security_group_id}],assignPublicIp=DISABLED}}"
        )
