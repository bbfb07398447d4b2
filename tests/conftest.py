"""Fixtures with real services, started once per test session on free ports of 127.0.0.1.

Redis, single node or cluster:

- ``redis_service`` / ``redis_client``: one ``redis-server``; the client is a ``redis.Redis``
  flushed (``FLUSHALL``) before each test.
- ``redis_cluster_service`` / ``redis_cluster_client``: a real 3-master Redis Cluster
  (``redis-server --cluster-enabled yes`` x 3 + ``redis-cli --cluster create``, no replicas),
  started on first use; ``redis_cluster_service.startup_nodes`` lists ``(host, port)`` of the
  masters. The client is ``redis.RedisCluster(startup_nodes=..., decode_responses=False)`` with
  every primary flushed before each test.
- ``any_redis``: parametrized over ``"single"`` and ``"cluster"``; a test that takes it runs twice,
  once with each client above (ids ``[single]`` / ``[cluster]``, so ``-k cluster`` picks one).
  Use it for code that must behave the same on both, e.g. the feature store::

      from tests.support.services import AnyRedis

      def test_store_round_trip(any_redis: AnyRedis) -> None:
          store = RedisFeatureStore(any_redis, ...)

  The cluster is started only when a ``[cluster]`` test (or ``redis_cluster_*``) runs. Its keys
  must respect slots: a multi-key command or a Lua script whose keys are in different hash slots
  fails with ``CROSSSLOT`` on the cluster and works on the single node.
"""

from collections.abc import Iterator

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from fraud_adapters.store_marker import StoreMarker
from tests.support.services import (
    AnyRedis,
    RedisClusterService,
    Service,
    kafka_broker,
    redis_cluster,
    redis_server,
)


@pytest.fixture(scope="session")
def redis_service() -> Iterator[Service]:
    with redis_server() as service:
        yield service


@pytest.fixture
def redis_client(redis_service: Service) -> Iterator["redis.Redis"]:
    client: redis.Redis = redis.Redis(port=redis_service.port)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis_cluster_service() -> Iterator[RedisClusterService]:
    with redis_cluster(masters=3) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_client(redis_cluster_service: RedisClusterService) -> Iterator[RedisCluster]:
    client = RedisCluster(
        startup_nodes=[
            ClusterNode(host, port)  # type: ignore[no-untyped-call]
            for host, port in redis_cluster_service.startup_nodes
        ],
        decode_responses=False,
    )
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield client
    client.close()


@pytest.fixture(params=["single", "cluster"])
def any_redis(request: pytest.FixtureRequest) -> AnyRedis:
    """``redis_client`` (param ``single``) or ``redis_cluster_client`` (param ``cluster``), flushed."""
    name = "redis_client" if request.param == "single" else "redis_cluster_client"
    client: AnyRedis = request.getfixturevalue(name)
    return client


@pytest.fixture(scope="session")
def kafka_service() -> Iterator[Service]:
    with kafka_broker() as service:
        yield service


@pytest.fixture(params=["single", "cluster"])
def handler_redis(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The handlers' Redis (``REDIS_URL``, ``REDIS_CLUSTER``), flushed and marked filled (a new
    store: ``fraud_adapters.store_marker``): one redis-server, or a real 3-master Redis Cluster.
    A test using it runs on both (ids ``[single]``, ``[cluster]``)."""
    client: AnyRedis
    if request.param == "cluster":
        cluster: RedisClusterService = request.getfixturevalue("redis_cluster_service")
        client = request.getfixturevalue("redis_cluster_client")  # flushes every primary
        monkeypatch.setenv("REDIS_URL", f"redis://{cluster.url}/0")
        monkeypatch.setenv("REDIS_CLUSTER", "true")
    else:
        service: Service = request.getfixturevalue("redis_service")
        client = request.getfixturevalue("redis_client")  # flushes it
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{service.port}/0")
        monkeypatch.delenv("REDIS_CLUSTER", raising=False)
    StoreMarker(client).mark("tests: a new store")
    return str(request.param)
