from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from constructs import Construct

from cdk_app.config import StageConfig
from cdk_app.constructs.archiver import EventArchiver
from cdk_app.constructs.feature_store import FeatureStore
from cdk_app.constructs.feature_updater import FeatureUpdater
from cdk_app.constructs.layer import ArrowLayer, SlimXGBoostLayer
from cdk_app.constructs.network import Network
from cdk_app.constructs.outbox import PublishOutbox
from cdk_app.constructs.scorer_api import ScorerApi
from cdk_app.constructs.storage import Storage
from cdk_app.constructs.stream import EventStream


class ServingStack(cdk.Stack):
    """The online path: layers, scorer API with its publish outbox and relay, and the stream's two
    consumers with their event source mappings: the feature updater (Redis) and the archiver (the
    event lake)."""

    outbox: PublishOutbox
    scorer: ScorerApi
    updater: FeatureUpdater
    archiver: EventArchiver

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: StageConfig,
        network: Network | None,
        storage: Storage,
        feature_store: FeatureStore,
        stream: EventStream,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        layer = SlimXGBoostLayer(self, "Layer", arch=config.architecture).layer
        self.outbox = PublishOutbox(
            self,
            "Outbox",
            config=config,
            network=network,
            layer=layer,
            stream=stream,
            key=storage.key,
        )
        self.scorer = ScorerApi(
            self,
            "Scorer",
            config=config,
            network=network,
            layer=layer,
            storage=storage,
            feature_store=feature_store,
            stream=stream,
            outbox=self.outbox,
        )
        self.updater = FeatureUpdater(
            self,
            "Updater",
            config=config,
            network=network,
            layer=layer,
            storage=storage,
            feature_store=feature_store,
            stream=stream,
        )
        self.archiver = EventArchiver(
            self,
            "Archiver",
            config=config,
            network=network,
            layer=layer,
            arrow_layer=ArrowLayer(self, "ArrowLayer", arch=config.architecture).layer,
            storage=storage,
            feature_store=feature_store,
            stream=stream,
        )
        cdk.CfnOutput(self, "ApiUrl", value=self.scorer.url)
        cdk.CfnOutput(self, "ApiKeyId", value=self.scorer.api_key.key_id)
        cdk.CfnOutput(self, "InvokePolicyArn", value=self.scorer.invoke_policy.managed_policy_arn)
        cdk.CfnOutput(
            self, "LabelsInvokePolicyArn", value=self.scorer.labels_invoke_policy.managed_policy_arn
        )
