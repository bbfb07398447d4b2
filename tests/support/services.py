"""Real services for tests: the local stack's own starters (redis-server, a Redis Cluster, tansu
broker) on free ports. ``AnyRedis`` is the type of the ``any_redis`` fixture (tests/conftest.py)."""

import redis
from redis.cluster import RedisCluster

from local_stack.services import (
    RedisClusterService,
    Service,
    free_port,
    kafka_broker,
    redis_cluster,
    redis_server,
    wait_for_port,
)

type AnyRedis = redis.Redis | RedisCluster
"""A single-node client or a cluster client: what store code must accept to run on both."""

__all__ = [
    "AnyRedis",
    "RedisClusterService",
    "Service",
    "free_port",
    "kafka_broker",
    "redis_cluster",
    "redis_server",
    "wait_for_port",
]
