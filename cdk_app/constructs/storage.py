"""S3 buckets (raw data, features, model store, dead letters, the event lake), their access-log
bucket and the data key."""

from __future__ import annotations

from typing import Literal

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk_app.config import StageConfig
from cdk_app.constructs.common import OBJECT_ARN_REASON, grant_kms, removal_policy
from cdk_app.nag import acknowledge

BucketName = Literal["RawData", "Features", "Models", "DeadLetters", "Lake"]

RAW_DATA_PREFIX = "datasets"
FEATURES_PREFIX = "features"
MODEL_STORE_PREFIX = "registry"
MLFLOW_ARTIFACT_PREFIX = "mlflow"
DEAD_LETTER_PREFIX = "updater"
LAKE_PREFIX = "archive"  # the lake root: objects under archive/events/kind=.../dt=.../
DEAD_LETTER_METRICS_ID = "EntireBucket"


class Storage(Construct):
    """Versioned, KMS-encrypted, TLS-only, private buckets; access logs go to one S3-managed log bucket."""

    key: kms.Key
    access_logs: s3.Bucket
    raw_data: s3.Bucket
    features: s3.Bucket
    models: s3.Bucket
    dead_letters: s3.Bucket
    lake: s3.Bucket

    def __init__(self, scope: Construct, construct_id: str, *, config: StageConfig) -> None:
        super().__init__(scope, construct_id)
        policy = removal_policy(config)
        # CDK empties a bucket before deleting it with a custom resource (a Node.js function): not
        # on LocalStack, where the emulator and its data are thrown away as a whole
        auto_delete = not config.retain_data and config.on_aws
        self.key = kms.Key(
            self,
            "DataKey",
            description=f"{config.prefix}: data at rest (S3, Kinesis/MSK, Redis, queues, alarms)",
            enable_key_rotation=True,
            removal_policy=policy,
        )
        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            # Server access logging only supports SSE-S3 on the target bucket.
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[
                s3.LifecycleRule(
                    expiration=cdk.Duration.days(365), noncurrent_version_expiration=cdk.Duration.days(30)
                )
            ],
            removal_policy=policy,
            # dev: CDK's custom resource empties the bucket (every version) before deleting it
            auto_delete_objects=auto_delete,
        )
        acknowledge(
            self.access_logs,
            "AwsSolutions-S1",
            "This is the server-access-log target bucket; logging it into itself would loop.",
        )

        self._prefix = config.prefix

        def bucket(
            name: BucketName,
            *,
            expire_days: int | None = None,
            metrics: bool = False,
            transitions: list[s3.Transition] | None = None,
        ) -> s3.Bucket:
            rules = [
                s3.LifecycleRule(
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(7),
                    noncurrent_version_expiration=cdk.Duration.days(30),
                    expiration=cdk.Duration.days(expire_days) if expire_days else None,
                    transitions=transitions,
                )
            ]
            return s3.Bucket(
                self,
                name,
                bucket_name=self.bucket_name(name),
                encryption=s3.BucketEncryption.KMS,
                encryption_key=self.key,
                bucket_key_enabled=True,
                block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
                enforce_ssl=True,
                minimum_tls_version=1.2,
                versioned=True,
                object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
                server_access_logs_bucket=self.access_logs,
                server_access_logs_prefix=f"{name.lower()}/",
                lifecycle_rules=rules,
                metrics=[s3.BucketMetrics(id=DEAD_LETTER_METRICS_ID)] if metrics else None,
                removal_policy=policy,
                auto_delete_objects=auto_delete,
            )

        self.raw_data = bucket("RawData")
        self.features = bucket("Features")
        self.models = bucket("Models")
        self.dead_letters = bucket("DeadLetters", expire_days=90, metrics=True)
        lake = config.lake
        self.lake = bucket(
            "Lake",
            expire_days=lake.expire_after_days,
            transitions=[
                s3.Transition(
                    storage_class=s3.StorageClass.INFREQUENT_ACCESS,
                    transition_after=cdk.Duration.days(lake.infrequent_access_after_days),
                ),
                *(
                    [
                        s3.Transition(
                            storage_class=s3.StorageClass.GLACIER_INSTANT_RETRIEVAL,
                            transition_after=cdk.Duration.days(lake.glacier_ir_after_days),
                        )
                    ]
                    if lake.glacier_ir_after_days is not None
                    else []
                ),
            ],
        )

    def bucket_name(self, bucket: BucketName) -> str:
        """Deterministic physical name, so other stacks build URIs and ARNs without cross-stack imports."""
        return f"{self._prefix}-{bucket.lower()}-{cdk.Aws.ACCOUNT_ID}-{cdk.Aws.REGION}"

    def uri(self, bucket: BucketName, prefix: str) -> str:
        return f"s3://{self.bucket_name(bucket)}/{prefix}"

    @property
    def model_store_uri(self) -> str:
        return self.uri("Models", MODEL_STORE_PREFIX)

    @property
    def mlflow_artifact_uri(self) -> str:
        return self.uri("Models", MLFLOW_ARTIFACT_PREFIX)

    @property
    def dead_letter_uri(self) -> str:
        return self.uri("DeadLetters", DEAD_LETTER_PREFIX)

    @property
    def lake_uri(self) -> str:
        return self.uri("Lake", LAKE_PREFIX)

    def grant_objects(
        self,
        grantee: iam.IGrantable,
        bucket: BucketName,
        prefix: str,
        *,
        read: bool = True,
        write: bool = False,
    ) -> None:
        """Object actions on ``bucket/prefix/*`` and listing of that prefix only, plus the data key."""
        actions = (["s3:GetObject"] if read else []) + (["s3:PutObject"] if write else [])
        bucket_arn = f"arn:{cdk.Aws.PARTITION}:s3:::{self.bucket_name(bucket)}"
        principal = grantee.grant_principal
        principal.add_to_principal_policy(
            iam.PolicyStatement(actions=actions, resources=[f"{bucket_arn}/{prefix}/*"])
        )
        if read:
            principal.add_to_principal_policy(
                iam.PolicyStatement(
                    actions=["s3:ListBucket"],
                    resources=[bucket_arn],
                    conditions={"StringLike": {"s3:prefix": [f"{prefix}/*", prefix]}},
                )
            )
        grant_kms(grantee, self.key, encrypt=write)
        if isinstance(principal, Construct):
            rendered = (
                f"arn:<AWS::Partition>:s3:::{self._prefix}-{bucket.lower()}-<AWS::AccountId>-<AWS::Region>"
            )
            acknowledge(principal, f"AwsSolutions-IAM5[Resource::{rendered}/{prefix}/*]", OBJECT_ARN_REASON)
