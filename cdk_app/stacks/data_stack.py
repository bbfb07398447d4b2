from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from constructs import Construct

from cdk_app.config import StageConfig
from cdk_app.constructs.feature_store import RedisFeatureStore
from cdk_app.constructs.network import Network
from cdk_app.constructs.storage import Storage
from cdk_app.constructs.stream import EventStream, create_stream


class DataStack(cdk.Stack):
    """State that outlives deployments of the code: buckets, the data key, Redis, the stream."""

    storage: Storage
    feature_store: RedisFeatureStore
    stream: EventStream

    def __init__(
        self, scope: Construct, construct_id: str, *, config: StageConfig, network: Network, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.storage = Storage(self, "Storage", config=config)
        self.feature_store = RedisFeatureStore(
            self, "FeatureStore", config=config, network=network, key=self.storage.key
        )
        self.stream = create_stream(self, "Stream", config=config, network=network, key=self.storage.key)
