"""The publish outbox: an SQS queue where the scorer keeps a scored transaction whose publish to
the stream failed, and its relay, ``handlers.relay_outbox.handler``, which sends it to the stream
(docs/architecture.md, "Stream events"). Messages that the relay fails ``max_receive_count`` times
go to the outbox's dead-letter queue (alarmed: ``cdk_app.constructs.observability``)."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cdk_app.config import StageConfig
from cdk_app.constructs.common import grant_kms, removal_policy
from cdk_app.constructs.function import powertools_environment, vpc_function
from cdk_app.constructs.network import Network
from cdk_app.constructs.stream import EventStream
from cdk_app.nag import acknowledge


class PublishOutbox(Construct):
    """The outbox queue and its DLQ (the stage's data key: a message holds the stream record, card
    number included, as the stream does), and the relay fed by the queue."""

    queue: sqs.Queue
    dead_letters: sqs.Queue
    relay: lambda_.Function

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: StageConfig,
        network: Network | None,
        layer: lambda_.ILayerVersion,
        stream: EventStream,
        key: kms.IKey,
    ) -> None:
        super().__init__(scope, construct_id)
        cfg = config.outbox
        self._key = key

        def queue(name: str, **extra: object) -> sqs.Queue:
            return sqs.Queue(
                self,
                name,
                encryption=sqs.QueueEncryption.KMS,
                encryption_master_key=key,
                # the data key is reused for 5 minutes: fewer KMS calls by the scorer and the relay
                data_key_reuse=cdk.Duration.minutes(5),
                enforce_ssl=True,
                retention_period=cdk.Duration.days(cfg.retention_days),
                removal_policy=removal_policy(config),  # prod: transactions not yet in the stream
                **extra,  # type: ignore[arg-type]
            )

        self.dead_letters = queue("DeadLetters")
        acknowledge(
            self.dead_letters,
            "AwsSolutions-SQS3",
            "This queue is the outbox's dead-letter queue: messages the relay failed max_receive_count "
            "times wait here (alarmed) for an operator to redrive them to the outbox.",
        )
        self.queue = queue(
            "Queue",
            # AWS: at least 6 x the function's timeout, so a batch in flight is not delivered twice
            visibility_timeout=cdk.Duration.seconds(6 * cfg.timeout_seconds),
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.dead_letters, max_receive_count=cfg.max_receive_count
            ),
        )

        environment = {
            **stream.scorer_environment(),  # the scorer's stream, topics and MSK IAM settings
            "TRANSACTIONS_TOPIC": config.transactions_topic,
            "LABELS_TOPIC": config.labels_topic,
            **powertools_environment(config),
        }
        # the scorer's subnets, its own security group: the brokers (MSK) admit it, Redis does not
        self.relay = vpc_function(
            self,
            "Relay",
            config=config,
            handler="handlers.relay_outbox.handler",
            description="publish outbox relay (SQS -> stream)",
            settings=cfg,
            layer=layer,
            network=network,
            security_group=network.relay_sg if network else None,
            environment=environment,
        )
        stream.grant_publish(self.relay)
        self.relay.add_event_source(
            sources.SqsEventSource(
                self.queue,
                batch_size=cfg.batch_size,
                max_batching_window=(
                    cdk.Duration.seconds(cfg.max_batching_window_seconds)
                    if cfg.max_batching_window_seconds
                    else None
                ),
                max_concurrency=cfg.max_concurrency,
                report_batch_item_failures=True,
            )
        )
        # (the event source grants the relay's role the queue's consume calls and kms:Decrypt)

    @property
    def queue_url(self) -> str:
        return self.queue.queue_url

    def grant_send(self, grantee: iam.IGrantable) -> None:
        """SendMessage (the batch call's permission) on the outbox only, and the data key for it."""
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(actions=["sqs:SendMessage"], resources=[self.queue.queue_arn])
        )
        grant_kms(grantee, self._key, encrypt=True)
