"""The feature updater: ``handlers.update_features.handler`` fed by MSK topics or the Kinesis stream."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cdk_app.config import StageConfig
from cdk_app.constructs.common import log_group, removal_policy
from cdk_app.constructs.feature_store import RedisFeatureStore
from cdk_app.constructs.function import vpc_function
from cdk_app.constructs.network import Network
from cdk_app.constructs.storage import DEAD_LETTER_PREFIX, LAKE_PREFIX, Storage
from cdk_app.constructs.stream import EventStream
from cdk_app.nag import acknowledge


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
        network: Network,
        layer: lambda_.ILayerVersion,
        arrow_layer: lambda_.ILayerVersion,
        storage: Storage,
        feature_store: RedisFeatureStore,
        stream: EventStream,
    ) -> None:
        super().__init__(scope, construct_id)
        cfg = config.updater
        environment = {
            **feature_store.handler_environment(config, cfg.redis_timeout_ms),
            "DEAD_LETTER_URI": storage.dead_letter_uri,
            "LAKE_URI": storage.lake_uri,
        }
        self.function = vpc_function(
            self,
            "Function",
            config=config,
            handler="handlers.update_features.handler",
            description="feature updater (stream -> Redis)",
            memory_mb=cfg.memory_mb,
            timeout_seconds=cfg.timeout_seconds,
            reserved_concurrency=cfg.reserved_concurrency,
            layer=layer,
            network=network,
            security_group=network.updater_sg,
            log_group=log_group(self, "Logs", config, cfg.log_retention_days),
            environment=environment,
            extra_layers=(arrow_layer,),  # pyarrow for the lake writer
        )
        feature_store.grant_connect(self.function)
        storage.grant_objects(self.function, "DeadLetters", DEAD_LETTER_PREFIX, read=False, write=True)
        # the archive: PutObject under the lake prefix only (no read, no delete)
        storage.grant_objects(self.function, "Lake", LAKE_PREFIX, read=False, write=True)

        # Batches that still fail after retries/bisecting: the mapping sends their metadata
        # (stream, shard/partition, offsets) here, so they can be replayed from the stream.
        self.failed_batches = sqs.Queue(
            self,
            "FailedBatches",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=cdk.Duration.days(14),
            removal_policy=removal_policy(config),  # prod: failed batches' metadata outlives the stack
        )
        acknowledge(
            self.failed_batches,
            "AwsSolutions-SQS3",
            "This queue is itself the on-failure destination (dead-letter queue) of the event source "
            "mappings; nothing consumes it automatically, so it needs no DLQ of its own.",
        )
        stream.add_updater_sources(self.function, cfg, sources.SqsDlq(self.failed_batches))
