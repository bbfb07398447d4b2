from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from constructs import Construct

from cdk_app.config import StageConfig
from cdk_app.constructs.mlflow import MlflowTracking
from cdk_app.constructs.network import Network
from cdk_app.constructs.storage import Storage
from cdk_app.constructs.training_job import ON_DEMAND_DETAIL_TYPE, ON_DEMAND_SOURCE, TrainingJob


class TrainingStack(cdk.Stack):
    """The offline path: MLflow tracking server and the scheduled / on-demand training task."""

    mlflow: MlflowTracking
    training: TrainingJob

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: StageConfig,
        network: Network,
        storage: Storage,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.mlflow = MlflowTracking(self, "Mlflow", config=config, storage=storage)
        self.training = TrainingJob(
            self, "Training", config=config, network=network, storage=storage, mlflow=self.mlflow
        )
        cdk.CfnOutput(self, "MlflowTrackingServerArn", value=self.mlflow.tracking_server_arn)
        cdk.CfnOutput(self, "RunTrainingNow", value=self.training.run_task_command(network))
        cdk.CfnOutput(self, "RetrainingWorkflow", value=self.training.workflow.state_machine_arn)
        cdk.CfnOutput(
            self, "FeatureJobApplication", value=self.training.features.application.attr_application_id
        )
        cdk.CfnOutput(
            self,
            "RequestTraining",
            value=(
                "aws events put-events --entries "
                f"Source={ON_DEMAND_SOURCE},DetailType={ON_DEMAND_DETAIL_TYPE},Detail='{{}}'"
            ),
        )
