"""The transaction index against a real redis-server, standalone and as a (one-node) Redis Cluster."""

import pytest
import redis

from fraud_adapters.tx_index import IndexedTransaction, TransactionIndex, index_ttl
from fraud_core import spec
from fraud_core.schemas import TransactionEvent
from tests.support.events import a_request

pytestmark = pytest.mark.integration


def _tx(trans_num: str, merchant: str = "fraud_Kirlin and Sons", second: int = 0) -> TransactionEvent:
    return a_request(
        transaction_id=trans_num, merchant_name=merchant, transaction_time=f"2020-01-01T00:00:{second:02d}Z"
    ).to_event()


def test_put_then_get_resolves_merchant_and_time_with_the_ttl(redis_client: "redis.Redis") -> None:
    # given an index with a 2-day label delay
    index = TransactionIndex(redis_client, label_delay=2 * spec.DAY)
    # when a batch is indexed
    assert index.put([_tx("a1"), _tx("a2", "shop\u00e9 \u00fcber", 5)]) == 2
    # then both resolve, an unknown id is absent, and nothing else is in the answer
    found = index.get(["a1", "a2", "nope", "a1"])
    assert found == {
        "a1": IndexedTransaction("a1", "fraud_Kirlin and Sons", 1_577_836_800),
        "a2": IndexedTransaction("a2", "shop\u00e9 \u00fcber", 1_577_836_805),
    }
    # and every key carries the hash tag and the TTL: delay + 30 days + 1 day
    keys = [bytes(k) for k in redis_client.scan_iter()]
    assert len(keys) == 2
    assert all(k.startswith(b"fs:{x:") for k in keys)
    ttl = redis_client.ttl("fs:{x:a1}")
    assert index_ttl(2 * spec.DAY) - 5 <= ttl <= index_ttl(2 * spec.DAY) == 33 * spec.DAY
    # and no card data is stored
    assert all(b"4111" not in (redis_client.get(k) or b"") for k in keys)


def test_redelivery_rewrites_the_same_value(redis_client: "redis.Redis") -> None:
    index = TransactionIndex(redis_client)
    index.put([_tx("r1")])
    before = redis_client.get("fs:{x:r1}")
    index.put([_tx("r1")])
    assert redis_client.get("fs:{x:r1}") == before
    assert redis_client.dbsize() == 1


def test_one_round_trip_per_batch(redis_client: "redis.Redis", monkeypatch: pytest.MonkeyPatch) -> None:
    # given an index whose write script the server already knows
    index = TransactionIndex(redis_client)
    index.put([_tx("warm")])
    sent: list[int] = []
    original = redis.connection.Connection.send_packed_command

    def counting(self: redis.connection.Connection, command: object, check_health: bool = True) -> None:
        sent.append(1)
        original(self, command, check_health)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting)
    # when a batch of 100 is written, then read
    index.put([_tx(f"b{k}") for k in range(100)])
    assert len(sent) == 1  # one script call
    assert len(index.get([f"b{k}" for k in range(100)])) == 100
    assert len(sent) == 2  # one pipeline of GETs


def test_works_on_a_redis_cluster(redis_cluster_client: "redis.RedisCluster") -> None:
    cluster = redis_cluster_client  # the suite's 3-master cluster (it waits for every node)
    # given the cluster client redis-py gives for a cluster-mode endpoint
    index = TransactionIndex(cluster, prefix="fsc")
    # when a batch whose keys fall into many slots is indexed and read back
    batch = [_tx(f"c{k}", f"merchant {k % 7}", k % 60) for k in range(200)]
    assert index.put(batch) == 200
    found = index.get([f"c{k}" for k in range(200)] + ["missing"])
    # then every transaction resolves
    assert len(found) == 200
    assert found["c8"] == IndexedTransaction("c8", "merchant 1", 1_577_836_808)
    slots = {cluster.keyslot(index.key(f"c{k}")) for k in range(200)}  # type: ignore[no-untyped-call]
    assert len(slots) > 150  # the hash tag spreads transactions over slots
    assert cluster.ttl(index.key("c0")) > 30 * spec.DAY
