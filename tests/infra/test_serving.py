"""Serving stack: the three Lambdas (scorer, updater, archiver), the layers, event source mappings
for both stream kinds, the API."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template

from cdk_app.constructs.scorer_api import LABELS_REQUEST_SCHEMA, PREDICT_REQUEST_SCHEMA
from cdk_app.constructs.scorer_api import MAX_LABELS_PER_REQUEST as EDGE_MAX_LABELS
from fraud_core.schemas import MAX_LABELS_PER_REQUEST, LabelBatchRequest, LabelRequest, PredictRequest

from .conftest import Synthesized

SCORER_ENV = {
    "REDIS_URL",
    "REDIS_CLUSTER",
    "REDIS_AUTH_SECRET_ARN",
    "REDIS_TIMEOUT_MS",
    "CARD_HASH_KEY_SECRET_ARN",
    "MODEL_STORE_URI",
    "MODEL_NAME",
    "MODEL_POINTER_TTL_SECONDS",
    "REASONS_METHOD",
    "STREAM_KIND",
    "TRANSACTIONS_TOPIC",
    "LABELS_TOPIC",
    "LABEL_DELAY_SECONDS",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
}
UPDATER_ENV = {
    "REDIS_URL",
    "REDIS_CLUSTER",
    "REDIS_AUTH_SECRET_ARN",
    "REDIS_TIMEOUT_MS",
    "CARD_HASH_KEY_SECRET_ARN",
    "TRANSACTIONS_TOPIC",
    "LABELS_TOPIC",
    "DEAD_LETTER_URI",
    "LABEL_DELAY_SECONDS",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
}
ARCHIVER_ENV = {
    "CARD_HASH_KEY_SECRET_ARN",
    "TRANSACTIONS_TOPIC",
    "LABELS_TOPIC",
    "MAX_CLOCK_SKEW_SECONDS",
    "LAKE_URI",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
}
HANDLERS = ("handlers.predict.handler", "handlers.update_features.handler", "handlers.archive_events.handler")


def _function(template: Template, handler: str) -> dict[str, Any]:
    found = template.find_resources("AWS::Lambda::Function", {"Properties": {"Handler": handler}})
    assert len(found) == 1, found.keys()
    return dict(next(iter(found.values()))["Properties"])


@pytest.mark.parametrize(("kind", "arch"), [("msk", "x86_64"), ("kinesis", "arm64")])
def test_every_function_python313_in_vpc_traced_with_layer(
    stages: dict[str, Synthesized], kind: str, arch: str
) -> None:
    serving = stages[kind].template("serving")

    serving.has_resource_properties(
        "AWS::Lambda::LayerVersion",
        {"CompatibleRuntimes": ["python3.13"], "CompatibleArchitectures": [arch]},
    )
    for handler in HANDLERS:
        serving.has_resource_properties(
            "AWS::Lambda::Function",
            {
                "Handler": handler,
                "Runtime": "python3.13",
                "Architectures": [arch],
                "TracingConfig": {"Mode": "Active"},
                "Layers": Match.any_value(),
                "VpcConfig": Match.object_like(
                    {"SubnetIds": Match.any_value(), "SecurityGroupIds": [Match.any_value()]}
                ),
                "LoggingConfig": Match.object_like({"LogGroup": Match.any_value()}),
            },
        )
    serving.has_resource_properties("AWS::Logs::LogGroup", {"RetentionInDays": 30})


def test_scorer_environment_and_concurrency(msk: Synthesized) -> None:
    scorer = _function(msk.template("serving"), "handlers.predict.handler")
    env = scorer["Environment"]["Variables"]

    assert set(env) >= SCORER_ENV | {
        "KAFKA_BOOTSTRAP_SERVERS",
        "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_SASL_MECHANISM",
    }
    assert env["STREAM_KIND"] == "kafka"
    assert env["KAFKA_SASL_MECHANISM"] == "AWS_MSK_IAM"
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["REDIS_TIMEOUT_MS"] == "50"
    assert env["MODEL_NAME"] == "fraudsys"
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "FraudSys"
    assert env["TRANSACTIONS_TOPIC"] == "fraudsys.transactions"
    assert "rediss://" in str(env["REDIS_URL"])
    assert "/registry" in str(env["MODEL_STORE_URI"])
    assert scorer["ReservedConcurrentExecutions"] == 50
    msk.template("serving").has_resource_properties(
        "AWS::Lambda::Alias",
        {"Name": "live", "ProvisionedConcurrencyConfig": {"ProvisionedConcurrentExecutions": 5}},
    )


def test_scorer_environment_for_kinesis(kinesis: Synthesized) -> None:
    env = _function(kinesis.template("serving"), "handlers.predict.handler")["Environment"]["Variables"]

    assert set(env) >= SCORER_ENV | {"KINESIS_STREAM_NAME"}
    assert env["STREAM_KIND"] == "kinesis"
    assert "KAFKA_BOOTSTRAP_SERVERS" not in env
    kinesis.template("serving").has_resource_properties(
        "AWS::Lambda::Alias", {"Name": "live", "ProvisionedConcurrencyConfig": Match.absent()}
    )


def test_updater_environment(msk: Synthesized, kinesis: Synthesized) -> None:
    for synthesized in (msk, kinesis):
        env = _function(synthesized.template("serving"), "handlers.update_features.handler")["Environment"][
            "Variables"
        ]
        assert set(env) >= UPDATER_ENV
        assert env["REDIS_TIMEOUT_MS"] == "1000"
        assert "/updater" in str(env["DEAD_LETTER_URI"])
        assert "LAKE_URI" not in env  # the archiver writes the lake


def test_archiver_environment_has_the_lake_and_no_redis(msk: Synthesized, kinesis: Synthesized) -> None:
    for synthesized in (msk, kinesis):
        env = _function(synthesized.template("serving"), "handlers.archive_events.handler")["Environment"][
            "Variables"
        ]
        assert set(env) == ARCHIVER_ENV
        assert "-lake-" in str(env["LAKE_URI"])
        assert "/archive" in str(env["LAKE_URI"])
        assert env["MAX_CLOCK_SKEW_SECONDS"] == "300"  # the updater's time guard
        assert env["LABELS_TOPIC"] == "fraudsys.labels"


def _role_statements(template: Template, handler: str) -> list[dict[str, Any]]:
    """The statements of the policies attached to the role of ``handler``'s function."""
    role = _function(template, handler)["Role"]["Fn::GetAtt"][0]
    return [
        statement
        for policy in template.find_resources("AWS::IAM::Policy").values()
        if {"Ref": role} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]


@pytest.mark.parametrize("kind", ["msk", "kinesis"])
def test_only_the_archiver_may_put_objects_and_only_under_the_lake_prefix(
    stages: dict[str, Synthesized], kind: str
) -> None:
    serving = stages[kind].template("serving")
    archiver = _role_statements(serving, "handlers.archive_events.handler")
    lake = [s for s in archiver if "-lake-" in str(s["Resource"])]
    assert lake
    for statement in lake:
        assert statement["Action"] == "s3:PutObject"
        assert str(statement["Resource"]).count("/archive/*") == 1
    # no other bucket, no Redis AUTH token: the card hash key is its one secret
    assert [s for s in archiver if str(s["Action"]).startswith("s3:") and s not in lake] == []
    [secrets] = [
        s
        for s in archiver
        if s["Action"] == ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"]
    ]
    assert "CardHashKey" in json.dumps(secrets["Resource"])
    assert "AuthToken" not in json.dumps(secrets["Resource"])
    # and the updater lost its lake permission
    for handler in ("handlers.update_features.handler", "handlers.predict.handler"):
        assert [s for s in _role_statements(serving, handler) if "-lake-" in str(s["Resource"])] == []


def _mapped_function(mapping: Mapping[str, Any]) -> str:
    return str(mapping["Properties"]["FunctionName"]["Ref"])


def test_msk_event_source_mappings_one_per_topic_and_consumer_with_error_handling(msk: Synthesized) -> None:
    serving = msk.template("serving")

    serving.resource_count_is("AWS::Lambda::EventSourceMapping", 5)  # 4 on the topics + the outbox's
    for topic in ("fraudsys.transactions", "fraudsys.labels"):
        serving.has_resource_properties(
            "AWS::Lambda::EventSourceMapping",
            {
                "Topics": [topic],
                "BatchSize": 250,
                "MaximumBatchingWindowInSeconds": 2,
                "StartingPosition": "TRIM_HORIZON",
                "BisectBatchOnFunctionError": True,
                "FunctionResponseTypes": ["ReportBatchItemFailures"],
                "MaximumRetryAttempts": 5,
                "ProvisionedPollerConfig": {"MinimumPollers": 2, "MaximumPollers": 4},
                "AmazonManagedKafkaEventSourceConfig": {
                    "ConsumerGroupId": f"fraudsys-tmsk-updater-{topic.replace('.', '-')}"
                },
                "DestinationConfig": {"OnFailure": {"Destination": Match.any_value()}},
            },
        )
        # the archiver: a consumer group of its own on the same topic, its own batching
        serving.has_resource_properties(
            "AWS::Lambda::EventSourceMapping",
            {
                "Topics": [topic],
                "BatchSize": 2000,
                "MaximumBatchingWindowInSeconds": 20,
                "BisectBatchOnFunctionError": True,
                "FunctionResponseTypes": ["ReportBatchItemFailures"],
                "ProvisionedPollerConfig": {"MinimumPollers": 1, "MaximumPollers": 3},
                "AmazonManagedKafkaEventSourceConfig": {
                    "ConsumerGroupId": f"fraudsys-tmsk-archiver-{topic.replace('.', '-')}"
                },
                "DestinationConfig": {"OnFailure": {"Destination": Match.any_value()}},
            },
        )
    serving.resource_count_is("AWS::SQS::Queue", 4)  # each consumer's failed batches, the outbox + its DLQ
    serving.has_resource_properties("AWS::SQS::Queue", {"SqsManagedSseEnabled": True})
    mappings = [
        m
        for m in serving.find_resources("AWS::Lambda::EventSourceMapping").values()
        if "Topics" in m["Properties"]
    ]
    assert len(mappings) == 4
    destinations = {_mapped_function(m): json.dumps(m["Properties"]["DestinationConfig"]) for m in mappings}
    assert len(destinations) == 2  # two functions, each with its own queue
    assert len(set(destinations.values())) == 2
    # each role may join only its own consumer groups
    for handler, consumer in (
        ("handlers.update_features.handler", "updater"),
        ("handlers.archive_events.handler", "archiver"),
    ):
        [groups] = [
            s
            for s in _role_statements(serving, handler)
            if s["Action"] == ["kafka-cluster:AlterGroup", "kafka-cluster:DescribeGroup"]
        ]
        rendered = json.dumps(groups["Resource"])
        assert rendered.count(f"/fraudsys-tmsk-{consumer}-") == 2, rendered
        assert rendered.count("/fraudsys-tmsk-") == 2, rendered


def test_kinesis_event_source_mappings_one_per_consumer_with_error_handling(kinesis: Synthesized) -> None:
    serving = kinesis.template("serving")

    serving.resource_count_is("AWS::Lambda::EventSourceMapping", 3)  # 2 on the stream + the outbox's
    mappings = [
        m
        for m in serving.find_resources("AWS::Lambda::EventSourceMapping").values()
        if "StartingPosition" in m["Properties"]
    ]
    assert len({_mapped_function(m) for m in mappings}) == 2
    assert len({json.dumps(m["Properties"]["EventSourceArn"]) for m in mappings}) == 1  # the same stream
    serving.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {
            "BatchSize": 1000,  # the archiver's defaults
            "MaximumBatchingWindowInSeconds": 10,
            "BisectBatchOnFunctionError": True,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "DestinationConfig": {"OnFailure": {"Destination": Match.any_value()}},
        },
    )
    serving.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {
            "BatchSize": 50,
            "MaximumBatchingWindowInSeconds": 0,
            "ParallelizationFactor": 2,
            "BisectBatchOnFunctionError": True,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "MaximumRecordAgeInSeconds": 86400,
            "StartingPosition": "TRIM_HORIZON",
            "DestinationConfig": {"OnFailure": {"Destination": Match.any_value()}},
        },
    )


def _policy_statements(template: Template) -> list[dict[str, Any]]:
    statements: list[dict[str, Any]] = []
    for policy in template.find_resources("AWS::IAM::Policy").values():
        statements += policy["Properties"]["PolicyDocument"]["Statement"]
    return statements


def _actions(statement: dict[str, Any]) -> list[str]:
    actions = statement["Action"]
    return [actions] if isinstance(actions, str) else list(actions)


@pytest.mark.parametrize("kind", ["msk", "kinesis"])
def test_serving_grants_have_no_wildcard_actions(stages: dict[str, Synthesized], kind: str) -> None:
    statements = _policy_statements(stages[kind].template("serving"))

    wildcard = sorted({a for s in statements for a in _actions(s) if "*" in a})
    assert wildcard == []
    assert any(a == "kafka-cluster:WriteData" for s in statements for a in _actions(s)) is (kind == "msk")
    assert any(a == "kinesis:PutRecords" for s in statements for a in _actions(s)) is (kind == "kinesis")


def test_rest_api_methods_auth_validation_key_plan_logs_tracing(msk: Synthesized) -> None:
    serving = msk.template("serving")

    serving.has_resource_properties(
        "AWS::ApiGateway::Method",
        {
            "HttpMethod": "POST",
            "AuthorizationType": "AWS_IAM",
            "ApiKeyRequired": True,
            "RequestValidatorId": Match.any_value(),
            "RequestModels": {"application/json": Match.any_value()},
            "Integration": Match.object_like({"Type": "AWS_PROXY"}),
        },
    )
    serving.has_resource_properties(
        "AWS::ApiGateway::Method",
        {"HttpMethod": "GET", "AuthorizationType": "AWS_IAM", "ApiKeyRequired": True},
    )
    serving.has_resource_properties("AWS::ApiGateway::Resource", {"PathPart": "predict"})
    serving.has_resource_properties("AWS::ApiGateway::Resource", {"PathPart": "health"})
    serving.has_resource_properties(
        "AWS::ApiGateway::RequestValidator", {"ValidateRequestBody": True, "ValidateRequestParameters": True}
    )
    serving.has_resource_properties(
        "AWS::ApiGateway::Model", {"ContentType": "application/json", "Name": "PredictRequest"}
    )
    serving.has_resource_properties(
        "AWS::ApiGateway::Stage",
        {
            "StageName": "v1",
            "TracingEnabled": True,
            "AccessLogSetting": Match.object_like({"DestinationArn": Match.any_value()}),
            "MethodSettings": [
                Match.object_like(
                    {
                        "DataTraceEnabled": False,
                        "LoggingLevel": "INFO",
                        # derived: reserved concurrency 50, 50 requests/s per instance
                        "ThrottlingRateLimit": 1250,
                        "ThrottlingBurstLimit": 50,
                    }
                )
            ],
        },
    )
    serving.resource_count_is("AWS::ApiGateway::ApiKey", 1)
    serving.has_resource_properties(
        "AWS::ApiGateway::UsagePlan",
        {"Throttle": {"RateLimit": 1250, "BurstLimit": 50}, "Quota": {"Limit": 1000, "Period": "DAY"}},
    )
    serving.resource_count_is("AWS::ApiGateway::UsagePlanKey", 1)
    serving.has_resource_properties("AWS::WAFv2::WebACL", {"Scope": "REGIONAL"})
    serving.resource_count_is("AWS::WAFv2::WebACLAssociation", 1)
    serving.has_resource_properties(
        "AWS::IAM::ManagedPolicy",
        {
            "PolicyDocument": {
                "Statement": [Match.object_like({"Action": "execute-api:Invoke"})],
                "Version": Match.any_value(),
            }
        },
    )


def test_api_model_agrees_with_the_pydantic_request() -> None:
    # given the edge schema and the handler's model
    pydantic_schema = PredictRequest.model_json_schema()
    edge = PREDICT_REQUEST_SCHEMA

    # then they accept the same fields and require the same ones
    assert set(edge.properties or {}) == set(pydantic_schema["properties"])
    assert set(edge.required or []) == set(pydantic_schema.get("required", []))


def test_both_functions_reach_redis_through_the_cluster_configuration_endpoint(
    msk: Synthesized, kinesis: Synthesized
) -> None:
    for synthesized in (msk, kinesis):
        serving = synthesized.template("serving")
        for handler in ("handlers.predict.handler", "handlers.update_features.handler"):
            env = _function(serving, handler)["Environment"]["Variables"]
            # a cluster client on the configuration endpoint (shards found with CLUSTER SLOTS)
            assert env["REDIS_CLUSTER"] == "true", handler
            # the time guard: events at most 5 minutes ahead of their receipt, requests a day old
            assert env["MAX_CLOCK_SKEW_SECONDS"] == "300", handler
            assert env["MAX_REQUEST_AGE_SECONDS"] == "86400", handler
            url = str(env["REDIS_URL"])
            assert "rediss://" in url, url
            assert "ConfigurationEndPoint" in url, url
            assert "PrimaryEndPoint" not in url, url


def _resources_of(template: Template, kind: str) -> list[dict[str, Any]]:
    return [dict(r["Properties"]) for r in template.find_resources(kind).values()]


def test_labels_route_has_the_auth_validation_and_plan_of_predict(msk: Synthesized) -> None:
    serving = msk.template("serving")

    # POST /labels: IAM + API key, body validated against its own model, same proxy integration
    serving.has_resource_properties("AWS::ApiGateway::Resource", {"PathPart": "labels"})
    posts = [
        m
        for m in _resources_of(serving, "AWS::ApiGateway::Method")
        if m["HttpMethod"] == "POST" and "LabelsRequest" in json.dumps(m.get("RequestModels", {}))
    ]
    assert len(posts) == 1
    method = posts[0]
    assert method["AuthorizationType"] == "AWS_IAM"
    assert method["ApiKeyRequired"] is True
    assert "RequestValidatorId" in method
    assert method["Integration"]["Type"] == "AWS_PROXY"
    assert all(m["AuthorizationType"] == "AWS_IAM" for m in _resources_of(serving, "AWS::ApiGateway::Method"))
    serving.has_resource_properties(
        "AWS::ApiGateway::Model", {"ContentType": "application/json", "Name": "LabelsRequest"}
    )
    # one API key, one usage plan and one WAF on the stage cover every route
    serving.resource_count_is("AWS::ApiGateway::UsagePlan", 1)
    serving.resource_count_is("AWS::WAFv2::WebACLAssociation", 1)
    # a label sender's policy allows POST /labels only
    policies = [json.dumps(p["PolicyDocument"]) for p in _resources_of(serving, "AWS::IAM::ManagedPolicy")]
    labels_only = [p for p in policies if "/POST/labels" in p]
    assert len(labels_only) == 1
    assert "/POST/predict" not in labels_only[0]
    assert "LabelsInvokePolicyArn" in serving.find_outputs("*")


def test_waf_lets_label_batches_past_the_body_size_rule_only_on_labels(msk: Synthesized) -> None:
    [acl] = _resources_of(msk.template("serving"), "AWS::WAFv2::WebACL")
    rules = {rule["Name"]: rule for rule in acl["Rules"]}

    # the managed common rule set only counts its 8 KB body rule ...
    common = rules["AWSManagedRulesCommonRuleSet"]["Statement"]["ManagedRuleGroupStatement"]
    # (and its missing User-Agent rule: service callers need not send one)
    assert common["RuleActionOverrides"] == [
        {"Name": "SizeRestrictions_BODY", "ActionToUse": {"Count": {}}},
        {"Name": "NoUserAgent_HEADER", "ActionToUse": {"Count": {}}},
    ]
    # ... and a rule of ours blocks bodies over 8 KB (or beyond inspection) on every other path
    large = rules["LargeBodyOutsideLabels"]
    assert large["Action"] == {"Block": {}}
    size, exempt = large["Statement"]["AndStatement"]["Statements"]
    assert size["SizeConstraintStatement"]["Size"] == 8192
    assert size["SizeConstraintStatement"]["FieldToMatch"]["Body"]["OversizeHandling"] == "MATCH"
    match = exempt["NotStatement"]["Statement"]["ByteMatchStatement"]
    assert (match["SearchString"], match["PositionalConstraint"]) == ("/v1/labels", "EXACTLY")
    assert len({rule["Priority"] for rule in acl["Rules"]}) == len(acl["Rules"])


def test_the_msk_scorer_may_write_the_labels_topic(msk: Synthesized) -> None:
    statements = _policy_statements(msk.template("serving"))
    writes = [s for s in statements if "kafka-cluster:WriteData" in _actions(s)]
    text = json.dumps(writes)
    assert "fraudsys.transactions" in text
    assert "fraudsys.labels" in text


def test_labels_api_model_agrees_with_the_pydantic_requests() -> None:
    edge = LABELS_REQUEST_SCHEMA
    one = LabelRequest.model_json_schema()
    batch = LabelBatchRequest.model_json_schema()

    assert set(edge.properties or {}) == set(one["properties"]) | set(batch["properties"])
    items = (edge.properties or {})["labels"]
    assert items.max_items == MAX_LABELS_PER_REQUEST == EDGE_MAX_LABELS
    assert set(items.items.properties or {}) == set(one["properties"])  # type: ignore[union-attr]
    assert set(items.items.required or []) == set(one["required"])  # type: ignore[union-attr]


def test_only_the_archiver_carries_the_arrow_layer(msk: Synthesized) -> None:
    serving = msk.template("serving")
    scorer = _function(serving, "handlers.predict.handler")
    updater = _function(serving, "handlers.update_features.handler")
    archiver = _function(serving, "handlers.archive_events.handler")
    assert len(scorer["Layers"]) == 1
    assert len(updater["Layers"]) == 1
    assert len(archiver["Layers"]) == 2
    layers = serving.find_resources("AWS::Lambda::LayerVersion")
    assert sorted(str(layer["Properties"]["Description"]).split(" (")[0] for layer in layers.values()) == [
        "FraudSys arrow layer for the event lake",
        "FraudSys slim XGBoost layer",
    ]


def test_throttling_answers_429_with_retry_after_in_the_api_error_body(msk: Synthesized) -> None:
    msk.template("serving").has_resource_properties(
        "AWS::ApiGateway::GatewayResponse",
        {
            "ResponseType": "THROTTLED",
            "StatusCode": "429",
            "ResponseParameters": {"gatewayresponse.header.Retry-After": "'1'"},
            "ResponseTemplates": {
                "application/json": Match.serialized_json(
                    {"statusCode": 429, "message": Match.string_like_regexp("too many requests")}
                )
            },
        },
    )
