"""The scorer: ``handlers.predict.handler`` behind an API Gateway REST API (IAM auth + API key):
``POST /predict``, ``GET /health`` and the label intake ``POST /labels``."""

from __future__ import annotations

import json

import aws_cdk as cdk
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_wafv2 as wafv2
from constructs import Construct

from cdk_app.config import StageConfig
from cdk_app.constructs.common import log_group
from cdk_app.constructs.feature_store import FeatureStore
from cdk_app.constructs.function import vpc_function
from cdk_app.constructs.network import Network
from cdk_app.constructs.outbox import PublishOutbox
from cdk_app.constructs.storage import MODEL_STORE_PREFIX, Storage
from cdk_app.constructs.stream import EventStream
from cdk_app.nag import acknowledge

API_STAGE = "v1"
ALIAS = "live"

# A coarse gate at the edge (types, required fields, sizes); fraud_core.schemas.PredictRequest stays
# the authority and answers 422 with field details. tests/infra checks the two agree on fields.
PREDICT_REQUEST_SCHEMA = apigw.JsonSchema(
    schema=apigw.JsonSchemaVersion.DRAFT4,
    title="PredictRequest",
    type=apigw.JsonSchemaType.OBJECT,
    additional_properties=False,
    required=[
        "merchant_name",
        "category",
        "amount_usd",
        "transaction_time",
        "lat",
        "long",
        "city_pop",
        "merch_lat",
        "merch_long",
    ],
    properties={
        "transaction_id": apigw.JsonSchema(type=apigw.JsonSchemaType.STRING, min_length=1, max_length=64),
        "cc_num": apigw.JsonSchema(type=apigw.JsonSchemaType.STRING, min_length=1, max_length=64),
        "customer_id": apigw.JsonSchema(type=apigw.JsonSchemaType.STRING, min_length=1, max_length=64),
        "merchant_name": apigw.JsonSchema(type=apigw.JsonSchemaType.STRING, min_length=1, max_length=256),
        "category": apigw.JsonSchema(type=apigw.JsonSchemaType.STRING, min_length=1, max_length=64),
        "amount_usd": apigw.JsonSchema(type=apigw.JsonSchemaType.NUMBER, minimum=0),
        "transaction_time": apigw.JsonSchema(type=apigw.JsonSchemaType.STRING, min_length=10, max_length=40),
        "lat": apigw.JsonSchema(type=apigw.JsonSchemaType.NUMBER, minimum=-90, maximum=90),
        "long": apigw.JsonSchema(type=apigw.JsonSchemaType.NUMBER, minimum=-180, maximum=180),
        "city_pop": apigw.JsonSchema(type=apigw.JsonSchemaType.INTEGER, minimum=0),
        "merch_lat": apigw.JsonSchema(type=apigw.JsonSchemaType.NUMBER, minimum=-90, maximum=90),
        "merch_long": apigw.JsonSchema(type=apigw.JsonSchemaType.NUMBER, minimum=-180, maximum=180),
        "dob": apigw.JsonSchema(type=[apigw.JsonSchemaType.STRING, apigw.JsonSchemaType.NULL]),
    },
)

#: fraud_core.schemas.MAX_LABELS_PER_REQUEST (tests/infra checks they agree; cdk_app imports no app code)
MAX_LABELS_PER_REQUEST = 500
#: WAF's size rule for bodies (the managed common rule set's ``SizeRestrictions_BODY`` limit):
#: ``POST /labels`` is exempt, as a batch of 500 labels is ~50 KB.
MAX_BODY_BYTES = 8 * 1024
#: rules of AWSManagedRulesCommonRuleSet that only count (legitimate callers would be blocked)
COMMON_RULES_COUNTED = ("SizeRestrictions_BODY", "NoUserAgent_HEADER")
_LABEL_PROPERTIES = {
    "transaction_id": apigw.JsonSchema(type=apigw.JsonSchemaType.STRING, min_length=1, max_length=64),
    "is_fraud": apigw.JsonSchema(type=apigw.JsonSchemaType.BOOLEAN),
    "reported_at": apigw.JsonSchema(
        type=[apigw.JsonSchemaType.STRING, apigw.JsonSchemaType.NULL], max_length=40
    ),
}
# One label, or {"labels": [...]}: the edge checks types and sizes only; fraud_core.schemas'
# LabelRequest / LabelBatchRequest stay the authority (422 with field details).
LABELS_REQUEST_SCHEMA = apigw.JsonSchema(
    schema=apigw.JsonSchemaVersion.DRAFT4,
    title="LabelsRequest",
    type=apigw.JsonSchemaType.OBJECT,
    additional_properties=False,
    properties={
        **_LABEL_PROPERTIES,
        "labels": apigw.JsonSchema(
            type=apigw.JsonSchemaType.ARRAY,
            min_items=1,
            max_items=MAX_LABELS_PER_REQUEST,
            items=apigw.JsonSchema(
                type=apigw.JsonSchemaType.OBJECT,
                additional_properties=False,
                required=["transaction_id", "is_fraud"],
                properties=_LABEL_PROPERTIES,
            ),
        ),
    },
)


class ScorerApi(Construct):
    """Scorer Lambda (alias ``live``, optional provisioned concurrency) and its REST API."""

    function: lambda_.Function
    alias: lambda_.Alias
    api: apigw.RestApi
    api_key: apigw.IApiKey
    usage_plan: apigw.UsagePlan
    invoke_policy: iam.ManagedPolicy
    labels_invoke_policy: iam.ManagedPolicy
    access_logs: logs.LogGroup

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: StageConfig,
        network: Network | None,
        layer: lambda_.ILayerVersion,
        storage: Storage,
        feature_store: FeatureStore,
        stream: EventStream,
        outbox: PublishOutbox,
    ) -> None:
        super().__init__(scope, construct_id)
        cfg = config.scorer
        rate_limit, burst_limit = config.scorer_throttle  # from the per-instance capacity
        environment = {
            **feature_store.handler_environment(config, cfg.redis_timeout_ms),
            "MODEL_STORE_URI": storage.model_store_uri,
            "MODEL_NAME": config.model_name,
            "MODEL_POINTER_TTL_SECONDS": str(cfg.model_pointer_ttl_seconds),
            "REASONS_METHOD": cfg.reasons_method,
            **stream.scorer_environment(),
            # a scored transaction whose publish failed is kept there (the relay sends it on)
            "PUBLISH_OUTBOX_QUEUE_URL": outbox.queue_url,
        }
        self.function = vpc_function(
            self,
            "Function",
            config=config,
            handler="handlers.predict.handler",
            description="scorer (POST /predict, GET /health, POST /labels)",
            settings=cfg,
            layer=layer,
            network=network,
            security_group=network.scorer_sg if network else None,
            environment=environment,
        )
        feature_store.grant_connect(self.function)
        storage.grant_objects(self.function, "Models", MODEL_STORE_PREFIX, read=True)
        stream.grant_publish(self.function)
        outbox.grant_send(self.function)
        self.alias = lambda_.Alias(
            self,
            "Live",
            alias_name=ALIAS,
            version=self.function.current_version,
            provisioned_concurrent_executions=cfg.provisioned_concurrency or None,
        )

        self.access_logs = log_group(self, "AccessLogs", config, cfg.log_retention_days)
        self.api = apigw.RestApi(
            self,
            "Api",
            rest_api_name=f"{config.prefix}-scorer",
            description="FraudSys real-time scoring",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            # API Gateway's CloudWatch role is one setting per account and region: only the stage
            # that manages it creates the role (kept on deletion, the setting points at it)
            cloud_watch_role=config.manage_api_gateway_account,
            cloud_watch_role_removal_policy=cdk.RemovalPolicy.RETAIN,
            deploy_options=apigw.StageOptions(
                stage_name=API_STAGE,
                tracing_enabled=True,
                metrics_enabled=True,
                logging_level=apigw.MethodLoggingLevel.INFO,
                data_trace_enabled=False,  # request bodies carry card data: never log them
                throttling_rate_limit=rate_limit,
                throttling_burst_limit=burst_limit,
                access_log_destination=apigw.LogGroupLogDestination(self.access_logs),
                access_log_format=apigw.AccessLogFormat.json_with_standard_fields(
                    caller=True,
                    http_method=True,
                    ip=True,
                    protocol=True,
                    request_time=True,
                    resource_path=True,
                    response_length=True,
                    status=True,
                    user=True,
                ),
            ),
        )
        if config.manage_api_gateway_account:
            acknowledge(
                self.api,
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs]",
                "The account-level API Gateway logging role must use AWS's push-to-CloudWatch policy.",
            )
        # API Gateway's own throttling answers in the API's one error body (handlers.errors), with
        # Retry-After like the scorer's 503s (handlers.deadline), instead of {"message": ...}
        throttled = {"statusCode": 429, "message": "too many requests: retry after Retry-After seconds"}
        self.api.add_gateway_response(
            "Throttled",
            type=apigw.ResponseType.THROTTLED,
            status_code="429",
            response_headers={"Retry-After": "'1'"},
            templates={"application/json": json.dumps(throttled)},
        )
        validator = self.api.add_request_validator(
            "Validator", validate_request_body=True, validate_request_parameters=True
        )
        model = self.api.add_model(
            "PredictRequestModel",
            content_type="application/json",
            model_name="PredictRequest",
            schema=PREDICT_REQUEST_SCHEMA,
        )
        integration = apigw.LambdaIntegration(self.alias, proxy=True)
        method_options: dict[str, object] = {
            "authorization_type": apigw.AuthorizationType.IAM,
            "api_key_required": True,
            "request_validator": validator,
        }
        predict = self.api.root.add_resource("predict")
        predict.add_method(
            "POST",
            integration,
            request_models={"application/json": model},
            **method_options,  # type: ignore[arg-type]
        )
        health = self.api.root.add_resource("health")
        health.add_method("GET", integration, **method_options)  # type: ignore[arg-type]
        labels_model = self.api.add_model(
            "LabelsRequestModel",
            content_type="application/json",
            model_name="LabelsRequest",
            schema=LABELS_REQUEST_SCHEMA,
        )
        labels = self.api.root.add_resource("labels")
        labels.add_method(
            "POST",
            integration,
            request_models={"application/json": labels_model},
            **method_options,  # type: ignore[arg-type]
        )
        acknowledge(
            self.api,
            "AwsSolutions-COG4",
            "Callers are services (the payment gateway), not end users: IAM SigV4 authorization plus "
            "an API key per client; there is no Cognito user pool.",
        )

        self.usage_plan = self.api.add_usage_plan(
            "UsagePlan",
            name=f"{config.prefix}-scorer",
            throttle=apigw.ThrottleSettings(rate_limit=rate_limit, burst_limit=burst_limit),
            quota=(
                apigw.QuotaSettings(limit=cfg.usage_plan_quota_per_day, period=apigw.Period.DAY)
                if cfg.usage_plan_quota_per_day
                else None
            ),
        )
        self.usage_plan.add_api_stage(stage=self.api.deployment_stage)
        self.api_key = self.api.add_api_key("ApiKey", description=f"{config.prefix} scorer client key")
        self.usage_plan.add_api_key(self.api_key)

        self.invoke_policy = iam.ManagedPolicy(
            self,
            "InvokePolicy",
            description=f"Attach to a client role to call the {config.prefix} scorer API",
            statements=[
                iam.PolicyStatement(
                    actions=["execute-api:Invoke"],
                    resources=[
                        self.api.arn_for_execute_api("POST", "/predict", API_STAGE),
                        self.api.arn_for_execute_api("GET", "/health", API_STAGE),
                    ],
                )
            ],
        )
        # a bank's chargeback system gets this one: it may send labels, not score
        self.labels_invoke_policy = iam.ManagedPolicy(
            self,
            "LabelsInvokePolicy",
            description=f"Attach to a client role to send labels to the {config.prefix} scorer API",
            statements=[
                iam.PolicyStatement(
                    actions=["execute-api:Invoke"],
                    resources=[self.api.arn_for_execute_api("POST", "/labels", API_STAGE)],
                )
            ],
        )
        if config.on_aws:
            self._web_acl(config)
        else:  # LocalStack's community edition has no WAF
            acknowledge(
                self.api,
                "AwsSolutions-APIG3",
                f"Stage {config.name} is deployed into LocalStack (platform: localstack), which has no "
                "WAFv2; every AWS stage associates the web ACL.",
            )

    def _web_acl(self, config: StageConfig) -> None:
        def managed(name: str, priority: int, count: tuple[str, ...] = ()) -> wafv2.CfnWebACL.RuleProperty:
            return wafv2.CfnWebACL.RuleProperty(
                name=name,
                priority=priority,
                override_action=wafv2.CfnWebACL.OverrideActionProperty(none={}),
                statement=wafv2.CfnWebACL.StatementProperty(
                    managed_rule_group_statement=wafv2.CfnWebACL.ManagedRuleGroupStatementProperty(
                        vendor_name="AWS",
                        name=name,
                        rule_action_overrides=[
                            wafv2.CfnWebACL.RuleActionOverrideProperty(
                                name=rule, action_to_use=wafv2.CfnWebACL.RuleActionProperty(count={})
                            )
                            for rule in count
                        ]
                        or None,
                    )
                ),
                visibility_config=visibility(name),
            )

        def visibility(name: str) -> wafv2.CfnWebACL.VisibilityConfigProperty:
            return wafv2.CfnWebACL.VisibilityConfigProperty(
                cloud_watch_metrics_enabled=True, metric_name=name, sampled_requests_enabled=False
            )

        rate_limit = wafv2.CfnWebACL.RuleProperty(
            name="RatePerIp",
            priority=0,
            action=wafv2.CfnWebACL.RuleActionProperty(block={}),
            statement=wafv2.CfnWebACL.StatementProperty(
                rate_based_statement=wafv2.CfnWebACL.RateBasedStatementProperty(
                    aggregate_key_type="IP", limit=max(100, config.scorer_throttle[0] * 300)
                )
            ),
            visibility_config=visibility("RatePerIp"),
        )
        # The common rule set blocks bodies over 8 KB (SizeRestrictions_BODY): it only counts here,
        # and this rule blocks them on every path but POST /labels, whose batches are larger
        # (its size is bounded by the API model: at most MAX_LABELS_PER_REQUEST labels). It also
        # blocks requests without a User-Agent (NoUserAgent_HEADER): only counted, as callers are
        # services signing with SigV4 and an API key, and an HTTP client need not send one.
        large_body = wafv2.CfnWebACL.RuleProperty(
            name="LargeBodyOutsideLabels",
            priority=3,
            action=wafv2.CfnWebACL.RuleActionProperty(block={}),
            statement=wafv2.CfnWebACL.StatementProperty(
                and_statement=wafv2.CfnWebACL.AndStatementProperty(
                    statements=[
                        wafv2.CfnWebACL.StatementProperty(
                            size_constraint_statement=wafv2.CfnWebACL.SizeConstraintStatementProperty(
                                comparison_operator="GT",
                                size=MAX_BODY_BYTES,
                                field_to_match=wafv2.CfnWebACL.FieldToMatchProperty(
                                    body=wafv2.CfnWebACL.BodyProperty(oversize_handling="MATCH")
                                ),
                                text_transformations=[
                                    wafv2.CfnWebACL.TextTransformationProperty(priority=0, type="NONE")
                                ],
                            )
                        ),
                        wafv2.CfnWebACL.StatementProperty(
                            not_statement=wafv2.CfnWebACL.NotStatementProperty(
                                statement=wafv2.CfnWebACL.StatementProperty(
                                    byte_match_statement=wafv2.CfnWebACL.ByteMatchStatementProperty(
                                        field_to_match=wafv2.CfnWebACL.FieldToMatchProperty(uri_path={}),
                                        positional_constraint="EXACTLY",
                                        search_string=f"/{API_STAGE}/labels",
                                        text_transformations=[
                                            wafv2.CfnWebACL.TextTransformationProperty(
                                                priority=0, type="NONE"
                                            )
                                        ],
                                    )
                                )
                            )
                        ),
                    ]
                )
            ),
            visibility_config=visibility("LargeBodyOutsideLabels"),
        )
        acl = wafv2.CfnWebACL(
            self,
            "WebAcl",
            scope="REGIONAL",
            default_action=wafv2.CfnWebACL.DefaultActionProperty(allow={}),
            visibility_config=visibility(f"{config.prefix}-scorer"),
            rules=[
                rate_limit,
                managed("AWSManagedRulesCommonRuleSet", 1, count=COMMON_RULES_COUNTED),
                managed("AWSManagedRulesKnownBadInputsRuleSet", 2),
                large_body,
            ],
        )
        wafv2.CfnWebACLAssociation(
            self,
            "WebAclAssociation",
            resource_arn=self.api.deployment_stage.stage_arn,
            web_acl_arn=acl.attr_arn,
        )

    @property
    def url(self) -> str:
        return self.api.url
