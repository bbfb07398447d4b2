"""Settings the CDK gives the handlers are the ones they use (issue 15)."""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from handlers import bootstrap, update_features

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean_settings() -> Iterator[None]:
    bootstrap.reset()
    yield None
    bootstrap.reset()


def test_the_updater_honours_redis_timeout_ms(monkeypatch: pytest.MonkeyPatch, clean_settings: None) -> None:
    # given the updater's environment with updater.redis_timeout_ms (the CDK sets REDIS_TIMEOUT_MS)
    monkeypatch.setenv("REDIS_TIMEOUT_MS", "2500")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # never connected: the client is lazy
    assert update_features.updater_redis_timeout_ms() == 2500
    client = bootstrap.feature_store(update_features.updater_redis_timeout_ms()).client
    assert isinstance(client, redis.Redis)
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 2.5

    # and without it, the updater's own default (the scorer's 50 ms is too short for a batch)
    monkeypatch.delenv("REDIS_TIMEOUT_MS")
    bootstrap.reset()
    assert update_features.updater_redis_timeout_ms() == update_features.UPDATER_REDIS_TIMEOUT_MS


def test_in_the_local_stack_the_updater_keeps_its_own_timeout_beside_the_scorers(
    monkeypatch: pytest.MonkeyPatch, clean_settings: None
) -> None:
    # given one process environment for the scorer and the updater (the local stack's)
    from local_stack.stack import StackConfig, cdk_updater_redis_timeout_ms, handler_environment

    env = handler_environment(StackConfig.on_free_ports(Path("unused")))
    for key in ("REDIS_TIMEOUT_MS", "UPDATER_REDIS_TIMEOUT_MS", "REDIS_URL"):
        monkeypatch.setenv(key, env[key])
    # then the updater's Redis client waits as long as the deployed updater's, the scorer's as its own
    assert update_features.updater_redis_timeout_ms() == cdk_updater_redis_timeout_ms() >= 1000
    updater = bootstrap.feature_store(update_features.updater_redis_timeout_ms()).client
    scorer = bootstrap.feature_store().client
    assert isinstance(updater, redis.Redis)
    assert isinstance(scorer, redis.Redis)
    assert (
        updater.connection_pool.connection_kwargs["socket_timeout"] == cdk_updater_redis_timeout_ms() / 1000
    )
    assert scorer.connection_pool.connection_kwargs["socket_timeout"] == int(env["REDIS_TIMEOUT_MS"]) / 1000


def test_metrics_carry_the_service_name_the_alarms_filter_on() -> None:
    # the CDK sets POWERTOOLS_SERVICE_NAME from the stage's service_name, the alarms' dimension
    code = (
        "import json; from handlers.observability import logger, metrics;"
        "print(json.dumps([logger.service, metrics.namespace, metrics.default_dimensions, metrics.service]))"
    )
    env = {**os.environ, "POWERTOOLS_SERVICE_NAME": "fraud-eu", "POWERTOOLS_METRICS_NAMESPACE": "FraudEU"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "PYTHONPATH": f"{REPO_ROOT / 'lambdas'}{os.pathsep}{REPO_ROOT}"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    service, namespace, _, metrics_service = json.loads(out.strip().splitlines()[-1])
    assert service == "fraud-eu"
    assert metrics_service == "fraud-eu"
    assert namespace == "FraudEU"
