"""The feature store's fill marker (``fraud_adapters.store_marker``) on a real redis-server and
Redis Cluster, and how the local stack decides about it at `up` (``local_stack.stack.store_state``,
on a real redis-server and the local S3)."""

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import redis

from fraud_adapters.store_marker import EMPTY, MarkerCheck, StoreMarker
from local_stack.services import Service, free_port, start_moto, start_redis
from local_stack.stack import LAKE_BUCKET, StackConfig, store_state
from tests.support.services import AnyRedis

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_marker_is_written_read_and_lost_with_the_data(any_redis: AnyRedis) -> None:
    marker = StoreMarker(any_redis)
    assert marker.read() is None
    filled = marker.mark("fraudsys backfill", at=1_700_000_000)
    assert marker.read() == filled
    assert filled.by == "fraudsys backfill"
    any_redis.flushall()
    assert marker.read() is None


def test_a_marker_value_no_fraudsys_code_wrote_still_marks_the_store(redis_client: "redis.Redis") -> None:
    marker = StoreMarker(redis_client)
    redis_client.set(marker.key, b"\xff not json")
    found = marker.read()
    assert found is not None
    assert found.by == "unknown"


def test_the_scorer_reads_the_marker_at_most_once_per_ttl(redis_client: "redis.Redis") -> None:
    marker = StoreMarker(redis_client)
    marker.mark("tests")
    clock = Clock()
    check = MarkerCheck(marker, ttl=1.0, clock=clock)
    assert check.filled() is True

    redis_client.delete(marker.key)  # the data is lost...
    clock.now = 0.5
    assert check.filled() is True  # ...not seen before the TTL has passed
    clock.now = 1.0
    assert check.filled() is False

    marker.mark("fraudsys backfill")
    clock.now = 2.0
    assert check.filled() is True


def test_an_unreachable_redis_leaves_the_marker_unknown() -> None:
    client = redis.Redis(port=free_port(), socket_timeout=0.2, socket_connect_timeout=0.2)
    assert MarkerCheck(StoreMarker(client), ttl=0.0).filled() is None


@pytest.fixture
def stack_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StackConfig]:
    """redis-server and the local S3 (with the lake's bucket) where a StackConfig points."""
    cfg = StackConfig.on_free_ports(tmp_path)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",  # pragma: allowlist secret
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    services: list[Service] = [start_redis(cfg.redis_port, tmp_path / "redis"), start_moto(cfg.s3_port)]
    try:
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{cfg.s3_port}").create_bucket(Bucket=LAKE_BUCKET)
        yield cfg
    finally:
        for service in services:
            service.stop()


def test_the_stack_marks_a_new_store_and_says_when_one_lacks_the_lake_history(
    stack_parts: StackConfig,
) -> None:
    cfg = stack_parts
    client = redis.Redis.from_url(cfg.redis_url)
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{cfg.s3_port}")

    # a new system: Redis and the lake both empty, nothing to backfill: the store is complete
    assert store_state(cfg) == "new (nothing in the lake to backfill)"
    assert StoreMarker(client).read() is not None
    assert store_state(cfg).startswith("filled")

    # Redis emptied while the lake holds events: not marked, and the way out is named
    client.flushall()
    s3.put_object(Bucket=LAKE_BUCKET, Key="archive/transactions/day=2020-06-21/part-0.parquet", Body=b"x")
    state = store_state(cfg)
    assert state.startswith(EMPTY.split(" (")[0])
    assert "uv run fraudsys backfill --local" in state
    assert client.dbsize() == 0
    client.close()
