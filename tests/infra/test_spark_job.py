"""The Spark feature job on EMR Serverless and the scheduled retraining workflow (issue 16 item 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from aws_cdk.assertions import Match

from cdk_app.constructs.feature_job import CodeBundling

from .conftest import Synthesized


def render(value: Any) -> str:
    """A CloudFormation string value with its references as ``<Ref>`` / ``<Logical.Attr>``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return str(separator).join(render(part) for part in parts)
    if isinstance(value, dict) and "Ref" in value:
        return f"<{value['Ref']}>"
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return f"<{'.'.join(value['Fn::GetAtt'])}>"
    if isinstance(value, dict) and isinstance(value.get("Fn::Sub"), str):
        return str(value["Fn::Sub"])
    if isinstance(value, dict) and len(value) == 1:
        return f"<{next(iter(value))}>"  # another intrinsic (an import, a select): a placeholder
    return json.dumps(value)


def statements_of(template: Any, role_fragment: str) -> list[dict[str, Any]]:
    policies = template.find_resources("AWS::IAM::Policy")
    return [
        statement
        for policy in policies.values()
        if any(role_fragment in render(role) for role in policy["Properties"].get("Roles", []))
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]


def workflow_definition(template: Any) -> dict[str, Any]:
    (machine,) = template.find_resources("AWS::StepFunctions::StateMachine").values()
    definition: dict[str, Any] = json.loads(render(machine["Properties"]["DefinitionString"]))
    return definition


def test_an_emr_serverless_spark_application_started_on_demand(
    msk: Synthesized, kinesis: Synthesized
) -> None:
    for synthesized, arch in ((msk, "X86_64"), (kinesis, "ARM64")):
        training = synthesized.template("training")
        training.has_resource_properties(
            "AWS::EMRServerless::Application",
            {
                "Type": "SPARK",
                "ReleaseLabel": Match.string_like_regexp(r"^emr-7\.\d+\.\d+$"),
                "Architecture": arch,
                "AutoStartConfiguration": {"Enabled": True},
                "AutoStopConfiguration": {"Enabled": True, "IdleTimeoutMinutes": 15},
                "MaximumCapacity": {"Cpu": "400 vCPU", "Memory": "3000 GB"},
                "MonitoringConfiguration": {
                    "CloudWatchLoggingConfiguration": Match.object_like({"Enabled": True})
                },
            },
        )


def test_the_execution_role_reaches_the_lake_and_the_feature_table_only(msk: Synthesized) -> None:
    training = msk.template("training")
    # given the role EMR Serverless assumes for this application only
    roles = training.find_resources(
        "AWS::IAM::Role",
        {
            "Properties": {
                "AssumeRolePolicyDocument": {
                    "Statement": [
                        Match.object_like({"Principal": {"Service": "emr-serverless.amazonaws.com"}})
                    ]
                }
            }
        },
    )
    ((logical_id, role),) = roles.items()
    trust = role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Condition"]
    assert "/applications/" in render(trust["ArnLike"]["aws:SourceArn"])

    # then every S3 object it may touch is under the lake prefix, the feature prefix, the
    # environment archive's prefix or one of the job's two code assets
    s3 = [
        s for s in statements_of(training, logical_id) if any(a.startswith("s3:") for a in _list(s["Action"]))
    ]
    objects = [
        render(r)
        for s in s3
        if not set(_list(s["Action"])) <= {"s3:ListBucket"}
        for r in _list(s["Resource"])
    ]
    allowed = (
        "-lake-<AWS::AccountId>-<AWS::Region>/archive/*",
        "/features/*",
        "/emr/*",
        "cdk-hnb659fds-assets",
    )
    assert objects
    assert all(any(fragment in resource for fragment in allowed) for resource in objects), objects
    assert not any(resource.endswith(":::*") or resource == "*" for resource in objects)
    # the code: its two objects in CDK's assets bucket, no more
    code = [resource for resource in objects if "cdk-hnb659fds-assets-" in resource]
    assert len(code) == 2
    assert sorted(resource.rsplit(".", 1)[1] for resource in code) == ["py", "zip"]
    # writes (put, delete) only under the features prefix
    writes = [
        render(r)
        for s in s3
        if {"s3:PutObject", "s3:DeleteObject"} & set(_list(s["Action"]))
        for r in _list(s["Resource"])
    ]
    assert writes
    assert all("-features-" in w and w.endswith("/features/*") for w in writes), writes


def test_the_schedule_runs_the_spark_step_then_the_training_task(msk: Synthesized) -> None:
    training = msk.template("training")
    definition = workflow_definition(training)

    # the Spark step first: a job run on the lake, waited for, writing the feature table
    assert definition["StartAt"] == "BuildFeatures"
    spark = definition["States"]["BuildFeatures"]
    assert spark["Resource"].endswith(":states:::emr-serverless:startJobRun.sync")
    assert spark["Next"] == "Train"
    driver = spark["Parameters"]["JobDriver"]["SparkSubmit"]
    arguments = driver["EntryPointArguments"]
    lake = arguments[arguments.index("--lake") + 1]
    table = arguments[arguments.index("--output") + 1]
    assert lake.startswith("s3://fraudsys-tmsk-lake-")
    assert lake.endswith("/archive")
    assert table.startswith("s3://fraudsys-tmsk-features-")
    assert table.endswith("/features/table")
    assert driver["EntryPoint"].endswith(".py")
    submit = driver["SparkSubmitParameters"]
    assert "--conf spark.archives=s3://fraudsys-tmsk-features-" in submit
    assert "/emr/fraudsys-env.tar.gz#environment" in submit
    assert "--conf spark.executorEnv.PYSPARK_PYTHON=./environment/bin/python3" in submit
    assert "--conf spark.submit.pyFiles=s3://" in submit

    # then the training task, on that table
    train = definition["States"]["Train"]
    assert train["Resource"].endswith(":states:::ecs:runTask.sync")
    assert train["End"] is True
    overrides = train["Parameters"]["Overrides"]["ContainerOverrides"][0]["Environment"]
    assert overrides == [{"Name": "TRAINING_SOURCE", "Value": "features"}]
    training.has_resource_properties(
        "AWS::ECS::TaskDefinition",
        {
            "ContainerDefinitions": [
                Match.object_like(
                    {
                        "Environment": Match.array_with(
                            [{"Name": "FEATURE_TABLE_URI", "Value": Match.any_value()}]
                        )
                    }
                )
            ]
        },
    )
    # the workflow is traced, logged and bounded in time
    training.has_resource_properties(
        "AWS::StepFunctions::StateMachine",
        {
            "TracingConfiguration": {"Enabled": True},
            "LoggingConfiguration": Match.object_like({"Level": "ALL"}),
        },
    )
    assert definition["TimeoutSeconds"] == 12 * 3600


def test_the_workflow_may_start_only_this_application_and_pass_only_its_role(msk: Synthesized) -> None:
    training = msk.template("training")
    statements = statements_of(training, "TrainingWorkflowRole")
    start = [s for s in statements if "emr-serverless:StartJobRun" in _list(s["Action"])]
    assert len(start) == 1
    assert render(start[0]["Resource"]).endswith(
        "/applications/<TrainingFeaturesApplication1A5A512A.ApplicationId>"
    )
    passed = [
        render(r) for s in statements if "iam:PassRole" in _list(s["Action"]) for r in _list(s["Resource"])
    ]
    assert "<TrainingFeaturesExecutionRole3ADB0E78.Arn>" in passed
    assert all(p.startswith("<Training") for p in passed)


def test_the_code_asset_holds_the_packages_the_job_imports(tmp_path: Path) -> None:
    # given the asset's folder as CDK bundles it, zipped as --py-files ships it
    CodeBundling().try_bundle(str(tmp_path / "asset"))
    archive = tmp_path / "code.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted((tmp_path / "asset").rglob("*.py")):
            zipped.write(path, path.relative_to(tmp_path / "asset"))

    # when a fresh interpreter imports the job's feature code from the zip alone (plus the
    # libraries), outside the repository
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(archive)}
    probe = (
        "import training.dataset, fraud_core.spec, sys; "
        "print(training.dataset.__file__); print(fraud_core.spec.__file__)"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(archive)!r}); {probe}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )

    # then both packages come from the zip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{archive}/training/dataset.py",
        f"{archive}/fraud_core/spec.py",
    ]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
