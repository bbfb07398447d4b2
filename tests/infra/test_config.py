"""Stage configuration: cdk.json validates, and inconsistent values fail before any synth."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from cdk_app.config import StageConfig, load_stage_configs, read_cdk_json_context

from .conftest import REPO_ROOT, stage_config


def test_cdk_json_stages_validate_and_cover_both_stream_kinds() -> None:
    # given the checked-in cdk.json
    context = read_cdk_json_context(REPO_ROOT / "cdk.json")

    # when its stages are loaded
    configs = load_stage_configs(context["fraudsys"])

    # then dev, prod and localstack are valid, and the two stream kinds are both deployed somewhere
    assert {c.name for c in configs} == {"dev", "prod", "localstack"}
    assert [c.name for c in configs if c.platform == "localstack"] == ["localstack"]
    assert {c.stream_kind for c in configs} == {"msk", "kinesis"}
    prod = next(c for c in configs if c.name == "prod")
    assert prod.retain_data
    assert prod.scorer.provisioned_concurrency > 0
    # prod's cache is sharded and every shard has a replica in another AZ
    assert prod.redis.num_shards > 1
    assert prod.redis.multi_az


def test_redis_cluster_settings_derive_the_parameter_group_and_node_count() -> None:
    redis = stage_config("dev", redis={"num_shards": 3, "replicas_per_shard": 1}).redis

    assert redis.parameter_family == "redis7"
    assert redis.node_count == 6
    assert redis.multi_az
    assert not stage_config("dev", redis={"replicas_per_shard": 0}).redis.multi_az


def test_cdk_json_disables_notices_and_telemetry() -> None:
    import json

    cdk_json = json.loads((REPO_ROOT / "cdk.json").read_text())
    assert cdk_json["notices"] is False
    assert cdk_json["context"]["cli-telemetry"] is False


def test_stage_selection_by_name_and_unknown_names() -> None:
    context = {"stages": {"dev": {}, "prod": {"stream_kind": "kinesis"}}}

    assert [c.name for c in load_stage_configs(context, "prod")] == ["prod"]
    with pytest.raises(ValueError, match="unknown stage"):
        load_stage_configs(context, "staging")


def test_config_is_frozen() -> None:
    config = stage_config("dev")
    with pytest.raises(ValidationError):
        config.name = "prod"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"stream_kind": "rabbitmq"}, "stream_kind"),
        ({"scorer": {"reserved_concurrency": 5, "provisioned_concurrency": 10}}, "provisioned_concurrency"),
        ({"msk": {"broker_count": 3}}, "multiple of vpc.max_azs"),
        ({"updater": {"min_pollers": 5, "max_pollers": 2}}, "min_pollers"),
        ({"training": {"schedule": "every day"}}, "cron"),
        ({"scorer": {"memory_mb": 64}}, "memory_mb"),
        ({"account": "123456789012", "region": "eu-west-1"}, "availability_zones"),
        ({"vpc": {"max_azs": 2, "availability_zones": ["eu-west-1a"]}}, "exactly max_azs"),
        ({"redis": {"num_shards": 0}}, "num_shards"),
        ({"redis": {"replicas_per_shard": 6}}, "replicas_per_shard"),
        ({"redis": {"engine_version": "6.2"}}, "7.x or later"),
        ({"redis": {"engine_version": "latest"}}, "engine_version"),
        # the cluster-mode-disabled setting is gone: a stale cdk.json fails loudly
        ({"redis": {"num_cache_clusters": 2}}, "num_cache_clusters"),
        ({"scorer": {"log_retention_days": 10}}, "log_retention_days"),
        ({"unknown_key": 1}, "unknown_key"),
    ],
)
def test_invalid_config_is_rejected(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        StageConfig.model_validate({"name": "dev", **overrides})


def test_explicit_environment_with_zones_is_accepted() -> None:
    config = stage_config(
        "prod",
        account="123456789012",
        region="eu-west-1",
        vpc={"max_azs": 2, "availability_zones": ["eu-west-1a", "eu-west-1b"]},
    )
    assert config.prefix == "fraudsys-prod"


def test_dev_deploys_on_a_new_account_without_reserved_concurrency() -> None:
    # a new account's Lambda concurrency quota is 10: no reservation is possible there
    dev = next(
        c
        for c in load_stage_configs(read_cdk_json_context(REPO_ROOT / "cdk.json")["fraudsys"])
        if c.name == "dev"
    )
    assert dev.lambda_concurrency_quota == 10
    assert dev.scorer.reserved_concurrency is None
    assert dev.updater.reserved_concurrency is None


@pytest.mark.parametrize(
    ("quota", "scorer", "updater", "ok"),
    [
        (10, None, None, True),
        (10, 1, None, False),
        (1000, 400, 500, True),
        (1000, 400, 501, False),
        (150, 50, None, True),
    ],
)
def test_reserved_concurrency_must_leave_the_minimum_unreserved(
    quota: int, scorer: int | None, updater: int | None, ok: bool
) -> None:
    values: dict[str, Any] = {
        "lambda_concurrency_quota": quota,
        "scorer": {"reserved_concurrency": scorer},
        "updater": {"reserved_concurrency": updater},
    }
    if ok:
        stage_config("quota", **values)
    else:
        with pytest.raises(ValidationError, match="minimum unreserved"):
            stage_config("quota", **values)


def test_two_stages_in_one_account_do_not_both_manage_api_gateways_account_setting() -> None:
    where = {
        "account": "123456789012",
        "region": "eu-west-1",
        "vpc": {"availability_zones": ["eu-west-1a", "eu-west-1b"]},
    }
    with pytest.raises(ValueError, match="manage_api_gateway_account"):
        load_stage_configs({"stages": {"dev": where, "prod": where}})
    configs = load_stage_configs(
        {"stages": {"dev": {**where, "manage_api_gateway_account": False}, "prod": where}}
    )
    assert [c.manage_api_gateway_account for c in configs] == [False, True]


def test_throttling_follows_the_scorers_concurrency_and_per_instance_capacity() -> None:
    # derived: burst = concurrency N (reserved, else the account's quota), rate = N x C / 2
    reserved = StageConfig.model_validate(
        {"name": "tt", "scorer": {"reserved_concurrency": 40, "instance_capacity_rps": 60}}
    )
    assert reserved.scorer_concurrency == 40
    assert reserved.scorer_throttle == (1200, 40)
    unreserved = StageConfig.model_validate(
        {"name": "tt", "lambda_concurrency_quota": 10, "scorer": {"throttle_rate_limit": 50}}
    )
    assert unreserved.scorer_throttle == (50, 10)
    # set by hand: at most what the instances answer, no burst beyond them
    with pytest.raises(ValidationError, match="API Gateway answers 500"):
        StageConfig.model_validate(
            {"name": "tt", "scorer": {"reserved_concurrency": 40, "throttle_burst_limit": 41}}
        )
    with pytest.raises(ValidationError, match="instance_capacity_rps"):
        StageConfig.model_validate(
            {"name": "tt", "scorer": {"reserved_concurrency": 40, "throttle_rate_limit": 40 * 50 + 1}}
        )


def test_the_stages_throttle_within_their_scorer_capacity() -> None:
    context = read_cdk_json_context(REPO_ROOT / "cdk.json").get("fraudsys")
    dev, prod = (load_stage_configs(context, name)[0] for name in ("dev", "prod"))
    assert dev.scorer.reserved_concurrency is None  # account limits: see docs/infra.md
    assert dev.scorer_throttle == (50, 10)
    assert prod.scorer_throttle == (1000, 400)


def test_a_localstack_stage_needs_kinesis_and_takes_its_redis_from_the_config() -> None:
    # LocalStack's community edition has no MSK
    with pytest.raises(ValidationError, match="stream_kind: kinesis"):
        stage_config("ls", platform="localstack", stream_kind="msk")
    config = stage_config("ls", platform="localstack", stream_kind="kinesis")
    assert not config.on_aws
    assert config.localstack.redis_url == "redis://127.0.0.1:6390/0"  # the compose file's Redis
    with pytest.raises(ValidationError):
        stage_config("ls", platform="localstack", stream_kind="kinesis", localstack={"redis_url": "x"})
