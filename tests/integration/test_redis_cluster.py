# mypy: disallow-untyped-calls=False
# (redis.cluster is untyped: RedisCluster.keyslot, get_node_from_key, execute_command, ...)
"""The Redis Cluster test harness works: a real 3-master cluster (``redis_cluster_service``), a
cluster client flushed per test (``redis_cluster_client``) and ``any_redis`` over both kinds.

These are the cluster rules the feature store must live by (issue 14): keys spread over the
masters by hash slot, keys sharing a hash tag ``{...}`` share a slot, and a Lua script may only
touch keys of one slot, all of them declared in ``KEYS``.
"""

import shutil
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster
from redis.exceptions import ClusterCrossSlotError, RedisClusterException, ResponseError

from local_stack import services
from local_stack.services import Service, ServiceError
from tests.support.services import AnyRedis, RedisClusterService

pytestmark = pytest.mark.integration

# Sets both declared keys and returns the second one's new value.
SET_BOTH = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])"
# Declares no keys but writes one: allowed on a single node, refused by a cluster node unless the
# key happens to live in the slot the script was routed to.
UNDECLARED_WRITE = "return redis.call('SET', ARGV[1], 'x')"


def node_clients(service: RedisClusterService) -> dict[int, "redis.Redis"]:
    """A plain client per master, to look at one node's own keyspace."""
    return {port: redis.Redis(host=host, port=port) for host, port in service.startup_nodes}


def keys_on_distinct_nodes(client: RedisCluster, count: int) -> list[bytes]:
    """``count`` keys whose slots are owned by ``count`` different masters."""
    found: dict[str, bytes] = {}
    for i in range(10_000):
        key = f"card:{i}".encode()
        found.setdefault(client.get_node_from_key(key).name, key)
        if len(found) == count:
            return list(found.values())
    raise AssertionError(f"no {count} keys on distinct nodes among 10,000")


def test_the_cluster_has_three_masters_sharing_every_slot_and_is_ok(
    redis_cluster_service: RedisClusterService, redis_cluster_client: RedisCluster
) -> None:
    # given the session's cluster and its client
    ports = redis_cluster_service.ports

    # then three distinct masters, each cluster_state:ok, and the 16384 slots split among them
    assert len(set(ports)) == 3
    primaries = redis_cluster_client.get_primaries()
    assert sorted(node.port for node in primaries) == sorted(ports)
    for port, node in node_clients(redis_cluster_service).items():
        info = node.execute_command("CLUSTER INFO")  # parsed into a dict by redis-py
        assert info["cluster_state"] == "ok", (port, info)
        assert info["cluster_size"] == "3", (port, info)
        node.close()
    covered = sum(end - start + 1 for start, end, *_ in redis_cluster_client.execute_command("CLUSTER SLOTS"))
    assert covered == 16384


def test_the_client_is_flushed_and_returns_bytes(redis_cluster_client: RedisCluster) -> None:
    # given the fixture's fresh client: every primary is empty
    assert redis_cluster_client.dbsize(target_nodes=RedisCluster.PRIMARIES) == 0

    # when a key is written, it comes back as bytes (decode_responses=False, like the store)
    redis_cluster_client.set("k", "v")
    assert redis_cluster_client.get("k") == b"v"


def test_keys_in_different_slots_land_on_different_nodes(
    redis_cluster_service: RedisClusterService, redis_cluster_client: RedisCluster
) -> None:
    # given three keys whose slots belong to three different masters
    keys = keys_on_distinct_nodes(redis_cluster_client, 3)

    # when each is written through the cluster client
    for key in keys:
        redis_cluster_client.set(key, b"1")

    # then each node holds exactly one of them, and a different one
    held = {}
    for port, node in node_clients(redis_cluster_service).items():
        held[port] = node.keys("*")
        node.close()
    assert sorted(len(k) for k in held.values()) == [1, 1, 1]
    assert sorted(k for ks in held.values() for k in ks) == sorted(keys)


def test_keys_with_one_hash_tag_share_a_slot_and_a_node(redis_cluster_client: RedisCluster) -> None:
    # given keys of one card, hash-tagged alike, with different suffixes
    keys = [b"{c:42}:tiles", b"{c:42}:edge", b"{c:42}:dob"]

    # then they hash to one slot (only the tag counts) and so to one node
    assert len({redis_cluster_client.keyslot(k) for k in keys}) == 1
    assert redis_cluster_client.keyslot(b"{c:42}:tiles") == redis_cluster_client.keyslot(b"c:42")
    assert len({redis_cluster_client.get_node_from_key(k).name for k in keys}) == 1


def test_a_script_with_keys_of_one_hash_tag_runs(redis_cluster_client: RedisCluster) -> None:
    # given a script declaring two keys that share the hash tag {c:7}
    script = redis_cluster_client.register_script(SET_BOTH)

    # when it runs twice
    first = script(keys=[b"{c:7}:a", b"{c:7}:n"], args=[b"x"])
    second = script(keys=[b"{c:7}:a", b"{c:7}:n"], args=[b"y"])

    # then both keys were written on their common node
    assert (first, second) == (1, 2)
    assert redis_cluster_client.get(b"{c:7}:a") == b"y"


def test_a_script_with_keys_in_different_slots_fails_with_crossslot(
    redis_cluster_client: RedisCluster,
) -> None:
    # given two keys in different slots
    key_a, key_b = keys_on_distinct_nodes(redis_cluster_client, 2)
    node = redis_cluster_client.get_node_from_key(key_a)

    # when a script declaring both is sent to a node, the server answers CROSSSLOT
    with pytest.raises(ClusterCrossSlotError, match="hash to the same slot"):
        redis_cluster_client.execute_command("EVAL", SET_BOTH, 2, key_a, key_b, "x", target_nodes=node)
    # and the cluster client refuses it before sending (same rule, checked client side)
    with pytest.raises(RedisClusterException, match="same key slot"):
        redis_cluster_client.eval(SET_BOTH, 2, key_a, key_b, "x")
    # nothing was written
    assert redis_cluster_client.dbsize(target_nodes=RedisCluster.PRIMARIES) == 0


def test_a_script_touching_an_undeclared_key_of_another_node_is_refused(
    redis_cluster_client: RedisCluster,
) -> None:
    # given a key owned by one node and a script sent to another node, declaring no keys
    key, other = keys_on_distinct_nodes(redis_cluster_client, 2)
    elsewhere = redis_cluster_client.get_node_from_key(other)

    # when it writes the key, the node refuses ("non local key": the updater's old failure)
    with pytest.raises(ResponseError, match=r"non local key|undeclared key|not declared"):
        redis_cluster_client.execute_command("EVAL", UNDECLARED_WRITE, 0, key, target_nodes=elsewhere)


def test_any_redis_runs_a_hash_tagged_script_on_both_kinds(any_redis: AnyRedis) -> None:
    # given either kind of client, freshly flushed
    assert any_redis.dbsize() == 0

    # when a script declaring two keys of one hash tag runs, and a pipeline reads them
    script = any_redis.register_script(SET_BOTH)
    assert script(keys=[b"{m:1}:a", b"{m:1}:n"], args=[b"x"]) == 1
    pipe = any_redis.pipeline()
    pipe.get(b"{m:1}:a")
    pipe.get(b"{m:1}:n")

    # then both kinds give the same answers
    assert pipe.execute() == [b"x", b"1"]


def test_any_redis_cross_slot_keys_fail_only_on_the_cluster(any_redis: AnyRedis) -> None:
    # given two keys without a common hash tag, in different slots
    keys = [b"card:a", b"card:b"]

    # when a script declares both: fine on one node, refused on the cluster
    if isinstance(any_redis, RedisCluster):
        assert any_redis.keyslot(keys[0]) != any_redis.keyslot(keys[1])
        with pytest.raises(RedisClusterException, match="same key slot"):
            any_redis.eval(SET_BOTH, 2, *keys, "x")
    else:
        assert any_redis.eval(SET_BOTH, 2, *keys, "x") == 1


def test_a_failed_cluster_start_leaves_no_node_running(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # given a start whose `redis-cli --cluster create` fails (a redis-cli that always exits 1)
    started: list[Service] = []
    real_start = services._start

    def recording_start(*args: object, **kwargs: object) -> Service:
        service = real_start(*args, **kwargs)  # type: ignore[arg-type]
        started.append(service)
        return service

    monkeypatch.setattr(services, "_start", recording_start)
    monkeypatch.setattr(services, "redis_cli_binary", lambda: shutil.which("false"))

    # when the cluster is started, the error names the step
    with pytest.raises(ServiceError, match="cluster create failed"):
        services.start_redis_cluster(tmp_path / "cluster", timeout=60)

    # then the three nodes that did start were all stopped
    assert len(started) == 3
    assert all(service.process.poll() is not None for service in started)


def test_the_cluster_starts_the_redis_6_way_with_the_bus_on_port_plus_10000(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a redis-server taken for 6.x (no --cluster-port: the bus listens on port + 10000)
    monkeypatch.setattr(services, "redis_server_major_version", lambda: 6)

    # when a cluster is started, it comes up ok and each node's bus listens on its port + 10000
    with services.redis_cluster() as cluster:
        client = RedisCluster(host="127.0.0.1", port=cluster.port)
        assert len(client.get_primaries()) == 3
        client.close()
        assert all(services.port_open(port + 10000) for port in cluster.ports)
    # and every node is stopped afterwards
    assert all(service.process.poll() is not None for service in cluster.nodes)
