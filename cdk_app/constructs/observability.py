"""CloudWatch alarms, the alarm topic (SNS, KMS) and one dashboard for the whole stage."""

from __future__ import annotations

from dataclasses import dataclass

import aws_cdk as cdk
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cdk_app.config import StageConfig
from cdk_app.constructs.storage import DEAD_LETTER_METRICS_ID
from cdk_app.constructs.stream import EventStream

NAMESPACE = "FraudSys"
ONE_MINUTE = cdk.Duration.minutes(1)
FIVE_MINUTES = cdk.Duration.minutes(5)


@dataclass(frozen=True)
class Monitored:
    """The resources whose health the alarms watch."""

    scorer: lambda_.IFunction
    updater: lambda_.IFunction
    archiver: lambda_.IFunction
    api: apigw.RestApi
    api_stage: str
    stream: EventStream
    failed_batches: sqs.IQueue
    archiver_failed_batches: sqs.IQueue
    dead_letter_bucket_name: str
    outbox: sqs.IQueue
    outbox_dead_letters: sqs.IQueue
    outbox_relay: lambda_.IFunction


class Observability(Construct):
    """Alarms to an encrypted SNS topic; ``alarms`` maps a short name to each alarm."""

    topic: sns.Topic
    alarms: dict[str, cloudwatch.Alarm]
    dashboard: cloudwatch.Dashboard

    def __init__(
        self, scope: Construct, construct_id: str, *, config: StageConfig, monitored: Monitored
    ) -> None:
        super().__init__(scope, construct_id)
        limits = config.alarms
        key = kms.Key(
            self,
            "AlarmKey",
            description=f"{config.prefix}: alarm topic",
            enable_key_rotation=True,
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        # CloudWatch publishes to the encrypted topic: it needs the key (AWS-documented statement).
        key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=["*"],
                conditions={"StringEquals": {"aws:SourceAccount": cdk.Aws.ACCOUNT_ID}},
            )
        )
        self.topic = sns.Topic(
            self, "AlarmTopic", display_name=f"{config.prefix} alarms", master_key=key, enforce_ssl=True
        )
        if limits.email:
            self.topic.add_subscription(subscriptions.EmailSubscription(limits.email))

        m = monitored
        service = {"service": config.service_name}

        def custom(name: str, statistic: str = "Sum", period: cdk.Duration = ONE_MINUTE) -> cloudwatch.Metric:
            return cloudwatch.Metric(
                namespace=NAMESPACE,
                metric_name=name,
                dimensions_map=service,
                statistic=statistic,
                period=period,
            )

        api_dims = {"ApiName": m.api.rest_api_name, "Stage": m.api_stage}
        api_latency = cloudwatch.Metric(
            namespace="AWS/ApiGateway",
            metric_name="Latency",
            dimensions_map=api_dims,
            statistic="p99",
            period=ONE_MINUTE,
        )
        api_5xx = cloudwatch.Metric(
            namespace="AWS/ApiGateway",
            metric_name="5XXError",
            dimensions_map=api_dims,
            statistic="Sum",
            period=ONE_MINUTE,
        )
        fraud_rate = cloudwatch.MathExpression(
            expression=(
                f"IF(predictions >= {limits.min_predictions_for_fraud_rate}, 100 * frauds / predictions, 0)"
            ),
            using_metrics={
                "frauds": custom("FraudDecisions", period=FIVE_MINUTES),
                "predictions": custom("Predictions", period=FIVE_MINUTES),
            },
            label="Fraud decisions (% of predictions)",
            period=FIVE_MINUTES,
        )
        dead_letters = cloudwatch.MathExpression(
            expression="FILL(queued, 0) + FILL(unarchived, 0) + FILL(poison, 0) + FILL(puts, 0)",
            using_metrics={
                "queued": m.failed_batches.metric_approximate_number_of_messages_visible(
                    statistic="Maximum", period=FIVE_MINUTES
                ),
                "unarchived": m.archiver_failed_batches.metric_approximate_number_of_messages_visible(
                    statistic="Maximum", period=FIVE_MINUTES
                ),
                "poison": custom("DeadLetters", period=FIVE_MINUTES),
                "puts": cloudwatch.Metric(
                    namespace="AWS/S3",
                    metric_name="PutRequests",
                    dimensions_map={
                        "BucketName": m.dead_letter_bucket_name,
                        "FilterId": DEAD_LETTER_METRICS_ID,
                    },
                    statistic="Sum",
                    period=FIVE_MINUTES,
                ),
            },
            label="Dead letters (failed batches queued: updater, archiver; poison records)",
            period=FIVE_MINUTES,
        )
        lag = m.stream.lag_metric(m.updater)
        archive_lag = m.stream.lag_metric(m.archiver)
        lag_threshold = limits.offset_lag_records if m.stream.kind == "msk" else limits.iterator_age_ms
        lag_unit = "MSK OffsetLag (records)" if m.stream.kind == "msk" else "Kinesis IteratorAge (ms)"
        throttles = cloudwatch.MathExpression(
            expression="FILL(scorer, 0) + FILL(updater, 0) + FILL(archiver, 0) + FILL(relay, 0)",
            using_metrics={
                "scorer": m.scorer.metric_throttles(statistic="Sum", period=ONE_MINUTE),
                "updater": m.updater.metric_throttles(statistic="Sum", period=ONE_MINUTE),
                "archiver": m.archiver.metric_throttles(statistic="Sum", period=ONE_MINUTE),
                "relay": m.outbox_relay.metric_throttles(statistic="Sum", period=ONE_MINUTE),
            },
            label="Lambda throttles",
            period=ONE_MINUTE,
        )
        self.alarms = {}

        def alarm(
            name: str,
            metric: cloudwatch.IMetric,
            threshold: float,
            description: str,
            *,
            periods: int = 3,
            datapoints: int = 2,
        ) -> None:
            created = cloudwatch.Alarm(
                self,
                name,
                alarm_name=f"{config.prefix}-{name}",
                alarm_description=description,
                metric=metric,
                threshold=threshold,
                evaluation_periods=periods,
                datapoints_to_alarm=datapoints,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            )
            created.add_alarm_action(actions.SnsAction(self.topic))
            created.add_ok_action(actions.SnsAction(self.topic))
            self.alarms[name] = created

        alarm("scorer-p99-latency", api_latency, limits.scorer_p99_latency_ms, "Scorer API p99 latency (ms)")
        alarm("api-5xx", api_5xx, limits.api_5xx_per_minute, "Scorer API 5xx responses per minute")
        alarm(
            "lambda-throttles",
            throttles,
            limits.throttles_per_minute,
            "Scorer + updater + archiver + outbox relay throttles per minute",
        )
        alarm(
            "updater-errors",
            m.updater.metric_errors(statistic="Sum", period=ONE_MINUTE),
            limits.updater_errors_per_minute,
            "Feature updater invocation errors per minute",
        )
        alarm(
            "updater-lag",
            lag,
            lag_threshold,
            f"Feature updater behind the stream: {lag_unit}",
            periods=5,
            datapoints=5,
        )
        # the archiver: the updater's thresholds (a lake behind the stream risks the stream's
        # retention running out before a batch is archived)
        alarm(
            "archiver-errors",
            m.archiver.metric_errors(statistic="Sum", period=ONE_MINUTE),
            limits.updater_errors_per_minute,
            "Archiver (event lake) invocation errors per minute",
        )
        alarm(
            "archiver-lag",
            archive_lag,
            lag_threshold,
            f"Archiver (event lake) behind the stream: {lag_unit}",
            periods=5,
            datapoints=5,
        )
        alarm(
            "dead-letters",
            dead_letters,
            limits.dead_letters_per_5_minutes,
            "Failed batches queued or poison records dead-lettered",
            periods=1,
            datapoints=1,
        )
        alarm(
            "late-or-refused-events",
            cloudwatch.MathExpression(
                expression="FILL(late, 0) + FILL(refused, 0)",
                using_metrics={
                    "late": custom("LateEvents", period=FIVE_MINUTES),
                    "refused": custom("RefusedEvents", period=FIVE_MINUTES),
                },
                label="Events refused by the time guard or older than their key's retention",
                period=FIVE_MINUTES,
            ),
            limits.late_or_refused_events_per_5_minutes,
            "Stream events dated in the future of their arrival, or older than the online retention "
            "(dead-lettered: a clock, a producer or a replay is wrong)",
            periods=1,
            datapoints=1,
        )
        # the publish outbox (docs/architecture.md, "Stream events"): a failed publish is an event
        # late to the updater and the lake; one in the outbox's DLQ, or lost because SQS failed
        # too, is missing from both until an operator acts
        alarm(
            "publish-failures",
            custom("PublishFailures", period=FIVE_MINUTES),
            1,
            "Scored transactions whose publish to the stream failed (each went to the publish outbox, "
            "or was lost: see outbox-write-failures)",
            periods=1,
            datapoints=1,
        )
        alarm(
            "outbox-write-failures",
            custom("OutboxFailures", period=FIVE_MINUTES),
            1,
            "Scored transactions in neither the stream nor the outbox (the publish and the SQS write "
            "both failed): missing from the features and the lake; the scorer's error log names them",
            periods=1,
            datapoints=1,
        )
        alarm(
            "outbox-dead-letters",
            m.outbox_dead_letters.metric_approximate_number_of_messages_visible(
                statistic="Maximum", period=FIVE_MINUTES
            ),
            1,
            "Outbox messages the relay failed every time, moved to the outbox's DLQ: redrive them "
            "once the stream takes records",
            periods=1,
            datapoints=1,
        )
        alarm(
            "outbox-oldest-message",
            m.outbox.metric_approximate_age_of_oldest_message(statistic="Maximum", period=FIVE_MINUTES),
            limits.outbox_oldest_message_seconds,
            "Age of the publish outbox's oldest message (s): the relay is not getting failed publishes "
            "to the stream",
            periods=1,
            datapoints=1,
        )
        alarm(
            "fraud-rate-spike",
            fraud_rate,
            limits.fraud_rate_percent,
            "Share of predictions decided fraud (FraudSys FraudDecisions / Predictions)",
            periods=3,
            datapoints=3,
        )

        self.dashboard = cloudwatch.Dashboard(self, "Dashboard", dashboard_name=f"{config.prefix}-overview")
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(title="Scorer API latency (p99, ms)", left=[api_latency], width=8),
            cloudwatch.GraphWidget(
                title="Scorer API requests and 5xx",
                left=[
                    cloudwatch.Metric(
                        namespace="AWS/ApiGateway",
                        metric_name="Count",
                        dimensions_map=api_dims,
                        statistic="Sum",
                    ),
                    api_5xx,
                ],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="Scorer Lambda duration (p50/p99, ms)",
                left=[m.scorer.metric_duration(statistic="p50"), m.scorer.metric_duration(statistic="p99")],
                width=8,
            ),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Predictions and fraud decisions",
                left=[custom("Predictions"), custom("FraudDecisions")],
                right=[fraud_rate],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="Feature updater errors and lag",
                left=[
                    m.updater.metric_errors(statistic="Sum"),
                    m.updater.metric_invocations(statistic="Sum"),
                ],
                right=[lag],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="Throttles and dead letters", left=[throttles], right=[dead_letters], width=8
            ),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Labels through POST /labels: accepted, unknown transaction",
                left=[custom("LabelsAccepted"), custom("LabelsUnknown")],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="Archiver: events archived, errors and lag",
                left=[custom("ArchivedEvents"), m.archiver.metric_errors(statistic="Sum")],
                right=[archive_lag],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="Publish outbox: failed publishes, outbox writes, relayed; queued and DLQ",
                left=[
                    custom("PublishFailures"),
                    custom("OutboxWrites"),
                    custom("OutboxFailures"),
                    custom("OutboxRelayed"),
                ],
                right=[
                    m.outbox.metric_approximate_number_of_messages_visible(statistic="Maximum"),
                    m.outbox_dead_letters.metric_approximate_number_of_messages_visible(statistic="Maximum"),
                ],
                width=8,
            ),
        )
        self.dashboard.add_widgets(
            cloudwatch.AlarmStatusWidget(title="Alarms", alarms=list(self.alarms.values()), width=24)
        )
