"""Deletion and replacement policies of every stateful resource, per stage of cdk.json.

prod (``retain_data: true``): every resource that holds data outlives its stack (DeletionPolicy and
UpdateReplacePolicy ``Retain``, or ``Snapshot`` where CloudFormation supports it). dev: ``cdk
destroy`` leaves nothing billed behind and does not fail: nothing is retained but the resources
listed below with their reason, and every bucket has CDK's auto-delete custom resource (a bucket
that is not empty cannot be deleted, and the access-log bucket is never empty).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.iam import StackTemplate, load_assembly

STATEFUL = {
    "AWS::S3::Bucket",
    "AWS::KMS::Key",
    "AWS::Kinesis::Stream",
    "AWS::MSK::Cluster",
    "AWS::MSK::Configuration",
    "AWS::MSK::Topic",
    "AWS::ElastiCache::ReplicationGroup",
    "AWS::SecretsManager::Secret",
    "AWS::Logs::LogGroup",
    "AWS::SageMaker::MlflowTrackingServer",
    "AWS::SageMaker::MlflowApp",
    "AWS::SQS::Queue",
    "AWS::DynamoDB::Table",
    "AWS::EFS::FileSystem",
    "AWS::RDS::DBInstance",
    "AWS::RDS::DBCluster",
    "AWS::ECR::Repository",
}
KEPT = {"Retain", "RetainExceptOnCreate", "Snapshot"}
#: resources a dev stage keeps on purpose: (type, why)
RETAINED_IN_DEV = {
    # API Gateway's account setting points at this role; deleting it would break every other
    # stage's execution logs in the account (cdk_app/constructs/scorer_api.py). Deleting the
    # AWS::ApiGateway::Account resource changes nothing in the account either way.
    "AWS::IAM::Role": "API Gateway's account-wide CloudWatch role",
    "AWS::ApiGateway::Account": "API Gateway's account-wide setting",
}
#: stateful resources prod deletes on purpose: (type, logical id prefix) -> why
DELETED_IN_PROD = {
    ("AWS::KMS::Key", "ObservabilityAlarmKey"): "encrypts alarm notifications in flight, no data at rest",
}


def _resources(folder: Path) -> list[tuple[StackTemplate, str, dict[str, Any]]]:
    return [
        (stack, logical_id, resource)
        for stack in load_assembly(folder).values()
        for logical_id, resource in stack.resources.items()
    ]


def test_prod_keeps_every_stateful_resource(real_assemblies: dict[str, Path]) -> None:
    resources = _resources(real_assemblies["prod"])
    found = {r["Type"] for _, _, r in resources} & STATEFUL
    # the stage has data in all of these (so the test below is not vacuous)
    assert {
        "AWS::S3::Bucket",
        "AWS::MSK::Cluster",
        "AWS::MSK::Topic",
        "AWS::ElastiCache::ReplicationGroup",
        "AWS::SageMaker::MlflowTrackingServer",
        "AWS::KMS::Key",
    } <= found
    lost = [
        f"{stack.name}/{lid} {r['Type']}: DeletionPolicy={r.get('DeletionPolicy')} "
        f"UpdateReplacePolicy={r.get('UpdateReplacePolicy')}"
        for stack, lid, r in resources
        if r["Type"] in STATEFUL
        and not (r.get("DeletionPolicy") in KEPT and r.get("UpdateReplacePolicy") in KEPT)
        and not any(r["Type"] == kind and lid.startswith(prefix) for kind, prefix in DELETED_IN_PROD)
    ]
    assert lost == []


def test_dev_retains_nothing_but_the_account_level_role(real_assemblies: dict[str, Path]) -> None:
    resources = _resources(real_assemblies["dev"])
    assert {"AWS::S3::Bucket", "AWS::Kinesis::Stream", "AWS::SageMaker::MlflowApp"} <= {
        r["Type"] for _, _, r in resources
    }
    kept = [
        f"{stack.name}/{lid} {r['Type']}"
        for stack, lid, r in resources
        if (r.get("DeletionPolicy") in KEPT or r.get("UpdateReplacePolicy") in KEPT)
        and r["Type"] not in RETAINED_IN_DEV
    ]
    assert kept == []


def test_dev_buckets_empty_themselves_before_deletion(real_assemblies: dict[str, Path]) -> None:
    stacks = load_assembly(real_assemblies["dev"]).values()
    for stack in stacks:
        buckets = {lid for lid, r in stack.resources.items() if r["Type"] == "AWS::S3::Bucket"}
        emptied = {
            r["Properties"]["BucketName"]["Ref"]
            for r in stack.resources.values()
            if r["Type"] == "Custom::S3AutoDeleteObjects"
        }
        assert buckets == emptied, f"{stack.name}: buckets without auto-delete: {sorted(buckets - emptied)}"


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_stacks_with_kept_data_are_protected(real_assemblies: dict[str, Path], stage: str) -> None:
    """Termination protection follows retain_data (prod), so a stray ``cdk destroy`` stops early."""
    import json

    manifest = json.loads((real_assemblies[stage] / "manifest.json").read_text())
    protection = {
        a["properties"]["stackName"]: a["properties"].get("terminationProtection", False)
        for a in manifest["artifacts"].values()
        if a["type"] == "aws:cloudformation:stack"
    }
    assert set(protection.values()) == {stage == "prod"}
