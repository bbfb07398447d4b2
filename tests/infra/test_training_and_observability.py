"""Training stack (Fargate task, schedule, on-demand rule, MLflow) and observability (alarms, dashboard)."""

from __future__ import annotations

import json
from typing import Any

from aws_cdk.assertions import Match

from cdk_app.constructs.mlflow import TRACKING_ACTIONS
from cdk_app.constructs.training_job import ON_DEMAND_DETAIL_TYPE, ON_DEMAND_SOURCE

from .conftest import Synthesized


def test_training_task_runs_the_training_image_on_fargate(msk: Synthesized, kinesis: Synthesized) -> None:
    for synthesized, arch in ((msk, "X86_64"), (kinesis, "ARM64")):
        training = synthesized.template("training")
        training.has_resource_properties(
            "AWS::ECS::TaskDefinition",
            {
                "RequiresCompatibilities": ["FARGATE"],
                "NetworkMode": "awsvpc",
                "Cpu": "2048",
                "Memory": "8192",
                "RuntimePlatform": {"CpuArchitecture": arch, "OperatingSystemFamily": "LINUX"},
                "ContainerDefinitions": [
                    Match.object_like(
                        {
                            "Name": "training",
                            "Command": ["pipeline"],
                            "Image": Match.any_value(),
                            "LogConfiguration": Match.object_like({"LogDriver": "awslogs"}),
                            "Environment": Match.array_with(
                                [
                                    {"Name": "MODEL_NAME", "Value": "fraudsys"},
                                    {"Name": "MLFLOW_TRACKING_URI", "Value": Match.any_value()},
                                ]
                            ),
                        }
                    )
                ],
            },
        )
        training.has_resource_properties(
            "AWS::ECS::Cluster",
            {"ClusterSettings": [{"Name": "containerInsights", "Value": "enhanced"}]},
        )


def test_training_image_asset_is_built_from_the_repo_root_dockerfile(msk: Synthesized) -> None:
    stage = msk.stage
    assert stage.training is not None  # an AWS stage
    image = stage.training.training.image
    assets = json.loads(_assets_manifest(stage.outdir, stage.training.artifact_id))
    docker = assets["dockerImages"]
    assert len(docker) == 1
    source = next(iter(docker.values()))["source"]
    assert source["dockerFile"] == "training/Dockerfile"
    assert image.asset_hash in docker


def _assets_manifest(outdir: str, artifact_id: str) -> str:
    with open(f"{outdir}/{artifact_id}.assets.json", encoding="utf-8") as handle:
        return handle.read()


def test_training_runs_on_a_schedule_and_on_demand(msk: Synthesized) -> None:
    training = msk.template("training")

    # the schedule starts the retraining workflow (the Spark step, then the task: test_spark_job.py)
    training.has_resource_properties(
        "AWS::Events::Rule",
        {
            "ScheduleExpression": "cron(0 3 ? * MON *)",
            "State": "ENABLED",
            "Targets": [Match.object_like({"Arn": {"Ref": Match.string_like_regexp("TrainingWorkflow")}})],
        },
    )
    # on demand, the task alone trains on the raw data set (the first model, before the lake)
    training.has_resource_properties(
        "AWS::Events::Rule",
        {
            "EventPattern": {"source": [ON_DEMAND_SOURCE], "detail-type": [ON_DEMAND_DETAIL_TYPE]},
            "Targets": [
                Match.object_like(
                    {
                        "EcsParameters": Match.object_like(
                            {
                                "LaunchType": "FARGATE",
                                "NetworkConfiguration": {
                                    "AwsVpcConfiguration": Match.object_like({"AssignPublicIp": "DISABLED"})
                                },
                            }
                        )
                    }
                )
            ],
        },
    )
    rules = training.find_resources("AWS::Events::Rule", {"Properties": {"EventPattern": Match.any_value()}})
    (rule,) = rules.values()
    environment = json.loads(rule["Properties"]["Targets"][0]["Input"])["containerOverrides"][0][
        "environment"
    ]
    assert environment == [{"name": "TRAINING_SOURCE", "value": "raw"}]


def test_mlflow_tracking_server_with_s3_artifacts_and_scoped_access(msk: Synthesized) -> None:
    training = msk.template("training")

    training.has_resource_properties(
        "AWS::SageMaker::MlflowTrackingServer",
        {
            "TrackingServerName": "fraudsys-tmsk",
            "TrackingServerSize": "Small",
            "ArtifactStoreUri": Match.object_like({"Fn::Join": Match.any_value()}),
            "RoleArn": Match.any_value(),
            "AutomaticModelRegistration": False,
        },
    )
    statements: list[dict[str, Any]] = []
    for policy in training.find_resources("AWS::IAM::Policy").values():
        statements += policy["Properties"]["PolicyDocument"]["Statement"]
    mlflow = [
        s for s in statements if s["Action"] == TRACKING_ACTIONS or set(TRACKING_ACTIONS) == set(s["Action"])
    ]
    assert len(mlflow) == 1
    assert "Fn::GetAtt" in json.dumps(mlflow[0]["Resource"])  # the server's ARN, not "*"
    actions = [
        a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    ]
    assert [a for a in actions if a.startswith(("s3:", "kms:", "sagemaker")) and "*" in a] == []


def test_alarms_cover_latency_errors_throttles_lag_dead_letters_fraud_rate(msk: Synthesized) -> None:
    observability = msk.template("observability")

    expected = {
        "scorer-p99-latency",
        "api-5xx",
        "lambda-throttles",
        "updater-errors",
        "updater-lag",
        "archiver-errors",
        "archiver-lag",
        "dead-letters",
        "late-or-refused-events",
        "fraud-rate-spike",
        "publish-failures",
        "outbox-write-failures",
        "outbox-dead-letters",
        "outbox-oldest-message",
    }
    alarms = observability.find_resources("AWS::CloudWatch::Alarm")
    names = {str(a["Properties"]["AlarmName"]).removeprefix("fraudsys-tmsk-") for a in alarms.values()}
    assert names == expected
    for alarm in alarms.values():
        assert alarm["Properties"]["AlarmActions"], alarm
    observability.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "MetricName": "Latency",
            "Namespace": "AWS/ApiGateway",
            "ExtendedStatistic": "p99",
            "Threshold": 150,
        },
    )
    observability.has_resource_properties(
        "AWS::CloudWatch::Alarm", {"MetricName": "5XXError", "Namespace": "AWS/ApiGateway"}
    )
    observability.has_resource_properties(
        "AWS::CloudWatch::Alarm", {"MetricName": "OffsetLag", "Namespace": "AWS/Lambda", "Threshold": 10000}
    )
    fraud = next(a for a in alarms.values() if str(a["Properties"]["AlarmName"]).endswith("fraud-rate-spike"))
    rendered = json.dumps(fraud["Properties"]["Metrics"])
    assert '"Namespace": "FraudSys"' in rendered
    assert "FraudDecisions" in rendered
    assert "Predictions" in rendered
    dead = next(a for a in alarms.values() if str(a["Properties"]["AlarmName"]).endswith("dead-letters"))
    rendered = json.dumps(dead["Properties"]["Metrics"])
    assert rendered.count("ApproximateNumberOfMessagesVisible") == 2  # the updater's and the archiver's
    assert "UpdaterFailedBatches" in rendered
    assert "ArchiverFailedBatches" in rendered
    assert "DeadLetters" in rendered
    lags = [a for a in alarms.values() if str(a["Properties"]["AlarmName"]).endswith("-lag")]
    assert sorted(json.dumps(a["Properties"]["Dimensions"]).count("Archiver") for a in lags) == [0, 1]
    late = next(
        a for a in alarms.values() if str(a["Properties"]["AlarmName"]).endswith("late-or-refused-events")
    )
    rendered = json.dumps(late["Properties"]["Metrics"])
    assert "LateEvents" in rendered
    assert "RefusedEvents" in rendered
    observability.resource_count_is("AWS::CloudWatch::Dashboard", 1)
    [dashboard] = observability.find_resources("AWS::CloudWatch::Dashboard").values()
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    assert "LabelsAccepted" in body
    assert "LabelsUnknown" in body
    assert "ArchivedEvents" in body


def test_kinesis_stage_alarms_on_iterator_age(kinesis: Synthesized) -> None:
    kinesis.template("observability").has_resource_properties(
        "AWS::CloudWatch::Alarm", {"MetricName": "IteratorAge", "Namespace": "AWS/Lambda", "Threshold": 60000}
    )


def test_alarm_topic_is_encrypted_tls_only_and_subscribed(msk: Synthesized) -> None:
    observability = msk.template("observability")

    observability.has_resource_properties("AWS::SNS::Topic", {"KmsMasterKeyId": Match.any_value()})
    observability.has_resource_properties(
        "AWS::SNS::TopicPolicy",
        {
            "PolicyDocument": Match.object_like(
                {
                    "Statement": Match.array_with(
                        [
                            Match.object_like(
                                {"Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}}
                            )
                        ]
                    )
                }
            )
        },
    )
    observability.has_resource_properties(
        "AWS::SNS::Subscription", {"Protocol": "email", "Endpoint": "oncall@example.com"}
    )
    observability.has_resource_properties(
        "AWS::KMS::Key",
        {
            "KeyPolicy": Match.object_like(
                {
                    "Statement": Match.array_with(
                        [Match.object_like({"Principal": {"Service": "cloudwatch.amazonaws.com"}})]
                    )
                }
            )
        },
    )


def test_the_mlflow_server_runs_the_clients_version(msk: Synthesized) -> None:
    # the training image's client (uv.lock) and the tracking server agree on major.minor: an older
    # server lacks REST calls the client makes (MLflow 3's logged models)
    from importlib import metadata

    major, minor, *_ = metadata.version("mlflow").split(".")
    msk.template("training").has_resource_properties(
        "AWS::SageMaker::MlflowTrackingServer", {"MlflowVersion": f"{major}.{minor}"}
    )
