from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fraud_adapters.store_marker import StoreMarker
from handlers import bootstrap, predict
from tests.support.services import Service


@pytest.fixture
def lambda_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_service: Service) -> Iterator[Path]:
    """Handler environment on the test redis-server (emptied, and marked filled: a new store), a
    local model store and dead-letter folder."""
    client = redis.Redis(port=redis_service.port)
    client.flushall()
    StoreMarker(client).mark("tests: a new store")
    client.close()
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{redis_service.port}/0")
    monkeypatch.setenv("MODEL_STORE_URI", str(tmp_path / "models"))
    monkeypatch.setenv("DEAD_LETTER_URI", str(tmp_path / "dead"))
    monkeypatch.setenv("STREAM_KIND", "none")
    monkeypatch.setenv("MODEL_POINTER_TTL_SECONDS", "0")
    bootstrap.reset()
    predict.scorer.cache_clear()
    yield tmp_path
    bootstrap.reset()
    predict.scorer.cache_clear()
