"""The event stream between the scorer and its two consumers, the feature updater and the archiver:
MSK (Kafka) or Kinesis, by stage config."""

from __future__ import annotations

import base64

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_msk as msk
from aws_cdk import custom_resources as cr
from constructs import Construct

from cdk_app.config import StageConfig, StreamConsumerConfig, StreamKind
from cdk_app.constructs.common import grant_kms, log_group, removal_policy
from cdk_app.constructs.network import Network
from cdk_app.nag import acknowledge


class EventStream(Construct):
    """What the serving side needs from a stream, whichever kind it is."""

    kind: StreamKind
    config: StageConfig

    def scorer_environment(self) -> dict[str, str]:
        raise NotImplementedError

    def grant_publish(self, grantee: iam.IGrantable) -> None:
        raise NotImplementedError

    def add_consumer_sources(
        self,
        function: lambda_.Function,
        consumer: StreamConsumerConfig,
        on_failure: lambda_.IEventSourceDlq,
        name: str,
    ) -> None:
        """Event source mappings feeding ``function`` every event of the stream, as consumer
        ``name`` (``updater``, ``archiver``): each consumer has its own mappings and position."""
        raise NotImplementedError

    def lag_metric(self, function: lambda_.IFunction) -> cloudwatch.Metric:
        """How far a consumer is behind the stream (OffsetLag records / IteratorAge ms)."""
        raise NotImplementedError

    def _starting_position(self, consumer: StreamConsumerConfig) -> lambda_.StartingPosition:
        return lambda_.StartingPosition[consumer.starting_position]


class MskStream(EventStream):
    """MSK provisioned, SASL/IAM over TLS only, KMS at rest, topics declared as AWS::MSK::Topic."""

    cluster: msk.CfnCluster
    bootstrap_brokers: str
    topics: dict[str, msk.CfnTopic]

    def __init__(
        self, scope: Construct, construct_id: str, *, config: StageConfig, network: Network, key: kms.IKey
    ) -> None:
        super().__init__(scope, construct_id)
        if network.msk_sg is None:
            raise ValueError("the network has no MSK security group (stream_kind is not msk)")
        self.kind = "msk"
        self.config = config
        cfg = config.msk
        replication = min(3, cfg.broker_count)
        min_insync = max(1, replication - 1)
        server_properties = "\n".join(
            [
                "auto.create.topics.enable=false",
                f"default.replication.factor={replication}",
                f"min.insync.replicas={min_insync}",
                f"num.partitions={cfg.partitions}",
                "unclean.leader.election.enable=false",
            ]
        )
        configuration = msk.CfnConfiguration(
            self,
            "Configuration",
            name=f"{config.prefix}-kafka",
            server_properties=server_properties,
            kafka_versions_list=[cfg.kafka_version],
        )
        broker_logs = log_group(self, "BrokerLogs", config, cfg.log_retention_days)
        self.cluster = msk.CfnCluster(
            self,
            "Cluster",
            cluster_name=config.prefix,
            kafka_version=cfg.kafka_version,
            number_of_broker_nodes=cfg.broker_count,
            broker_node_group_info=msk.CfnCluster.BrokerNodeGroupInfoProperty(
                instance_type=cfg.broker_instance_type,
                client_subnets=network.private_subnet_ids,
                security_groups=[network.msk_sg.security_group_id],
                storage_info=msk.CfnCluster.StorageInfoProperty(
                    ebs_storage_info=msk.CfnCluster.EBSStorageInfoProperty(volume_size=cfg.broker_volume_gib)
                ),
            ),
            client_authentication=msk.CfnCluster.ClientAuthenticationProperty(
                sasl=msk.CfnCluster.SaslProperty(iam=msk.CfnCluster.IamProperty(enabled=True)),
                unauthenticated=msk.CfnCluster.UnauthenticatedProperty(enabled=False),
            ),
            encryption_info=msk.CfnCluster.EncryptionInfoProperty(
                encryption_at_rest=msk.CfnCluster.EncryptionAtRestProperty(
                    data_volume_kms_key_id=key.key_arn
                ),
                encryption_in_transit=msk.CfnCluster.EncryptionInTransitProperty(
                    client_broker="TLS", in_cluster=True
                ),
            ),
            configuration_info=msk.CfnCluster.ConfigurationInfoProperty(
                arn=configuration.attr_arn, revision=configuration.attr_latest_revision_revision
            ),
            logging_info=msk.CfnCluster.LoggingInfoProperty(
                broker_logs=msk.CfnCluster.BrokerLogsProperty(
                    cloud_watch_logs=msk.CfnCluster.CloudWatchLogsProperty(
                        enabled=True, log_group=broker_logs.log_group_name
                    )
                )
            ),
            enhanced_monitoring="PER_TOPIC_PER_BROKER",
        )
        # prod (retain_data): the brokers' data outlives the stack, like the buckets and Redis
        self.cluster.apply_removal_policy(removal_policy(config))
        configuration.apply_removal_policy(removal_policy(config))
        self.topics = {}
        for name in (config.transactions_topic, config.labels_topic):
            topic = msk.CfnTopic(
                self,
                f"Topic-{name}",
                cluster_arn=self.cluster.attr_arn,
                topic_name=name,
                partition_count=cfg.partitions,
                replication_factor=replication,
                configs=base64.b64encode(f"min.insync.replicas={min_insync}".encode()).decode(),
            )
            topic.apply_removal_policy(removal_policy(config))  # a deleted topic loses its records
            self.topics[name] = topic

        # AWS::MSK::Cluster returns no broker list; read it once per deploy (IAM listener string).
        brokers = cr.AwsCustomResource(
            self,
            "BootstrapBrokers",
            on_update=cr.AwsSdkCall(
                service="Kafka",
                action="getBootstrapBrokers",
                parameters={"ClusterArn": self.cluster.attr_arn},
                physical_resource_id=cr.PhysicalResourceId.of(f"{config.prefix}-bootstrap-brokers"),
                output_paths=["BootstrapBrokerStringSaslIam"],
            ),
            policy=cr.AwsCustomResourcePolicy.from_sdk_calls(resources=[self.cluster.attr_arn]),
            install_latest_aws_sdk=False,
        )
        self.bootstrap_brokers = brokers.get_response_field("BootstrapBrokerStringSaslIam")
        provider = cdk.Stack.of(self).node.try_find_child(
            "AWS" + cr.AwsCustomResource.PROVIDER_FUNCTION_UUID.replace("-", "")
        )
        if provider is not None:
            acknowledge(
                provider,
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
                "CDK's AwsCustomResource provider (one GetBootstrapBrokers call per deploy) only writes its "
                "own logs with AWS's basic execution policy; its SDK call is scoped to the cluster ARN.",
            )

    def kafka_arn(self, resource: str, name: str) -> str:
        """``arn:...:kafka:region:account:<resource>/<cluster-name>/<cluster-uuid>/<name>``."""
        parts = cdk.Fn.split("/", self.cluster.attr_arn, 3)
        stack = cdk.Stack.of(self)
        return (
            f"arn:{stack.partition}:kafka:{stack.region}:{stack.account}:{resource}/"
            f"{cdk.Fn.select(1, parts)}/{cdk.Fn.select(2, parts)}/{name}"
        )

    def consumer_group(self, topic: str, consumer: str = "updater") -> str:
        """``fraudsys-<stage>-<consumer>-<topic>``: one group per consumer and topic, so the updater
        and the archiver each read every record at their own pace."""
        return f"{self.config.prefix}-{consumer}-{topic.replace('.', '-')}"

    def scorer_environment(self) -> dict[str, str]:
        return {
            "STREAM_KIND": "kafka",
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_brokers,
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "AWS_MSK_IAM",
        }

    def grant_publish(self, grantee: iam.IGrantable) -> None:
        principal = grantee.grant_principal
        principal.add_to_principal_policy(
            iam.PolicyStatement(actions=["kafka-cluster:Connect"], resources=[self.cluster.attr_arn])
        )
        principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"],
                # the scorer publishes scored transactions and, for POST /labels, labels
                resources=[
                    self.kafka_arn("topic", self.config.transactions_topic),
                    self.kafka_arn("topic", self.config.labels_topic),
                ],
            )
        )

    def add_consumer_sources(
        self,
        function: lambda_.Function,
        consumer: StreamConsumerConfig,
        on_failure: lambda_.IEventSourceDlq,
        name: str,
    ) -> None:
        topics = [self.config.transactions_topic, self.config.labels_topic]
        role = function.role
        if role is None:
            raise ValueError(f"the {name} function needs a role")
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=[
                    "kafka:DescribeClusterV2",
                    "kafka:GetBootstrapBrokers",
                    "kafka-cluster:Connect",
                    "kafka-cluster:DescribeClusterDynamicConfiguration",
                ],
                resources=[self.cluster.attr_arn],
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"],
                resources=[self.kafka_arn("topic", t) for t in topics],
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["kafka-cluster:DescribeGroup", "kafka-cluster:AlterGroup"],
                resources=[self.kafka_arn("group", self.consumer_group(t, name)) for t in topics],
            )
        )
        # The pollers place ENIs in the cluster's subnets; these describe calls have no resource ARNs.
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["ec2:DescribeVpcs", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups"],
                resources=["*"],
            )
        )
        # lambda.EventSourceMapping rather than ManagedKafkaEventSource: the latter attaches
        # AWSLambdaMSKExecutionRole (kafka:* describe calls on every cluster); the statements above
        # are the same permissions scoped to this cluster, its two topics and its consumer groups.
        for topic in topics:
            lambda_.EventSourceMapping(
                function,
                f"Kafka-{topic}",
                target=function,
                event_source_arn=self.cluster.attr_arn,
                kafka_topic=topic,
                kafka_consumer_group_id=self.consumer_group(topic, name),
                starting_position=self._starting_position(consumer),
                batch_size=consumer.batch_size,
                max_batching_window=cdk.Duration.seconds(consumer.max_batching_window_seconds),
                # Kafka error handling (retries, bisect, partial batches, destination) needs pollers.
                provisioned_poller_config=lambda_.ProvisionedPollerConfig(
                    minimum_pollers=consumer.min_pollers, maximum_pollers=consumer.max_pollers
                ),
                bisect_batch_on_error=True,
                report_batch_item_failures=True,
                retry_attempts=consumer.retry_attempts,
                max_record_age=cdk.Duration.seconds(consumer.max_record_age_seconds),
                on_failure=on_failure,
            )

    def lag_metric(self, function: lambda_.IFunction) -> cloudwatch.Metric:
        return function.metric("OffsetLag", statistic="Maximum", period=cdk.Duration.minutes(1))


class KinesisStream(EventStream):
    """One KMS-encrypted Kinesis stream for transactions and labels (``kind`` in each payload)."""

    stream: kinesis.Stream

    def __init__(self, scope: Construct, construct_id: str, *, config: StageConfig, key: kms.IKey) -> None:
        super().__init__(scope, construct_id)
        self.kind = "kinesis"
        self.config = config
        cfg = config.kinesis
        self.stream = kinesis.Stream(
            self,
            "Stream",
            encryption=kinesis.StreamEncryption.KMS,
            encryption_key=key,
            stream_mode=kinesis.StreamMode.ON_DEMAND
            if cfg.shard_count is None
            else kinesis.StreamMode.PROVISIONED,
            shard_count=cfg.shard_count,
            retention_period=cdk.Duration.hours(cfg.retention_hours),
            removal_policy=removal_policy(config),
        )
        acknowledge(
            self.stream,
            "AwsSolutions-KDS3",
            "A customer-managed key on purpose: the stage's data key, with rotation, a key policy under our "
            "control and one audit trail for every store of card events (S3, Kinesis, Redis).",
        )
        self._key = key

    def scorer_environment(self) -> dict[str, str]:
        return {"STREAM_KIND": "kinesis", "KINESIS_STREAM_NAME": self.stream.stream_name}

    def grant_publish(self, grantee: iam.IGrantable) -> None:
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["kinesis:PutRecord", "kinesis:PutRecords", "kinesis:DescribeStreamSummary"],
                resources=[self.stream.stream_arn],
            )
        )
        grant_kms(grantee, self._key, encrypt=True)

    def add_consumer_sources(
        self,
        function: lambda_.Function,
        consumer: StreamConsumerConfig,
        on_failure: lambda_.IEventSourceDlq,
        name: str,
    ) -> None:
        # One mapping per consumer on the same stream, each with its own iterator: a shard serves
        # both (Lambda polls each shard once a second per mapping, 2 of Kinesis' 5 reads/s).
        function.add_event_source(
            sources.KinesisEventSource(
                self.stream,
                starting_position=self._starting_position(consumer),
                batch_size=consumer.batch_size,
                max_batching_window=cdk.Duration.seconds(consumer.max_batching_window_seconds),
                bisect_batch_on_error=True,
                report_batch_item_failures=True,
                retry_attempts=consumer.retry_attempts,
                max_record_age=cdk.Duration.seconds(consumer.max_record_age_seconds),
                parallelization_factor=consumer.parallelization_factor,
                on_failure=on_failure,
            )
        )

    def lag_metric(self, function: lambda_.IFunction) -> cloudwatch.Metric:
        return function.metric("IteratorAge", statistic="Maximum", period=cdk.Duration.minutes(1))


def create_stream(
    scope: Construct, construct_id: str, *, config: StageConfig, network: Network | None, key: kms.IKey
) -> EventStream:
    if config.stream_kind == "msk":
        if network is None:
            raise ValueError("an MSK stream needs the stage's network")
        return MskStream(scope, construct_id, config=config, network=network, key=key)
    return KinesisStream(scope, construct_id, config=config, key=key)
