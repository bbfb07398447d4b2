"""The platform: localstack stage: the same constructs as an AWS stage, without what LocalStack's
community edition lacks, and nothing its CloudFormation or its executor cannot run."""

from __future__ import annotations

import json

from aws_cdk.assertions import Match

from .conftest import LOCALSTACK_CONFIG, Synthesized


def test_it_has_no_network_and_no_training_stack(stages: dict[str, Synthesized]) -> None:
    stage = stages["localstack"].stage

    assert stage.network is None
    assert stage.training is None
    assert stages["kinesis"].stage.network is not None  # an AWS stage keeps both


def test_its_functions_run_outside_a_vpc_and_reach_the_configured_redis(
    stages: dict[str, Synthesized],
) -> None:
    serving = stages["localstack"].template("serving")

    functions = serving.find_resources("AWS::Lambda::Function")
    handlers = {f["Properties"]["Handler"]: f["Properties"] for f in functions.values()}
    assert set(handlers) == {
        "handlers.predict.handler",
        "handlers.update_features.handler",
        "handlers.archive_events.handler",
    }
    for handler, props in handlers.items():
        assert "VpcConfig" not in props, handler
        assert len(props["Layers"]) == (2 if handler == "handlers.archive_events.handler" else 1)
    for handler in ("handlers.predict.handler", "handlers.update_features.handler"):
        env = handlers[handler]["Environment"]["Variables"]
        assert env["REDIS_URL"] == LOCALSTACK_CONFIG.localstack.redis_url
        assert env["REDIS_CLUSTER"] == "false"
        assert "REDIS_AUTH_SECRET_ARN" not in env
        assert "CARD_HASH_KEY_SECRET_ARN" in env  # a generated secret, as on AWS
    serving.resource_count_is("AWS::Lambda::EventSourceMapping", 2)  # updater and archiver


def test_it_keeps_the_apis_key_and_request_model_but_has_no_waf(stages: dict[str, Synthesized]) -> None:
    serving = stages["localstack"].template("serving")

    serving.resource_count_is("AWS::WAFv2::WebACL", 0)
    serving.resource_count_is("AWS::ApiGateway::ApiKey", 1)
    serving.has_resource_properties("AWS::ApiGateway::Method", {"ApiKeyRequired": True, "HttpMethod": "POST"})
    serving.has_resource_properties("AWS::ApiGateway::Model", {"Name": "PredictRequest"})
    stages["kinesis"].template("serving").resource_count_is("AWS::WAFv2::WebACL", 1)


def test_it_needs_nothing_localstack_community_lacks(stages: dict[str, Synthesized]) -> None:
    templates = {part: stages["localstack"].template(part).to_json() for part in ("data", "serving")}
    text = json.dumps(templates)

    for missing in ("AWS::ElastiCache::", "AWS::MSK::", "AWS::EC2::", "AWS::WAFv2::", "AWS::ECS::"):
        assert missing not in text
    # no custom resources (CDK's are Node.js functions, the host executor runs Python only)
    assert "Custom::" not in text
    # LocalStack's CloudFormation resolves exports, not weak references
    assert "Fn::GetStackOutput" not in text
    stages["localstack"].template("serving").has_resource_properties(
        "AWS::IAM::Policy", Match.object_like({"PolicyDocument": Match.any_value()})
    )
