from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from constructs import Construct

from cdk_app.config import StageConfig
from cdk_app.constructs.observability import Monitored, Observability


class ObservabilityStack(cdk.Stack):
    """Dashboard, alarms and the alarm topic."""

    observability: Observability

    def __init__(
        self, scope: Construct, construct_id: str, *, config: StageConfig, monitored: Monitored, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.observability = Observability(self, "Observability", config=config, monitored=monitored)
        cdk.CfnOutput(self, "AlarmTopicArn", value=self.observability.topic.topic_arn)
