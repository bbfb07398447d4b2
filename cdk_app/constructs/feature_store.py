"""The Redis feature store: ElastiCache with cluster mode enabled (shards per stage), Multi-AZ,
TLS, AUTH on AWS; on LocalStack (no ElastiCache in its community edition) a Redis of its own."""

from __future__ import annotations

import json

from aws_cdk import aws_elasticache as elasticache
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from cdk_app.config import StageConfig
from cdk_app.constructs.common import log_group, removal_policy
from cdk_app.constructs.function import powertools_environment
from cdk_app.constructs.network import Network
from cdk_app.nag import acknowledge
from fraud_adapters.redis_store import REDIS_SERVER_CONFIG


def generated_secret(
    scope: Construct, construct_id: str, field: str, description: str, config: StageConfig
) -> secretsmanager.Secret:
    return secretsmanager.Secret(
        scope,
        construct_id,
        description=description,
        generate_secret_string=secretsmanager.SecretStringGenerator(
            secret_string_template=json.dumps({}),
            generate_string_key=field,
            # Redis AUTH tokens: 16-128 printable characters without @ " / (no punctuation).
            exclude_punctuation=True,
            password_length=64,
        ),
        removal_policy=removal_policy(config),
    )


class FeatureStore(Construct):
    """What the functions need of the feature store, wherever it runs."""

    card_hash_key: secretsmanager.Secret
    auth_secret: secretsmanager.Secret | None
    url: str
    cluster: bool

    def _card_hash_key(self, config: StageConfig) -> secretsmanager.Secret:
        secret = generated_secret(
            self, "CardHashKey", "key", f"{config.prefix}: HMAC key for card ids in Redis", config
        )
        acknowledge(
            secret,
            "AwsSolutions-SMG4",
            "The HMAC key is part of every Redis key: rotating it orphans all feature state, so it is "
            "changed only together with a feature-store rebuild, never on a timer.",
        )
        return secret

    def handler_environment(self, config: StageConfig, redis_timeout_ms: int) -> dict[str, str]:
        """What both handlers need to reach the feature store and read the stream's topics."""
        return {
            "REDIS_URL": self.url,
            # true: the handlers use a cluster client (redis.RedisCluster) on REDIS_URL.
            "REDIS_CLUSTER": "true" if self.cluster else "false",
            **({"REDIS_AUTH_SECRET_ARN": self.auth_secret.secret_arn} if self.auth_secret else {}),
            "REDIS_TIMEOUT_MS": str(redis_timeout_ms),
            "CARD_HASH_KEY_SECRET_ARN": self.card_hash_key.secret_arn,
            "TRANSACTIONS_TOPIC": config.transactions_topic,
            "LABELS_TOPIC": config.labels_topic,
            "LABEL_DELAY_SECONDS": str(config.label_delay_seconds),
            "MAX_CLOCK_SKEW_SECONDS": str(config.max_clock_skew_seconds),
            **(
                {"MAX_REQUEST_AGE_SECONDS": str(config.max_request_age_seconds)}
                if config.max_request_age_seconds is not None
                else {}
            ),
            **powertools_environment(config),
        }

    def grant_connect(self, grantee: iam.IGrantable) -> None:
        """What a client needs besides the network path: the AUTH token and the card HMAC key."""
        if self.auth_secret is not None:
            self.auth_secret.grant_read(grantee)
        self.card_hash_key.grant_read(grantee)


class ExternalRedis(FeatureStore):
    """A ``platform: localstack`` stage's Redis (``localstack.redis_url``): one node, no TLS, no
    AUTH; the card hash key is a generated secret as on AWS."""

    def __init__(self, scope: Construct, construct_id: str, *, config: StageConfig) -> None:
        super().__init__(scope, construct_id)
        self.auth_secret = None
        self.cluster = False
        self.url = config.localstack.redis_url
        self.card_hash_key = self._card_hash_key(config)


def create_feature_store(
    scope: Construct, construct_id: str, *, config: StageConfig, network: Network | None, key: kms.IKey
) -> FeatureStore:
    if network is None:
        return ExternalRedis(scope, construct_id, config=config)
    return RedisFeatureStore(scope, construct_id, config=config, network=network, key=key)


class RedisFeatureStore(FeatureStore):
    """A Redis Cluster: ``redis.num_shards`` shards, each a primary + ``redis.replicas_per_shard``
    replicas in other AZs with automatic failover (Multi-AZ when there is a replica).

    Cluster mode enabled, so memory scales out with shards: the store's keys are hash-tagged (a
    card's keys share one slot, a merchant's another) and each Lua script touches one slot. The
    handlers reach it through the configuration endpoint with a cluster client (``REDIS_CLUSTER``).
    """

    auth_secret: secretsmanager.Secret
    replication_group: elasticache.CfnReplicationGroup
    url: str

    def __init__(
        self, scope: Construct, construct_id: str, *, config: StageConfig, network: Network, key: kms.IKey
    ) -> None:
        super().__init__(scope, construct_id)
        redis = config.redis
        policy = removal_policy(config)

        self.cluster = True
        self.auth_secret = generated_secret(
            self, "AuthToken", "token", f"{config.prefix}: Redis AUTH token", config
        )
        acknowledge(
            self.auth_secret,
            "AwsSolutions-SMG4",
            "Rotating the Redis AUTH token needs ElastiCache's two-step ROTATE/SET update done in step "
            "with the clients; it is an operator runbook step (docs/infra.md), not a rotation Lambda.",
        )
        self.card_hash_key = self._card_hash_key(config)

        subnets = elasticache.CfnSubnetGroup(
            self,
            "Subnets",
            description=f"{config.prefix} Redis private subnets",
            subnet_ids=network.private_subnet_ids,
        )
        slow_log = log_group(self, "SlowLog", config, redis.slow_log_retention_days)
        parameters = elasticache.CfnParameterGroup(
            self,
            "Parameters",
            cache_parameter_group_family=redis.parameter_family,
            description=f"{config.prefix} feature store: cluster mode, listpack sizes of the store layout",
            properties={"cluster-enabled": "yes", **REDIS_SERVER_CONFIG},
        )
        self.replication_group = elasticache.CfnReplicationGroup(
            self,
            "Redis",
            replication_group_description=f"{config.prefix} online feature store",
            engine="redis",
            engine_version=redis.engine_version,
            cache_node_type=redis.node_type,
            cluster_mode="enabled",
            cache_parameter_group_name=parameters.ref,
            num_node_groups=redis.num_shards,
            replicas_per_node_group=redis.replicas_per_shard,
            # Required in cluster mode; with replicas a shard's primary fails over to one of them.
            automatic_failover_enabled=True,
            multi_az_enabled=redis.multi_az,
            port=redis.port,
            cache_subnet_group_name=subnets.ref,
            security_group_ids=[network.redis_sg.security_group_id],
            transit_encryption_enabled=True,
            transit_encryption_mode="required",
            at_rest_encryption_enabled=True,
            kms_key_id=key.key_arn,
            auth_token=self.auth_secret.secret_value_from_json("token").unsafe_unwrap(),
            auto_minor_version_upgrade=True,
            snapshot_retention_limit=redis.snapshot_retention_days,
            log_delivery_configurations=[
                elasticache.CfnReplicationGroup.LogDeliveryConfigurationRequestProperty(
                    destination_type="cloudwatch-logs",
                    log_format="json",
                    log_type="slow-log",
                    destination_details=elasticache.CfnReplicationGroup.DestinationDetailsProperty(
                        cloud_watch_logs_details=elasticache.CfnReplicationGroup.CloudWatchLogsDestinationDetailsProperty(
                            log_group=slow_log.log_group_name
                        )
                    ),
                )
            ],
        )
        self.replication_group.apply_removal_policy(policy)
        if not redis.multi_az:
            acknowledge(
                self.replication_group,
                "AwsSolutions-AEC4",
                f"Stage {config.name} sets redis.replicas_per_shard = 0 to save cost (a throwaway stage): "
                "no replica to fail over to, so no Multi-AZ; a lost primary loses its shards' state.",
            )
        # The configuration endpoint: a cluster client discovers the shards (CLUSTER SLOTS) from it.
        # Database 0 is the only one in cluster mode; redis-py's RedisCluster.from_url accepts "/0".
        self.url = (
            f"rediss://{self.replication_group.attr_configuration_end_point_address}:"
            f"{self.replication_group.attr_configuration_end_point_port}/0"
        )
