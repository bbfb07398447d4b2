"""SageMaker managed MLflow, artifacts in the model bucket (``s3://.../mlflow``): a tracking server
(``training.mlflow: server``, billed per hour) or a serverless MLflow App (``app``: no idle cost)."""

from __future__ import annotations

from importlib import metadata

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from cdk_app.config import StageConfig
from cdk_app.constructs.common import removal_policy
from cdk_app.constructs.storage import MLFLOW_ARTIFACT_PREFIX, Storage

# The MLflow REST surface a training run and the model registry use (no sagemaker-mlflow:*).
# tests/infra/test_iam_calls.py runs the pipeline against an MLflow server and fails when a REST
# call it makes maps to an action missing here (e.g. SetModelVersionTag, right after a version is
# created and before the model is published).
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
    "sagemaker-mlflow:SetModelVersionTag",
    "sagemaker-mlflow:GetDownloadURIForModelVersionArtifacts",
    "sagemaker-mlflow:GetLoggedModel",
    "sagemaker-mlflow:SearchLoggedModels",
    "sagemaker-mlflow:GetLatestModelVersions",
]
#: An MLflow App's REST API is signed for the ``sagemaker`` service and authorized by this one
#: action on the app's ARN (the sagemaker-mlflow actions apply to tracking servers only).
APP_ACTIONS = ["sagemaker:CallMlflowAppApi"]


def client_mlflow_version() -> str:
    """major.minor of the MLflow client the training image installs (uv.lock's, as in this venv)."""
    major, minor, *_ = metadata.version("mlflow").split(".")
    return f"{major}.{minor}"


class MlflowTracking(Construct):
    """Managed MLflow: no servers, database or load balancer of ours; IAM (SigV4) authentication."""

    server: sagemaker.CfnMlflowTrackingServer | None
    app: sagemaker.CfnMlflowApp | None
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
        self.server = None
        self.app = None
        resource: cdk.CfnResource
        if config.training.mlflow == "server":
            self.server = sagemaker.CfnMlflowTrackingServer(
                self,
                "Server",
                tracking_server_name=config.prefix,
                artifact_store_uri=storage.mlflow_artifact_uri,
                role_arn=self.role.role_arn,
                tracking_server_size=config.training.mlflow_server_size,
                # the client's major.minor unless the stage pins one (a server older than the
                # client may lack REST calls the client makes, e.g. MLflow 3's logged models)
                mlflow_version=config.training.mlflow_version or client_mlflow_version(),
                automatic_model_registration=False,
                weekly_maintenance_window_start="Sun:03:30",
            )
            resource = self.server
        else:
            self.app = sagemaker.CfnMlflowApp(
                self,
                "App",
                name=config.prefix,
                artifact_store_uri=storage.mlflow_artifact_uri,
                role_arn=self.role.role_arn,
                model_registration_mode="AutoModelRegistrationDisabled",
                weekly_maintenance_window_start="Sun:03:30",
            )
            resource = self.app
        # prod (retain_data): the experiments and the registry outlive the stack
        resource.apply_removal_policy(removal_policy(config))

    @property
    def tracking_server_arn(self) -> str:
        """The tracking URI of the training job (the sagemaker-mlflow plugin takes either ARN)."""
        if self.server is not None:
            return self.server.attr_tracking_server_arn
        if self.app is None:
            raise RuntimeError("MlflowTracking has neither a server nor an app")
        return self.app.attr_arn

    def grant_tracking(self, grantee: iam.IGrantable) -> None:
        actions = APP_ACTIONS if self.app is not None else TRACKING_ACTIONS
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(actions=actions, resources=[self.tracking_server_arn])
        )
