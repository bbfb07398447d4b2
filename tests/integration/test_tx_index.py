"""The transaction index against a real redis-server, standalone and as a (one-node) Redis Cluster."""

import pytest
import redis

from fraud_adapters.tx_index import GENERATION, IndexedTransaction, TransactionIndex, index_ttl
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
    # and every key is a bucket of the current generation, with the hash tag, living at least
    # delay + 30 days + 1 day from now and at most a generation (14 days) more
    keys = [bytes(k) for k in redis_client.scan_iter()]
    assert 1 <= len(keys) <= 2
    assert all(k.startswith(b"fs:{xi:") and k.endswith(b"}:%d" % index.generation()) for k in keys)
    ttl = redis_client.ttl(index.key("a1"))
    assert index_ttl(2 * spec.DAY) - 5 <= ttl <= index_ttl(2 * spec.DAY) + GENERATION
    assert index_ttl(2 * spec.DAY) == 33 * spec.DAY
    # and no card data is stored
    assert all(b"4111" not in str(redis_client.hvals(k)).encode() for k in keys)


def test_buckets_hold_many_entries_and_generations_are_read_newest_first(
    redis_client: "redis.Redis",
) -> None:
    # given an index of 4 buckets whose clock is set by the test
    now = [1_800_000_000.0]
    index = TransactionIndex(redis_client, label_delay=2 * spec.DAY, buckets=4, clock=lambda: now[0])
    index.put([_tx(f"g{k}", second=k) for k in range(40)])
    # then 40 entries live in at most 4 keys (small hashes: listpacks)
    keys = list(redis_client.scan_iter())
    assert len(keys) <= 4
    assert sum(redis_client.hlen(k) for k in keys) == 40
    assert {redis_client.object("encoding", k) for k in keys} == {b"listpack"}
    # when a generation later a claim redelivers one and brings a new one, and another id is
    # reused by a different transaction
    now[0] += GENERATION
    redelivered, new, forged = _tx("g1", second=1), _tx("n1"), _tx("g2", "another merchant", 2)
    assert index.claim([redelivered, new, forged]) == [forged]
    # then the redelivery is written again into the current generation (its life starts again),
    # the forged one is refused, and every entry still resolves
    assert redis_client.hget(index.key("g1"), "g1") is not None
    assert redis_client.hget(index.key("g2"), "g2") is None
    assert index.get(["g2"])["g2"].merchant == "fraud_Kirlin and Sons"
    assert len(index.get([f"g{k}" for k in range(40)] + ["n1"])) == 41
    # and a generation that can no longer hold a live entry (its keys expired: EXPIREAT) is not
    # read: ttl / GENERATION + 1 generations on, the first one is past
    assert 3 <= len(index.generations()) <= 4  # ttl 33 days: the current one and 2-3 older ones
    now[0] += 3 * GENERATION
    assert index.get(["g3"]) == {}


def test_redelivery_rewrites_the_same_value(redis_client: "redis.Redis") -> None:
    index = TransactionIndex(redis_client)
    index.put([_tx("r1")])
    before = redis_client.hgetall(index.key("r1"))
    index.put([_tx("r1")])
    assert redis_client.hgetall(index.key("r1")) == before
    assert redis_client.dbsize() == 1
    # and a claim of the same transaction is no conflict, of a different one is
    assert index.claim([_tx("r1")]) == []
    assert index.claim([_tx("r1", second=9)]) == [_tx("r1", second=9)]


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
    assert len(sent) == 1  # one pipeline: an HSET and an EXPIREAT per bucket
    assert len(index.get([f"b{k}" for k in range(100)])) == 100
    assert len(sent) == 2  # one pipeline of HMGETs
    assert index.claim([_tx(f"b{k}") for k in range(100)] + [_tx("new")]) == []
    assert len(sent) == 3  # one script call


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
    assert len(slots) > 150  # the hash tag spreads the buckets over slots
    assert cluster.ttl(index.key("c0")) > 30 * spec.DAY
    # and claims: a redelivery is no conflict, a reused id is, a new one is written
    forged = _tx("c5", "someone else", 5)
    assert index.claim([_tx("c5", "merchant 5", 5), forged, _tx("d1"), _tx("d1")]) == [forged]
    assert index.get(["d1", "c5"])["c5"].merchant == "merchant 5"
