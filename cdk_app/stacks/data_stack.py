from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from constructs import Construct

from cdk_app.config import StageConfig
from cdk_app.constructs.feature_store import FeatureStore, create_feature_store
from cdk_app.constructs.network import Network
from cdk_app.constructs.storage import Storage
from cdk_app.constructs.stream import EventStream, create_stream


class DataStack(cdk.Stack):
    """State that outlives deployments of the code: buckets, the data key, Redis, the stream
    (``network`` None: a ``platform: localstack`` stage, whose functions run outside any VPC)."""

    storage: Storage
    feature_store: FeatureStore
    stream: EventStream

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: StageConfig,
        network: Network | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.storage = Storage(self, "Storage", config=config)
        self.feature_store = create_feature_store(
            self, "FeatureStore", config=config, network=network, key=self.storage.key
        )
        self.stream = create_stream(self, "Stream", config=config, network=network, key=self.storage.key)
