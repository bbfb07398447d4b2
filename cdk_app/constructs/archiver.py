"""The archiver: ``handlers.archive_events.handler``, a second consumer of the MSK topics or the
Kinesis stream, writing every accepted event to the event lake (docs/infra.md: why a consumer of
its own rather than the updater's second thread, or Firehose)."""

from __future__ import annotations

from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cdk_app.config import StageConfig
from cdk_app.constructs.common import failed_batches_queue
from cdk_app.constructs.feature_store import FeatureStore
from cdk_app.constructs.function import powertools_environment, vpc_function
from cdk_app.constructs.network import Network
from cdk_app.constructs.storage import LAKE_PREFIX, Storage
from cdk_app.constructs.stream import EventStream


class EventArchiver(Construct):
    """Stream events -> Parquet objects under ``s3://<lake>/archive/`` (write only); batches that
    fail every retry go to its own SQS queue. No Redis: the card hash key is all it reads."""

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
        arrow_layer: lambda_.ILayerVersion,
        storage: Storage,
        feature_store: FeatureStore,
        stream: EventStream,
    ) -> None:
        super().__init__(scope, construct_id)
        cfg = config.archiver
        environment = {
            # the lake's card column is the store's keyed hash: the same key as the updater's
            "CARD_HASH_KEY_SECRET_ARN": feature_store.card_hash_key.secret_arn,
            "TRANSACTIONS_TOPIC": config.transactions_topic,
            "LABELS_TOPIC": config.labels_topic,
            "MAX_CLOCK_SKEW_SECONDS": str(config.max_clock_skew_seconds),  # the updater's time guard
            "LAKE_URI": storage.lake_uri,
            **powertools_environment(config),
        }
        self.function = vpc_function(
            self,
            "Function",
            config=config,
            handler="handlers.archive_events.handler",
            description="archiver (stream -> event lake)",
            settings=cfg,
            layer=layer,
            network=network,
            security_group=network.archiver_sg if network else None,
            environment=environment,
            extra_layers=(arrow_layer,),  # pyarrow for the lake writer
            layer_kinds=("xgboost", "arrow"),
        )
        feature_store.card_hash_key.grant_read(self.function)
        # the archive: PutObject under the lake prefix only (no read, no delete), and the data key
        storage.grant_objects(self.function, "Lake", LAKE_PREFIX, read=False, write=True)

        # Batches that still fail after retries/bisecting: their metadata, for a replay (until
        # then the lake misses them; the stream keeps them for its retention).
        self.failed_batches = failed_batches_queue(self, "FailedBatches", config)
        stream.add_consumer_sources(self.function, cfg, sources.SqsDlq(self.failed_batches), "archiver")
