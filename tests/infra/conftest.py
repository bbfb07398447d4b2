"""Shared CDK fixtures: stage configs for both stream kinds, synthesized once per test session.

Template tests skip asset bundling (``aws:cdk:bundling-stacks: []``), so they need neither the
layer build nor Docker; the synth tests in test_synth.py bundle for real.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from cdk_app.config import StageConfig, read_cdk_json_context
from cdk_app.stage import FraudSysStage

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("CDK_DISABLE_CLI_TELEMETRY", "true")

REPO_ROOT = Path(__file__).resolve().parents[2]


def stage_config(name: str, **overrides: Any) -> StageConfig:
    """A valid stage config; ``overrides`` are validated like cdk.json values."""
    return StageConfig.model_validate({"name": name, **overrides})


MSK_CONFIG = stage_config(
    "tmsk",
    stream_kind="msk",
    scorer={"reserved_concurrency": 50, "provisioned_concurrency": 5, "usage_plan_quota_per_day": 1000},
    updater={"batch_size": 250, "max_batching_window_seconds": 2, "min_pollers": 2, "max_pollers": 4},
    archiver={"batch_size": 2000, "max_batching_window_seconds": 20, "max_pollers": 3},
    msk={"broker_count": 2, "partitions": 6},
    redis={"num_shards": 3, "replicas_per_shard": 2},
    alarms={"email": "oncall@example.com"},
)
KINESIS_CONFIG = stage_config(
    "tkin",
    stream_kind="kinesis",
    architecture="arm64",
    kinesis={"shard_count": 2},
    # the cheapest cache: one shard without replica (no Multi-AZ, acknowledged for cdk-nag)
    redis={"num_shards": 1, "replicas_per_shard": 0},
    updater={"batch_size": 50, "max_batching_window_seconds": 0, "parallelization_factor": 2},
    lake={"infrequent_access_after_days": 60, "glacier_ir_after_days": None, "expire_after_days": 365},
)

#: a platform: localstack stage (what cdklocal deploys into LocalStack, docs/localstack.md)
LOCALSTACK_CONFIG = stage_config(
    "tls",
    platform="localstack",
    stream_kind="kinesis",
    kinesis={"shard_count": 1},
    localstack={"redis_url": "redis://127.0.0.1:6391/0"},
)


def app_context(**extra: Any) -> dict[str, Any]:
    """cdk.json's context (feature flags), without bundling, plus ``extra``."""
    context = read_cdk_json_context(REPO_ROOT / "cdk.json")
    context["aws:cdk:bundling-stacks"] = []
    context.update(extra)
    return context


@dataclass(frozen=True)
class Synthesized:
    stage: FraudSysStage

    def template(self, part: str) -> Template:
        return Template.from_stack(getattr(self.stage, part))


@pytest.fixture(scope="session")
def cdk_outdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cdk.out")


@pytest.fixture(scope="session")
def stages(cdk_outdir: Path) -> dict[str, Synthesized]:
    app = cdk.App(context=app_context(), outdir=str(cdk_outdir), analytics_reporting=False)
    built = {
        "msk": Synthesized(FraudSysStage(app, "FraudSys-tmsk", config=MSK_CONFIG)),
        "kinesis": Synthesized(FraudSysStage(app, "FraudSys-tkin", config=KINESIS_CONFIG)),
        "localstack": Synthesized(FraudSysStage(app, "FraudSys-tls", config=LOCALSTACK_CONFIG)),
    }
    app.synth()
    return built


@pytest.fixture(scope="session")
def msk(stages: dict[str, Synthesized]) -> Synthesized:
    return stages["msk"]


@pytest.fixture(scope="session")
def kinesis(stages: dict[str, Synthesized]) -> Synthesized:
    return stages["kinesis"]


@pytest.fixture(scope="session")
def real_assemblies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """cdk.json's own stages (dev, prod), synthesized once (bundling skipped): stage -> assembly."""
    from cdk_app.config import CONTEXT_KEY, load_stage_configs

    outdir = tmp_path_factory.mktemp("cdk.out.stages")
    context = app_context()
    app = cdk.App(context=context, outdir=str(outdir), analytics_reporting=False)
    stages = [
        FraudSysStage(app, f"FraudSys-{c.name}", config=c) for c in load_stage_configs(context[CONTEXT_KEY])
    ]
    app.synth()
    return {stage.config.name: outdir / f"assembly-{stage.node.id}" for stage in stages}
