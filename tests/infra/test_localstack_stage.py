"""The platform: localstack stage: the same constructs as an AWS stage, without what LocalStack's
community edition lacks, and nothing its CloudFormation or its executor cannot run."""

from __future__ import annotations

import json
from pathlib import Path

from aws_cdk.assertions import Match

from .conftest import LOCALSTACK_CONFIG, Synthesized, app_context


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
        "handlers.relay_outbox.handler",
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
    serving.resource_count_is("AWS::Lambda::EventSourceMapping", 3)  # updater, archiver, outbox relay


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


def test_bundled_layers_put_the_layers_packages_into_the_code(tmp_path: Path) -> None:
    """For LocalStack's Lambda containers (Docker), which do not apply layers."""
    from cdk_app.constructs.function import CodeWithLayers

    # when the code of the archiver (both layers) is bundled
    CodeWithLayers("x86_64", ("xgboost", "arrow")).try_bundle(str(tmp_path))

    # then the handlers and both layers' packages sit at the code's root, without caches
    assert (tmp_path / "handlers" / "predict.py").is_file()
    assert (tmp_path / "xgboost").is_dir()
    assert (tmp_path / "pyarrow").is_dir()
    assert not list((tmp_path / "handlers").glob("__pycache__"))


def test_bundle_layers_comes_from_the_command_line() -> None:
    import aws_cdk as cdk

    from cdk_app.stage import add_stages

    app = cdk.App(
        context=app_context(
            **{"fraudsys:stages": "localstack", "fraudsys:bundle_layers": "true", "fraudsys:nag": "false"}
        )
    )
    (stage,) = add_stages(app)

    assert stage.config.localstack.bundle_layers
    assert stage.config.localstack.redis_url == "redis://127.0.0.1:6390/0"  # cdk.json's, kept
