"""The publish outbox (cdk_app.constructs.outbox): the KMS-encrypted queue and its DLQ, the relay
function fed by it with partial batch responses, least-privilege IAM for the scorer (send) and the
relay (consume, publish), and the alarms."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template

from .conftest import MSK_CONFIG, Synthesized

RELAY = "handlers.relay_outbox.handler"
SCORER = "handlers.predict.handler"


def _function(template: Template, handler: str) -> tuple[str, dict[str, Any]]:
    found = template.find_resources("AWS::Lambda::Function", {"Properties": {"Handler": handler}})
    assert len(found) == 1, found.keys()
    [(logical_id, resource)] = found.items()
    return logical_id, dict(resource["Properties"])


def _role_statements(template: Template, handler: str) -> list[dict[str, Any]]:
    role = _function(template, handler)[1]["Role"]["Fn::GetAtt"][0]
    return [
        statement
        for policy in template.find_resources("AWS::IAM::Policy").values()
        if {"Ref": role} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]


def _actions(statement: dict[str, Any]) -> set[str]:
    actions = statement["Action"]
    return {actions} if isinstance(actions, str) else set(actions)


def _queues(template: Template) -> tuple[str, dict[str, Any], str, dict[str, Any]]:
    """(outbox id, outbox, DLQ id, DLQ): the outbox is the queue with a redrive policy."""
    queues = template.find_resources("AWS::SQS::Queue")
    [(outbox_id, outbox)] = [(k, q) for k, q in queues.items() if "RedrivePolicy" in q["Properties"]]
    dlq_id = outbox["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
    return outbox_id, outbox["Properties"], dlq_id, queues[dlq_id]["Properties"]


@pytest.mark.parametrize("kind", ["msk", "kinesis"])
def test_the_outbox_and_its_dlq_are_encrypted_with_the_data_key_and_refuse_plain_http(
    stages: dict[str, Synthesized], kind: str
) -> None:
    serving = stages[kind].template("serving")
    outbox_id, outbox, dlq_id, dlq = _queues(serving)

    for props in (outbox, dlq):
        # the stage's data key (an import from the data stack), as the stream's: never SQS-managed
        rendered = json.dumps(props["KmsMasterKeyId"])
        assert "Fn::ImportValue" in rendered or "Fn::GetStackOutput" in rendered, rendered
        assert "Key" in rendered
        assert "SqsManagedSseEnabled" not in props
        assert props["MessageRetentionPeriod"] == 14 * 86400
    assert outbox["RedrivePolicy"]["maxReceiveCount"] == 10
    assert outbox["VisibilityTimeout"] == 6 * 30  # 6 x the relay's timeout, as AWS advises
    for queue_id in (outbox_id, dlq_id):
        serving.has_resource_properties(
            "AWS::SQS::QueuePolicy",
            {
                "Queues": [{"Ref": queue_id}],
                "PolicyDocument": {
                    "Statement": Match.array_with(
                        [
                            Match.object_like(
                                {
                                    "Effect": "Deny",
                                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                                }
                            )
                        ]
                    )
                },
            },
        )


@pytest.mark.parametrize("kind", ["msk", "kinesis"])
def test_the_relay_is_fed_by_the_outbox_with_partial_batch_responses(
    stages: dict[str, Synthesized], kind: str
) -> None:
    serving = stages[kind].template("serving")
    outbox_id, _, _, _ = _queues(serving)
    relay_id, relay = _function(serving, RELAY)

    serving.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {
            "EventSourceArn": {"Fn::GetAtt": [outbox_id, "Arn"]},
            "FunctionName": {"Ref": relay_id},
            "BatchSize": 10,
            "MaximumBatchingWindowInSeconds": 1,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "ScalingConfig": {"MaximumConcurrency": 2},
        },
    )
    assert relay["Runtime"] == "python3.13"
    assert relay["Timeout"] == 30
    assert relay["TracingConfig"] == {"Mode": "Active"}
    assert len(relay["Layers"]) == 1  # the scorer's layer (confluent-kafka, the MSK IAM signer)
    env = relay["Environment"]["Variables"]
    assert env["STREAM_KIND"] == ("kafka" if kind == "msk" else "kinesis")
    # it sends records keyed by the scorer: no card hash key, no Redis
    assert not {"CARD_HASH_KEY_SECRET_ARN", "REDIS_URL", "PUBLISH_OUTBOX_QUEUE_URL"} & set(env)
    # the scorer writes to this queue, and only on a failed publish (handlers.predict)
    _, scorer = _function(serving, SCORER)
    assert scorer["Environment"]["Variables"]["PUBLISH_OUTBOX_QUEUE_URL"] == {"Ref": outbox_id}


def _group_id(synthesized: Synthesized, function: dict[str, Any]) -> str:
    """The network stack's logical id of ``function``'s one security group (the serving stack
    reads it through the network stack's output)."""
    [group] = function["VpcConfig"]["SecurityGroupIds"]
    output = group["Fn::GetStackOutput"]["OutputName"]
    value = synthesized.template("network").to_json()["Outputs"][output]["Value"]
    assert value["Fn::GetAtt"][1] == "GroupId", value
    return str(value["Fn::GetAtt"][0])


def _group_by_description(network: Template, description: str) -> str:
    [logical_id] = network.find_resources(
        "AWS::EC2::SecurityGroup", {"Properties": {"GroupDescription": description}}
    )
    return logical_id


def _rules(network: Template, kind: str, group: str) -> list[dict[str, Any]]:
    """The ``AWS::EC2::SecurityGroup{Ingress,Egress}`` rules of ``group``."""
    return [
        dict(rule["Properties"])
        for rule in network.find_resources(f"AWS::EC2::SecurityGroup{kind}").values()
        if rule["Properties"]["GroupId"] == {"Fn::GetAtt": [group, "GroupId"]}
    ]


def _source(rule: dict[str, Any]) -> Any:
    return rule.get("SourceSecurityGroupId", {}).get("Fn::GetAtt", [None])[0]


@pytest.mark.parametrize("kind", ["msk", "kinesis"])
def test_the_relay_runs_in_the_scorers_subnets_with_a_group_of_its_own_kept_out_of_redis(
    stages: dict[str, Synthesized], kind: str
) -> None:
    synthesized = stages[kind]
    serving, network = synthesized.template("serving"), synthesized.template("network")
    _, relay = _function(serving, RELAY)
    _, scorer = _function(serving, SCORER)

    # the scorer's subnets, not its group (the scorer's reaches Redis)
    assert relay["VpcConfig"]["SubnetIds"] == scorer["VpcConfig"]["SubnetIds"]
    relay_sg, scorer_sg = _group_id(synthesized, relay), _group_id(synthesized, scorer)
    assert relay_sg != scorer_sg
    assert relay_sg == _group_by_description(network, "FraudSys publish outbox relay Lambda")

    # Redis admits the scorer (and the updater), never the relay; the relay has no rule towards it
    redis_sg = _group_by_description(network, "FraudSys Redis feature store")
    redis_sources = {_source(rule) for rule in _rules(network, "Ingress", redis_sg)}
    assert scorer_sg in redis_sources
    assert relay_sg not in redis_sources
    relay_egress = _rules(network, "Egress", relay_sg)
    assert not any(redis_sg in json.dumps(rule) for rule in relay_egress), relay_egress
    assert not any(rule.get("FromPort") == synthesized.stage.config.redis.port for rule in relay_egress)
    # nothing may connect to the relay
    assert _rules(network, "Ingress", relay_sg) == []
    assert "SecurityGroupIngress" not in network.to_json()["Resources"][relay_sg]["Properties"]

    # the interface endpoints (the Kinesis one on a Kinesis stage) admit it on 443
    endpoint_sg = _group_by_description(network, "FraudSys interface VPC endpoints")
    assert {"FromPort": 443, "ToPort": 443, "IpProtocol": "tcp"}.items() <= next(
        rule for rule in _rules(network, "Ingress", endpoint_sg) if _source(rule) == relay_sg
    ).items()


def test_the_relay_reaches_the_msk_brokers_with_its_own_group(msk: Synthesized) -> None:
    serving, network = msk.template("serving"), msk.template("network")
    _, relay = _function(serving, RELAY)
    relay_sg = _group_id(msk, relay)
    msk_sg = _group_by_description(network, "FraudSys MSK brokers and event pollers")

    kafka = {"FromPort": 9098, "ToPort": 9098, "IpProtocol": "tcp"}
    [ingress] = [r for r in _rules(network, "Ingress", msk_sg) if _source(r) == relay_sg]
    assert kafka.items() <= ingress.items()
    [egress] = [
        r
        for r in _rules(network, "Egress", relay_sg)
        if r.get("DestinationSecurityGroupId") == {"Fn::GetAtt": [msk_sg, "GroupId"]}
    ]
    assert kafka.items() <= egress.items()
    assert relay["Environment"]["Variables"]["KAFKA_SASL_MECHANISM"] == "AWS_MSK_IAM"
    assert relay["Environment"]["Variables"]["TRANSACTIONS_TOPIC"] == MSK_CONFIG.transactions_topic


@pytest.mark.parametrize("kind", ["msk", "kinesis"])
def test_iam_the_scorer_sends_the_relay_consumes_and_publishes(
    stages: dict[str, Synthesized], kind: str
) -> None:
    serving = stages[kind].template("serving")
    outbox_id, _, dlq_id, _ = _queues(serving)
    outbox_arn = {"Fn::GetAtt": [outbox_id, "Arn"]}

    scorer = _role_statements(serving, SCORER)
    sqs = [s for s in scorer if any(a.startswith("sqs:") for a in _actions(s))]
    assert sqs == [{"Action": "sqs:SendMessage", "Effect": "Allow", "Resource": outbox_arn}]

    relay = _role_statements(serving, RELAY)
    [consume] = [s for s in relay if "sqs:ReceiveMessage" in _actions(s)]
    assert consume["Resource"] == outbox_arn
    assert _actions(consume) <= {
        "sqs:ReceiveMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueUrl",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
    }
    assert not any("sqs:SendMessage" in _actions(s) for s in relay)
    assert dlq_id not in json.dumps(relay)  # the DLQ is SQS's to fill, not the relay's
    # the data key: the scorer encrypts, the relay decrypts
    assert any("kms:GenerateDataKey" in _actions(s) for s in scorer)
    assert any("kms:Decrypt" in _actions(s) for s in relay)
    # the stream: the scorer's publish permissions, nothing to read, no secret, no bucket
    publish = {"kafka-cluster:WriteData"} if kind == "msk" else {"kinesis:PutRecords"}
    assert any(publish <= _actions(s) for s in relay)
    for forbidden in ("kafka-cluster:ReadData", "kinesis:GetRecords", "secretsmanager:", "s3:"):
        assert not any(a.startswith(forbidden) for s in relay for a in _actions(s)), forbidden


def test_alarms_on_failed_publishes_the_outbox_dlq_and_its_oldest_message(msk: Synthesized) -> None:
    observability = msk.template("observability")
    alarms = {
        str(a["Properties"]["AlarmName"]).removeprefix("fraudsys-tmsk-"): a["Properties"]
        for a in observability.find_resources("AWS::CloudWatch::Alarm").values()
    }

    publish = alarms["publish-failures"]
    assert (publish["Namespace"], publish["MetricName"], publish["Threshold"]) == (
        "FraudSys",
        "PublishFailures",
        1,
    )
    lost = alarms["outbox-write-failures"]
    assert (lost["MetricName"], lost["Threshold"]) == ("OutboxFailures", 1)
    dlq = alarms["outbox-dead-letters"]
    assert (dlq["Namespace"], dlq["MetricName"], dlq["Threshold"]) == (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        1,
    )
    age = alarms["outbox-oldest-message"]
    assert (age["MetricName"], age["Threshold"]) == (
        "ApproximateAgeOfOldestMessage",
        MSK_CONFIG.alarms.outbox_oldest_message_seconds,
    )
    for name in ("publish-failures", "outbox-write-failures", "outbox-dead-letters", "outbox-oldest-message"):
        assert alarms[name]["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        assert alarms[name]["AlarmActions"], name
        assert alarms[name]["TreatMissingData"] == "notBreaching"
    # the two queue alarms watch the outbox's two queues (by name, from the serving stack)
    assert "Outbox" in json.dumps(dlq["Dimensions"])
    assert "DeadLetters" in json.dumps(dlq["Dimensions"])
    assert "OutboxQueue" in json.dumps(age["Dimensions"])
