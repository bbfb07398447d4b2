"""Network and data stacks: VPC, endpoints, buckets, Redis, and the two stream kinds."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pytest
from aws_cdk.assertions import Match

from .conftest import Synthesized, stage_config


def test_vpc_has_private_subnets_flow_logs_and_nat(msk: Synthesized) -> None:
    network = msk.template("network")

    network.resource_count_is("AWS::EC2::VPC", 1)
    network.has_resource_properties("AWS::EC2::Subnet", {"MapPublicIpOnLaunch": False})
    network.resource_count_is("AWS::EC2::NatGateway", 1)
    network.has_resource_properties(
        "AWS::EC2::FlowLog", {"TrafficType": "ALL", "LogDestinationType": "cloud-watch-logs"}
    )


def _service(endpoint: Mapping[str, Any]) -> str:
    """``sqs`` for ``com.amazonaws.<region>.sqs`` (a Fn::Join of the region)."""
    name = endpoint["Properties"]["ServiceName"]
    last = name if isinstance(name, str) else name["Fn::Join"][1][-1]
    return str(last).rsplit(".", 1)[-1]


def test_endpoints_s3_gateway_and_interfaces_the_lambdas_need(msk: Synthesized, kinesis: Synthesized) -> None:
    for synthesized, expect_kinesis in ((msk, False), (kinesis, True)):
        network = synthesized.template("network")
        network.has_resource_properties("AWS::EC2::VPCEndpoint", {"VpcEndpointType": "Gateway"})
        interfaces = network.find_resources(
            "AWS::EC2::VPCEndpoint",
            {"Properties": {"VpcEndpointType": "Interface", "PrivateDnsEnabled": True}},
        )
        # SQS: the scorer's writes to the publish outbox reach it without the NAT gateway
        expected = {"secretsmanager", "logs", "sqs"} | ({"kinesis-streams"} if expect_kinesis else set())
        assert sorted(_service(e) for e in interfaces.values()) == sorted(expected)
        network.has_resource_properties(
            "AWS::EC2::VPCEndpoint",
            {
                "ServiceName": {"Fn::Join": ["", ["com.amazonaws.", {"Ref": "AWS::Region"}, ".sqs"]]},
                "VpcEndpointType": "Interface",
                "PrivateDnsEnabled": True,
                "SecurityGroupIds": [{"Fn::GetAtt": [Match.string_like_regexp("EndpointSg"), "GroupId"]}],
            },
        )
        # the endpoints' group admits HTTPS from the scorer (the outbox's writer) and the relay
        for client in ("ScorerSg", "RelaySg"):
            network.has_resource_properties(
                "AWS::EC2::SecurityGroupIngress",
                {
                    "GroupId": {"Fn::GetAtt": [Match.string_like_regexp("^NetworkEndpointSg"), "GroupId"]},
                    "SourceSecurityGroupId": {
                        "Fn::GetAtt": [Match.string_like_regexp(f"^Network{client}"), "GroupId"]
                    },
                    "FromPort": 443,
                    "ToPort": 443,
                    "IpProtocol": "tcp",
                },
            )


def test_redis_accepts_only_the_lambda_security_groups(msk: Synthesized) -> None:
    network = msk.template("network")

    ingress = network.find_resources("AWS::EC2::SecurityGroupIngress", {"Properties": {"FromPort": 6380}})
    assert len(ingress) == 2  # scorer and updater, nothing else (not the outbox relay)
    for rule in ingress.values():
        assert "SourceSecurityGroupId" in rule["Properties"]
        assert "CidrIp" not in rule["Properties"]
    sources = {str(r["Properties"]["SourceSecurityGroupId"]["Fn::GetAtt"][0]) for r in ingress.values()}
    # logical ids: the construct path and CDK's 8-digit hash
    assert {re.sub("[0-9A-F]{8}$", "", s) for s in sources} == {"NetworkScorerSg", "NetworkUpdaterSg"}
    network.has_resource_properties(
        "AWS::EC2::SecurityGroupIngress", {"FromPort": 9098, "ToPort": 9098, "IpProtocol": "tcp"}
    )


def test_data_buckets_are_encrypted_versioned_private_tls_only_and_logged(msk: Synthesized) -> None:
    data = msk.template("data")

    data.resource_count_is("AWS::S3::Bucket", 6)  # raw, features, models, dead letters, lake + access logs
    data.resource_count_is("AWS::KMS::Key", 1)
    data.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})
    kms_buckets = data.find_resources(
        "AWS::S3::Bucket",
        {
            "Properties": {
                "BucketEncryption": {
                    "ServerSideEncryptionConfiguration": [
                        Match.object_like(
                            {
                                "BucketKeyEnabled": True,
                                "ServerSideEncryptionByDefault": Match.object_like(
                                    {"SSEAlgorithm": "aws:kms"}
                                ),
                            }
                        )
                    ]
                },
                "VersioningConfiguration": {"Status": "Enabled"},
                "PublicAccessBlockConfiguration": {
                    "BlockPublicAcls": True,
                    "BlockPublicPolicy": True,
                    "IgnorePublicAcls": True,
                    "RestrictPublicBuckets": True,
                },
                "LoggingConfiguration": Match.object_like({"LogFilePrefix": Match.any_value()}),
            }
        },
    )
    names = {str(b["Properties"]["BucketName"]) for b in kms_buckets.values()}
    assert len(kms_buckets) == 5, names
    for kind in ("rawdata", "features", "models", "deadletters", "lake"):
        assert any(f"fraudsys-tmsk-{kind}-" in n for n in names), (kind, names)
    # enforceSSL: every bucket policy denies aws:SecureTransport=false
    policies = data.find_resources("AWS::S3::BucketPolicy")
    assert len(policies) == 6
    for policy in policies.values():
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        assert any(
            s["Effect"] == "Deny"
            and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
            for s in statements
        )


def _lake_bucket(synthesized: Synthesized) -> dict[str, Any]:
    buckets = synthesized.template("data").find_resources("AWS::S3::Bucket")
    (lake,) = [b for b in buckets.values() if "-lake-" in str(b["Properties"].get("BucketName"))]
    return dict(lake["Properties"])


def test_lake_bucket_moves_to_cheaper_classes_and_keeps_per_stage(msk: Synthesized) -> None:
    # given the test stage's lake: the defaults (IA at 30 days, Glacier IR at 90, kept for good)
    lake = _lake_bucket(msk)

    # then it is KMS-encrypted with the data key, logged, and transitions as configured
    assert (
        lake["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"][
            "SSEAlgorithm"
        ]
        == "aws:kms"
    )
    assert lake["LoggingConfiguration"]["LogFilePrefix"] == "lake/"
    (rule,) = lake["LifecycleConfiguration"]["Rules"]
    assert rule["Transitions"] == [
        {"StorageClass": "STANDARD_IA", "TransitionInDays": 30},
        {"StorageClass": "GLACIER_IR", "TransitionInDays": 90},
    ]
    assert "ExpirationInDays" not in rule


def test_lake_retention_is_a_stage_setting(kinesis: Synthesized) -> None:
    # given a stage that keeps the lake one year, without Glacier (conftest.KINESIS_CONFIG)
    (rule,) = _lake_bucket(kinesis)["LifecycleConfiguration"]["Rules"]
    assert rule["Transitions"] == [{"StorageClass": "STANDARD_IA", "TransitionInDays": 60}]
    assert rule["ExpirationInDays"] == 365


def test_lake_transitions_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="glacier_ir_after_days"):
        stage_config("tbad", lake={"infrequent_access_after_days": 90, "glacier_ir_after_days": 60})
    with pytest.raises(ValueError, match="expire_after_days"):
        stage_config("tbad", lake={"expire_after_days": 60})


def test_redis_is_a_cluster_of_configured_shards_multi_az_encrypted_with_auth_from_secret(
    msk: Synthesized,
) -> None:
    data = msk.template("data")

    # the msk test stage: 3 shards x 2 replicas
    data.has_resource_properties(
        "AWS::ElastiCache::ReplicationGroup",
        {
            "Engine": "redis",
            "ClusterMode": "enabled",
            "CacheParameterGroupName": {"Ref": Match.any_value()},
            "NumNodeGroups": 3,
            "ReplicasPerNodeGroup": 2,
            "AutomaticFailoverEnabled": True,
            "MultiAZEnabled": True,
            "TransitEncryptionEnabled": True,
            "TransitEncryptionMode": "required",
            "AtRestEncryptionEnabled": True,
            "KmsKeyId": Match.any_value(),
            "Port": 6380,
            "AuthToken": Match.object_like(
                {"Fn::Join": ["", Match.array_with([Match.string_like_regexp("resolve:secretsmanager")])]}
            ),
            "LogDeliveryConfigurations": [Match.object_like({"LogType": "slow-log"})],
        },
    )
    # shards and replicas come from NumNodeGroups/ReplicasPerNodeGroup, never a flat node count
    group = next(iter(data.find_resources("AWS::ElastiCache::ReplicationGroup").values()))
    assert "NumCacheClusters" not in group["Properties"]
    data.has_resource_properties(
        "AWS::SecretsManager::Secret",
        {
            "GenerateSecretString": Match.object_like(
                {"GenerateStringKey": "token", "ExcludePunctuation": True}
            )
        },
    )
    data.has_resource_properties(
        "AWS::SecretsManager::Secret",
        {"GenerateSecretString": Match.object_like({"GenerateStringKey": "key"})},
    )
    # its own parameter group: cluster mode, and the listpack size the store layout is sized for
    data.has_resource_properties(
        "AWS::ElastiCache::ParameterGroup",
        {
            "CacheParameterGroupFamily": "redis7",
            "Properties": {"cluster-enabled": "yes", "zset-max-listpack-value": "128"},
        },
    )


def test_redis_with_no_replica_is_one_shard_without_multi_az_but_still_encrypted(
    kinesis: Synthesized,
) -> None:
    # the kinesis test stage: 1 shard, 0 replicas (cdk-nag's Multi-AZ rule acknowledged for it)
    kinesis.template("data").has_resource_properties(
        "AWS::ElastiCache::ReplicationGroup",
        {
            "ClusterMode": "enabled",
            "NumNodeGroups": 1,
            "ReplicasPerNodeGroup": 0,
            "MultiAZEnabled": False,
            "TransitEncryptionEnabled": True,
            "AtRestEncryptionEnabled": True,
            "AuthToken": Match.any_value(),
        },
    )


def test_msk_cluster_iam_auth_tls_kms_and_declared_topics(msk: Synthesized) -> None:
    data = msk.template("data")

    data.has_resource_properties(
        "AWS::MSK::Cluster",
        {
            "NumberOfBrokerNodes": 2,
            "ClientAuthentication": {
                "Sasl": {"Iam": {"Enabled": True}},
                "Unauthenticated": {"Enabled": False},
            },
            "EncryptionInfo": {
                "EncryptionAtRest": {"DataVolumeKMSKeyId": Match.any_value()},
                "EncryptionInTransit": {"ClientBroker": "TLS", "InCluster": True},
            },
            "LoggingInfo": {"BrokerLogs": {"CloudWatchLogs": Match.object_like({"Enabled": True})}},
        },
    )
    data.has_resource_properties(
        "AWS::MSK::Configuration",
        {"ServerProperties": Match.string_like_regexp("auto.create.topics.enable=false")},
    )
    for topic in ("fraudsys.transactions", "fraudsys.labels"):
        data.has_resource_properties(
            "AWS::MSK::Topic", {"TopicName": topic, "PartitionCount": 6, "ReplicationFactor": 2}
        )
    data.resource_count_is("AWS::Kinesis::Stream", 0)


def test_kinesis_stage_has_an_encrypted_stream_and_no_msk(kinesis: Synthesized) -> None:
    data = kinesis.template("data")

    data.has_resource_properties(
        "AWS::Kinesis::Stream",
        {
            "ShardCount": 2,
            "StreamEncryption": {"EncryptionType": "KMS", "KeyId": Match.any_value()},
            "RetentionPeriodHours": 24,
        },
    )
    data.resource_count_is("AWS::MSK::Cluster", 0)
    data.resource_count_is("AWS::MSK::Topic", 0)
    kinesis.template("network").resource_count_is("AWS::EC2::NatGateway", 1)
