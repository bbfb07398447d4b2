"""The Spark feature job on EMR Serverless, and the scheduled retraining as a workflow.

- **Application**: an EMR Serverless Spark application (``CfnApplication``), started on demand
  and stopped when idle; no VPC (it reads and writes S3 only).
- **Code**: ``training/`` and ``fraud_core`` as one zipped S3 asset (``--py-files``) and the
  entry point ``training/spark_features.py`` as another; the Python environment (CPython 3.13
  with numpy, pandas, pyarrow: ``scripts/build_emr_env.sh``) is an archive under the Features
  bucket's ``emr/`` prefix, unpacked as ``./environment`` (``spark.archives``), the EMR
  Serverless convention for another Python than the image's.
- **Execution role**: reads the lake prefix, reads and replaces the feature table prefix, reads
  the code assets and the environment archive, writes its log group; nothing else.
- **Workflow** (Step Functions): the Spark step (``emr-serverless:startJobRun.sync``) writes
  the feature table, then the training task (``TRAINING_SOURCE=features``) trains on it; the
  schedule rule starts the workflow.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, cast

import aws_cdk as cdk
import jsii
from aws_cdk import aws_emrserverless as emrs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from cdk_app.config import REPO_ROOT, StageConfig
from cdk_app.constructs.common import log_group
from cdk_app.constructs.storage import FEATURES_PREFIX, LAKE_PREFIX, Storage
from cdk_app.nag import acknowledge

#: Under the Features bucket: the environment archive (``emr/<archive>``) and the table.
ENVIRONMENT_PREFIX = "emr"
FEATURE_TABLE = f"{FEATURES_PREFIX}/table"
CODE_PACKAGES = {"training": REPO_ROOT / "training", "fraud_core": REPO_ROOT / "lambdas" / "fraud_core"}
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "Dockerfile", "configs")


@jsii.implements(cdk.ILocalBundling)
class CodeBundling:
    """The job's packages at the zip's root (``training/``, ``fraud_core/``): what ``--py-files``
    puts on the driver's and the executors' ``sys.path``."""

    def try_bundle(self, output_dir: str, *args: Any, **kwargs: Any) -> bool:
        for name, source in CODE_PACKAGES.items():
            shutil.copytree(source, Path(output_dir) / name, ignore=_IGNORED, dirs_exist_ok=True)
        return True


def code_asset(scope: Construct, construct_id: str) -> s3_assets.Asset:
    return s3_assets.Asset(
        scope,
        construct_id,
        path=str(REPO_ROOT / "training"),
        bundling=cdk.BundlingOptions(
            # never used: local bundling always succeeds (it only copies files)
            image=cdk.DockerImage.from_registry("public.ecr.aws/docker/library/python:3.13-slim"),
            local=CodeBundling(),
            output_type=cdk.BundlingOutput.NOT_ARCHIVED,
        ),
        # the fraud_core half of the zip is not under path: its files are part of the hash
        asset_hash_type=cdk.AssetHashType.OUTPUT,
    )


class SparkFeatureJob(Construct):
    """The EMR Serverless application, its execution role and the Spark step of the workflow."""

    application: emrs.CfnApplication
    role: iam.Role
    code: s3_assets.Asset
    entry_point: s3_assets.Asset
    table_uri: str
    environment_uri: str

    def __init__(self, scope: Construct, construct_id: str, *, config: StageConfig, storage: Storage) -> None:
        super().__init__(scope, construct_id)
        cfg = config.spark
        stack = cdk.Stack.of(self)
        self.table_uri = storage.uri("Features", FEATURE_TABLE)
        self.environment_uri = storage.uri("Features", f"{ENVIRONMENT_PREFIX}/{cfg.environment_archive}")
        self.logs = log_group(self, "Logs", config, cfg.log_retention_days)

        self.application = emrs.CfnApplication(
            self,
            "Application",
            name=f"{config.prefix}-features",
            release_label=cfg.release_label,
            type="SPARK",
            architecture="ARM64" if config.architecture == "arm64" else "X86_64",
            auto_start_configuration=emrs.CfnApplication.AutoStartConfigurationProperty(enabled=True),
            auto_stop_configuration=emrs.CfnApplication.AutoStopConfigurationProperty(
                enabled=True, idle_timeout_minutes=cfg.idle_timeout_minutes
            ),
            maximum_capacity=emrs.CfnApplication.MaximumAllowedResourcesProperty(
                cpu=f"{cfg.max_vcpu} vCPU", memory=f"{cfg.max_memory_gb} GB"
            ),
            monitoring_configuration=emrs.CfnApplication.MonitoringConfigurationProperty(
                cloud_watch_logging_configuration=emrs.CfnApplication.CloudWatchLoggingConfigurationProperty(
                    enabled=True, log_group_name=self.logs.log_group_name, log_stream_name_prefix="features"
                ),
            ),
        )
        application_arn = stack.format_arn(
            service="emr-serverless",
            resource="/applications",
            resource_name=self.application.attr_application_id,
            arn_format=cdk.ArnFormat.SLASH_RESOURCE_NAME,
        )
        self.application_arn = application_arn

        self.role = iam.Role(
            self,
            "ExecutionRole",
            description=f"{config.prefix}: the Spark feature job (lake in, feature table out)",
            assumed_by=iam.ServicePrincipal(
                "emr-serverless.amazonaws.com",
                conditions={
                    "StringEquals": {"aws:SourceAccount": cdk.Aws.ACCOUNT_ID},
                    "ArnLike": {"aws:SourceArn": application_arn},
                },
            ),
        )
        storage.grant_objects(self.role, "Lake", LAKE_PREFIX, read=True)
        storage.grant_objects(self.role, "Features", FEATURES_PREFIX, read=True, write=True)
        storage.grant_objects(self.role, "Features", ENVIRONMENT_PREFIX, read=True)
        features_arn = f"arn:{cdk.Aws.PARTITION}:s3:::{storage.bucket_name('Features')}"
        # Spark replaces the table (mode overwrite) and its committer removes its _temporary files
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:DeleteObject"], resources=[f"{features_arn}/{FEATURES_PREFIX}/*"]
            )
        )
        self.logs.grant_write(self.role)
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:DescribeLogGroups", "logs:DescribeLogStreams"],
                resources=[self.logs.log_group_arn],
            )
        )
        self.code = code_asset(self, "Code")
        self.entry_point = s3_assets.Asset(
            self, "EntryPoint", path=str(REPO_ROOT / "training" / "spark_features.py")
        )
        # the two code objects only (not CDK's grant_read: s3:GetObject*/List* on the whole bucket)
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject"],
                resources=[a.bucket.arn_for_objects(a.s3_object_key) for a in (self.code, self.entry_point)],
            )
        )
        logs_id = stack.get_logical_id(cast(cdk.CfnElement, self.logs.node.default_child))
        application_id = stack.get_logical_id(self.application)
        #: the job runs' ARN as cdk-nag renders it (for the workflow's acknowledgement)
        self.job_runs_rendered = (
            "arn:<AWS::Partition>:emr-serverless:<AWS::Region>:<AWS::AccountId>:/applications/"
            f"<{application_id}.ApplicationId>/jobruns/*"
        )
        acknowledge(
            self.role,
            f"AwsSolutions-IAM5[Resource::<{logs_id}.Arn>:*]",
            "Writing to the job's own log group needs its log streams (created per job run, names unknown).",
        )

    def submit_parameters(self, config: StageConfig) -> str:
        """``sparkSubmitParameters``: the code on ``--py-files``, the Python environment, executor
        sizes and the settings ``training.spark_features.local_session`` sets locally."""
        cfg = config.spark
        python = "./environment/bin/python3"
        conf = {
            "spark.archives": f"{self.environment_uri}#environment",
            "spark.submit.pyFiles": self.code.s3_object_url,
            "spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON": python,
            "spark.emr-serverless.driverEnv.PYSPARK_PYTHON": python,
            "spark.executorEnv.PYSPARK_PYTHON": python,
            "spark.executor.cores": str(cfg.executor_cores),
            "spark.executor.memory": f"{cfg.executor_memory_gb}g",
            "spark.driver.memory": f"{cfg.driver_memory_gb}g",
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.execution.arrow.pyspark.enabled": "true",
        }
        return " ".join(f"--conf {key}={value}" for key, value in conf.items())

    def step(self, scope: Construct, config: StageConfig, lake_uri: str) -> sfn.CustomState:
        """The workflow's Spark step: one job run on the event lake, waited for (``.sync``); the
        table is replaced."""
        arguments = [
            "--lake",
            lake_uri,
            "--output",
            self.table_uri,
            "--label-delay",
            str(config.label_delay_seconds),
            "--bucket-rows",
            str(config.spark.bucket_rows),
        ]
        return sfn.CustomState(
            scope,
            "BuildFeatures",
            state_json={
                "Type": "Task",
                "Comment": "the point-in-time feature table on EMR Serverless (training/spark_features.py)",
                "Resource": f"arn:{cdk.Aws.PARTITION}:states:::emr-serverless:startJobRun.sync",
                "Parameters": {
                    "ApplicationId": self.application.attr_application_id,
                    "ExecutionRoleArn": self.role.role_arn,
                    "Name": "features",
                    "ClientToken.$": "States.UUID()",
                    "JobDriver": {
                        "SparkSubmit": {
                            "EntryPoint": self.entry_point.s3_object_url,
                            "EntryPointArguments": arguments,
                            "SparkSubmitParameters": self.submit_parameters(config),
                        }
                    },
                },
                "ResultPath": "$.features",
            },
        )

    def grant_start(self, principal: iam.IGrantable) -> None:
        """What Step Functions needs to run a job and wait for it (the ``.sync`` pattern polls the
        job run and receives its end through a managed EventBridge rule)."""
        stack = cdk.Stack.of(self)
        policy = principal.grant_principal
        policy.add_to_principal_policy(
            iam.PolicyStatement(actions=["emr-serverless:StartJobRun"], resources=[self.application_arn])
        )
        policy.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["emr-serverless:GetJobRun", "emr-serverless:CancelJobRun"],
                resources=[f"{self.application_arn}/jobruns/*"],
            )
        )
        policy.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["iam:PassRole"],
                resources=[self.role.role_arn],
                conditions={"StringLike": {"iam:PassedToService": "emr-serverless.amazonaws.com"}},
            )
        )
        policy.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
                resources=[
                    stack.format_arn(
                        service="events",
                        resource="rule",
                        resource_name="StepFunctionsGetEventsForEMRServerlessJobRule",
                    )
                ],
            )
        )
