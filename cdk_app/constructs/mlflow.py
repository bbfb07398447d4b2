"""SageMaker managed MLflow tracking server, artifacts in the model bucket (``s3://.../mlflow``)."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from cdk_app.config import StageConfig
from cdk_app.constructs.storage import MLFLOW_ARTIFACT_PREFIX, Storage

# The MLflow REST surface a training run and the model registry use (no sagemaker-mlflow:*).
TRACKING_ACTIONS = [
    "sagemaker-mlflow:CreateExperiment",
    "sagemaker-mlflow:GetExperiment",
    "sagemaker-mlflow:GetExperimentByName",
    "sagemaker-mlflow:SearchExperiments",
    "sagemaker-mlflow:SetExperimentTag",
    "sagemaker-mlflow:CreateRun",
    "sagemaker-mlflow:GetRun",
    "sagemaker-mlflow:UpdateRun",
    "sagemaker-mlflow:SearchRuns",
    "sagemaker-mlflow:SetTag",
    "sagemaker-mlflow:LogMetric",
    "sagemaker-mlflow:LogParam",
    "sagemaker-mlflow:LogBatch",
    "sagemaker-mlflow:LogInputs",
    "sagemaker-mlflow:LogOutputs",
    "sagemaker-mlflow:LogModel",
    "sagemaker-mlflow:LogLoggedModelParams",
    "sagemaker-mlflow:FinalizeLoggedModel",
    "sagemaker-mlflow:SetLoggedModelTags",
    "sagemaker-mlflow:GetMetricHistory",
    "sagemaker-mlflow:ListArtifacts",
    "sagemaker-mlflow:ListLoggedModelArtifacts",
    "sagemaker-mlflow:CreateRegisteredModel",
    "sagemaker-mlflow:GetRegisteredModel",
    "sagemaker-mlflow:SearchRegisteredModels",
    "sagemaker-mlflow:CreateModelVersion",
    "sagemaker-mlflow:GetModelVersion",
    "sagemaker-mlflow:SearchModelVersions",
    "sagemaker-mlflow:UpdateModelVersion",
    "sagemaker-mlflow:SetRegisteredModelAlias",
    "sagemaker-mlflow:GetModelVersionByAlias",
]


class MlflowTracking(Construct):
    """Managed MLflow: no servers, database or load balancer of ours; IAM (SigV4) authentication."""

    server: sagemaker.CfnMlflowTrackingServer
    role: iam.Role

    def __init__(self, scope: Construct, construct_id: str, *, config: StageConfig, storage: Storage) -> None:
        super().__init__(scope, construct_id)
        self.role = iam.Role(
            self,
            "ServerRole",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description=f"{config.prefix} MLflow tracking server: artifact store access",
        )
        storage.grant_objects(self.role, "Models", MLFLOW_ARTIFACT_PREFIX, read=True, write=True)
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:GetBucketLocation"],
                resources=[f"arn:{cdk.Aws.PARTITION}:s3:::{storage.bucket_name('Models')}"],
            )
        )
        self.server = sagemaker.CfnMlflowTrackingServer(
            self,
            "Server",
            tracking_server_name=config.prefix,
            artifact_store_uri=storage.mlflow_artifact_uri,
            role_arn=self.role.role_arn,
            tracking_server_size=config.training.mlflow_server_size,
            mlflow_version=config.training.mlflow_version,
            automatic_model_registration=False,
            weekly_maintenance_window_start="Sun:03:30",
        )

    @property
    def tracking_server_arn(self) -> str:
        return self.server.attr_tracking_server_arn

    def grant_tracking(self, grantee: iam.IGrantable) -> None:
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(actions=TRACKING_ACTIONS, resources=[self.tracking_server_arn])
        )
