"""Small helpers shared by the constructs (retention, removal policy, KMS statements)."""

from __future__ import annotations

from typing import get_args

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cdk_app.config import RetentionDays, StageConfig
from cdk_app.nag import acknowledge

# S3 object-level actions are granted on one bucket and one prefix at a time: the ARN ends in /*,
# which cdk-nag reports as a wildcard resource. This is the reason recorded with each of them.
OBJECT_ARN_REASON = (
    "Object-level S3 actions need object ARNs; the resource is one bucket and one key prefix "
    "(bucket/prefix/*), the narrowest form S3 supports."
)


def retention(days: int) -> logs.RetentionDays:
    """Days (as validated by ``config.RetentionDays``) to the CDK enum, whose values are names."""
    return _RETENTION[days]


_RETENTION: dict[int, logs.RetentionDays] = dict(
    zip(get_args(RetentionDays), [m for m in logs.RetentionDays if m.name != "INFINITE"], strict=True)
)


def removal_policy(config: StageConfig) -> cdk.RemovalPolicy:
    return cdk.RemovalPolicy.RETAIN if config.retain_data else cdk.RemovalPolicy.DESTROY


def log_group(scope: Construct, construct_id: str, config: StageConfig, days: int) -> logs.LogGroup:
    """A log group with the stage's retention and removal policy (no physical name: no clashes)."""
    return logs.LogGroup(
        scope, construct_id, retention=retention(days), removal_policy=removal_policy(config)
    )


def grant_kms(grantee: iam.IGrantable, key: kms.IKey, *, encrypt: bool) -> None:
    """Explicit KMS actions (no ``kms:ReEncrypt*``/``GenerateDataKey*`` wildcards)."""
    actions = ["kms:Decrypt"]
    if encrypt:
        actions += ["kms:GenerateDataKey", "kms:Encrypt"]
    grantee.grant_principal.add_to_principal_policy(
        iam.PolicyStatement(actions=actions, resources=[key.key_arn])
    )


def failed_batches_queue(scope: Construct, construct_id: str, config: StageConfig) -> sqs.Queue:
    """The on-failure destination of a consumer's event source mappings: batches that still fail
    after retries and bisecting land here as metadata (stream, shard/partition, offsets), so they
    can be replayed from the stream."""
    queue = sqs.Queue(
        scope,
        construct_id,
        encryption=sqs.QueueEncryption.SQS_MANAGED,
        enforce_ssl=True,
        retention_period=cdk.Duration.days(14),
        removal_policy=removal_policy(config),  # prod: failed batches' metadata outlives the stack
    )
    acknowledge(
        queue,
        "AwsSolutions-SQS3",
        "This queue is itself the on-failure destination (dead-letter queue) of the event source "
        "mappings; nothing consumes it automatically, so it needs no DLQ of its own.",
    )
    return queue
