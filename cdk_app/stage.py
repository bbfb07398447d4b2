"""A deployment stage (dev, prod, ...) as a ``cdk.Stage`` of five stacks, and the app-level wiring.

A ``platform: localstack`` stage (cdk.json's ``localstack``) is the same app for LocalStack's
community edition: data, serving and observability, without what it lacks (the network stack, the
training stack; ``StageConfig.platform``)."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks
from constructs import Construct

from cdk_app.config import (
    BUNDLE_LAYERS_KEY,
    CONTEXT_KEY,
    REDIS_URL_KEY,
    STAGE_SELECT_KEY,
    LocalStackConfig,
    StageConfig,
    load_stage_configs,
)
from cdk_app.constructs.observability import Monitored
from cdk_app.constructs.scorer_api import API_STAGE
from cdk_app.stacks.data_stack import DataStack
from cdk_app.stacks.network_stack import NetworkStack
from cdk_app.stacks.observability_stack import ObservabilityStack
from cdk_app.stacks.serving_stack import ServingStack
from cdk_app.stacks.training_stack import TrainingStack

NAG_CONTEXT_KEY = "fraudsys:nag"


class FraudSysStage(cdk.Stage):
    """Network -> Data -> (Serving, Training) -> Observability, named ``fraudsys-<stage>-<part>``."""

    network: NetworkStack | None
    data: DataStack
    serving: ServingStack
    training: TrainingStack | None
    observability: ObservabilityStack

    def __init__(self, scope: Construct, construct_id: str, *, config: StageConfig) -> None:
        env = cdk.Environment(account=config.account, region=config.region)
        super().__init__(scope, construct_id, env=env)
        self.config = config
        if not config.on_aws:
            # LocalStack's CloudFormation resolves exports (Fn::ImportValue), not the weak
            # references (Fn::GetStackOutput) that cdk.json makes the default for AWS stages
            cdk.CrossStackReferences.of(self).consume(cdk.ReferenceStrength.STRONG)

        def props(part: str, description: str) -> dict[str, Any]:
            return {
                "stack_name": f"{config.prefix}-{part}",
                "description": f"FraudSys {config.name}: {description}",
                "termination_protection": config.retain_data,
            }

        self.network = (
            NetworkStack(self, "Network", config=config, **props("network", "VPC and endpoints"))
            if config.on_aws
            else None
        )
        network = self.network.network if self.network else None
        self.data = DataStack(
            self, "Data", config=config, network=network, **props("data", "buckets, Redis, stream")
        )
        self.serving = ServingStack(
            self,
            "Serving",
            config=config,
            network=network,
            storage=self.data.storage,
            feature_store=self.data.feature_store,
            stream=self.data.stream,
            **props("serving", "scorer API, feature updater and archiver"),
        )
        self.training = (
            TrainingStack(
                self,
                "Training",
                config=config,
                network=network,
                storage=self.data.storage,
                **props("training", "MLflow and the training job"),
            )
            if network is not None
            else None
        )
        monitored = Monitored(
            scorer=self.serving.scorer.function,
            updater=self.serving.updater.function,
            archiver=self.serving.archiver.function,
            api=self.serving.scorer.api,
            api_stage=API_STAGE,
            stream=self.data.stream,
            failed_batches=self.serving.updater.failed_batches,
            archiver_failed_batches=self.serving.archiver.failed_batches,
            outbox=self.serving.outbox.queue,
            outbox_dead_letters=self.serving.outbox.dead_letters,
            outbox_relay=self.serving.outbox.relay,
            dead_letter_bucket_name=self.data.storage.bucket_name("DeadLetters"),
        )
        self.observability = ObservabilityStack(
            self, "Observability", config=config, monitored=monitored, **props("observability", "alarms")
        )
        for key, value in {"project": "fraudsys", "stage": config.name, **config.tags}.items():
            cdk.Tags.of(self).add(key, value)


def add_stages(app: cdk.App) -> list[FraudSysStage]:
    """One stage per entry of ``context.fraudsys.stages`` (or those named by ``-c fraudsys:stages=dev``)."""
    selected = app.node.try_get_context(STAGE_SELECT_KEY)
    configs = load_stage_configs(app.node.try_get_context(CONTEXT_KEY), selected)
    # a LocalStack stage's Redis and layer bundling, from the cdklocal command line (docs/localstack.md)
    overrides = {
        "redis_url": app.node.try_get_context(REDIS_URL_KEY),
        "bundle_layers": str(app.node.try_get_context(BUNDLE_LAYERS_KEY)).lower() == "true" or None,
    }
    overrides = {key: value for key, value in overrides.items() if value}
    if overrides:
        configs = [
            c.model_copy(
                update={
                    "localstack": LocalStackConfig.model_validate({**c.localstack.model_dump(), **overrides})
                }
            )
            if c.platform == "localstack"
            else c
            for c in configs
        ]
    stages = [FraudSysStage(app, f"FraudSys-{config.name}", config=config) for config in configs]
    if str(app.node.try_get_context(NAG_CONTEXT_KEY)).lower() != "false":
        cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return stages
