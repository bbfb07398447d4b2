"""The feature updater: ``handlers.update_features.handler`` fed by MSK topics or the Kinesis stream.

It does not write the event lake (no ``LAKE_URI``, no lake permission, no arrow layer): the
archiver (``cdk_app.constructs.archiver``) does, as a consumer of its own."""

from __future__ import annotations

from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cdk_app.config import StageConfig
from cdk_app.constructs.common import failed_batches_queue
from cdk_app.constructs.feature_store import FeatureStore
from cdk_app.constructs.function import vpc_function
from cdk_app.constructs.network import Network
from cdk_app.constructs.storage import DEAD_LETTER_PREFIX, Storage
from cdk_app.constructs.stream import EventStream


class FeatureUpdater(Construct):
    """Applies stream events to Redis; poison records go to S3 (by the handler), failed batches to SQS."""

    function: lambda_.Function
    failed_batches: sqs.Queue

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: StageConfig,
        network: Network | None,
        layer: lambda_.ILayerVersion,
        storage: Storage,
        feature_store: FeatureStore,
        stream: EventStream,
    ) -> None:
        super().__init__(scope, construct_id)
        cfg = config.updater
        environment = {
            **feature_store.handler_environment(config, cfg.redis_timeout_ms),
            "DEAD_LETTER_URI": storage.dead_letter_uri,
        }
        self.function = vpc_function(
            self,
            "Function",
            config=config,
            handler="handlers.update_features.handler",
            description="feature updater (stream -> Redis)",
            settings=cfg,
            layer=layer,
            network=network,
            security_group=network.updater_sg if network else None,
            environment=environment,
        )
        feature_store.grant_connect(self.function)
        storage.grant_objects(self.function, "DeadLetters", DEAD_LETTER_PREFIX, read=False, write=True)

        # Batches that still fail after retries/bisecting: their metadata, for a replay.
        self.failed_batches = failed_batches_queue(self, "FailedBatches", config)
        stream.add_consumer_sources(self.function, cfg, sources.SqsDlq(self.failed_batches), "updater")
