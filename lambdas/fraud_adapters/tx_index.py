"""Transaction index: resolves a label's transaction id to the transaction's merchant and time.

Written by the feature updater for every transaction it applies, read by the label intake
(``POST /labels``, ``fraudsys labels import``), which needs both fields to write a
``LabelEvent``.

Key format (``<p>`` is the prefix, default ``fs``)::

    <p>:{x:<trans_num>}   string   "<transaction time, epoch s>\\x1f<content digest>\\x1f<merchant name>"

The hash tag ``{x:<trans_num>}`` puts each key in the slot of its transaction id, so the keys
spread over a Redis Cluster and every command touches one slot. On a ``redis.RedisCluster``
client, writes and reads are non-transactional pipelines (one ``SETEX`` or ``GET`` per key),
which redis-py splits per node. On a ``redis.Redis`` client (cluster mode disabled) a batch is
written by one Lua script instead (one command, one reply): measured on 500 entries, 0.25 ms of
client CPU against ~3 ms for the pipeline, whose per-command packing and reply parsing in
redis-py cost about as much as the feature store's whole apply (docs/architecture.md).
The value holds no card data (a label does not need the card: the updater places labels by
merchant and transaction time) and a merchant name never holds ``\\x1f`` (``schemas.Name``).

TTL (wall clock, from the write): ``label_delay + 30 days + 1 day`` (the merchant retention of
the feature store). A label for a transaction older than that can no longer change any feature
(the transaction has left every merchant risk window of every later request), so the intake may
forget it: such a label is an ``unknown_transaction``. A redelivered transaction rewrites the
same value and refreshes the TTL.

The first transaction with an id owns it (``claim``): the updater claims every transaction it
accepts before archiving and applying it, and a *different* transaction under a known id (another
card, amount, time... : the content digest differs) is refused as a conflict, so no request can
alter another transaction's features by reusing its id; the lake reader keeps the same one (the
earliest arrival). The digest is a BLAKE2b-64 of the event without its ``received_at`` stamp,
with the card id replaced by its keyed hash.

Measured with ``MEMORY USAGE`` on redis-server 7.0 (jemalloc): see docs/architecture.md.
"""

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from fraud_core import spec
from fraud_core.schemas import TransactionEvent

_SEP = "\x1f"
# KEYS: the entries' keys; ARGV: the TTL, then one value per key. Cluster mode disabled only:
# the keys of a batch lie in many slots.
_PUT_LUA = """
local ttl = ARGV[1]
for i, key in ipairs(KEYS) do
  redis.call('SETEX', key, ttl, ARGV[i + 1])
end
return #KEYS
"""
# The same arguments; claims each id: writes it if absent, refreshes it if it holds the same value,
# leaves it otherwise. Returns the 1-based positions of the conflicts.
_CLAIM_LUA = """
local ttl = ARGV[1]
local conflicts = {}
for i, key in ipairs(KEYS) do
  local value = ARGV[i + 1]
  if not redis.call('SET', key, value, 'NX', 'EX', ttl) then
    if redis.call('GET', key) == value then
      redis.call('EXPIRE', key, ttl)
    else
      conflicts[#conflicts + 1] = i
    end
  end
end
return conflicts
"""


@dataclass(frozen=True, slots=True)
class IndexedTransaction:
    """What the label intake needs of a transaction."""

    trans_num: str
    merchant: str
    transaction_time: int  # epoch seconds


def index_ttl(label_delay: int) -> int:
    """Seconds an entry lives: as long as a label for it can change a feature."""
    return label_delay + spec.MAX_MERCHANT_RISK_WINDOW + spec.HISTORY_SLACK


class TransactionIndex:
    """``trans_num`` -> (merchant, transaction time) in Redis, for ``redis.Redis`` or
    ``redis.RedisCluster`` clients (either ``decode_responses`` setting)."""

    def __init__(
        self,
        client: "redis.Redis | redis.RedisCluster",
        label_delay: int = spec.DEFAULT_LABEL_DELAY,
        prefix: str = "fs",
        card_key: Callable[[str], str] | None = None,
    ) -> None:
        """``card_key``: the keyed card hash, for the content digest (the card id otherwise)."""
        self.client = client
        self.prefix = prefix
        self.ttl = index_ttl(label_delay)
        self.card_key = card_key
        single = not isinstance(client, redis.RedisCluster)
        self._put_script = client.register_script(_PUT_LUA) if single else None
        self._claim_script = client.register_script(_CLAIM_LUA) if single else None

    def key(self, trans_num: str) -> str:
        return f"{self.prefix}:{{x:{trans_num}}}"

    def encode(self, event: TransactionEvent, cards_hashed: bool = False) -> str:
        """The entry's value; ``cards_hashed``: ``cc_num`` already holds the keyed card hash."""
        hashed = cards_hashed or self.card_key is None
        card = event.cc_num if hashed or self.card_key is None else self.card_key(event.cc_num)
        content = event.model_copy(update={"cc_num": card}).model_dump_json(exclude={"received_at"})
        digest = hashlib.blake2b(content.encode(), digest_size=8).hexdigest()
        return f"{event.event_time}{_SEP}{digest}{_SEP}{event.merchant}"

    def claim(self, transactions: Sequence[TransactionEvent]) -> list[TransactionEvent]:
        """Index the batch, first transaction per id wins; returns the transactions refused
        because another transaction holds their id (a redelivery is not refused)."""
        if not transactions:
            return []
        keys = [self.key(tx.trans_num) for tx in transactions]
        values = [self.encode(tx) for tx in transactions]
        if self._claim_script is not None:
            positions = self._claim_script(keys=keys, args=[self.ttl, *values])
            return [transactions[int(i) - 1] for i in positions]
        pipe = self._pipeline()
        for key, value in zip(keys, values, strict=True):
            pipe.execute_command("SET", key, value, "NX", "EX", self.ttl)
        taken = [i for i, ok in enumerate(pipe.execute()) if not ok]
        if not taken:
            return []
        pipe = self._pipeline()
        for i in taken:
            pipe.get(keys[i])
        conflicts: list[int] = []
        same: list[int] = []
        for i, raw in zip(taken, pipe.execute(), strict=True):
            held = raw.decode() if isinstance(raw, bytes) else raw
            (same if held == values[i] else conflicts).append(i)
        if same:
            pipe = self._pipeline()
            for i in same:
                pipe.expire(keys[i], self.ttl)
            pipe.execute()
        return [transactions[i] for i in conflicts]

    def put(self, transactions: Sequence[TransactionEvent], cards_hashed: bool = False) -> int:
        """Index a batch in one round trip (per node on a cluster). Returns the number of entries
        written; a redelivered transaction rewrites its own value and refreshes its TTL."""
        if not transactions:
            return 0
        keys = [self.key(tx.trans_num) for tx in transactions]
        values = [self.encode(tx, cards_hashed) for tx in transactions]
        if self._put_script is not None:
            self._put_script(keys=keys, args=[self.ttl, *values])
            return len(transactions)
        pipe = self._pipeline()
        for key, value in zip(keys, values, strict=True):
            pipe.execute_command("SETEX", key, self.ttl, value)  # not pipe.set(): no option handling
        pipe.execute()
        return len(transactions)

    def get(self, trans_nums: Iterable[str]) -> dict[str, IndexedTransaction]:
        """The indexed transactions among ``trans_nums`` (unknown ids are absent): one pipeline."""
        wanted = list(dict.fromkeys(trans_nums))
        if not wanted:
            return {}
        pipe = self._pipeline()
        for trans_num in wanted:
            pipe.get(self.key(trans_num))
        found: dict[str, IndexedTransaction] = {}
        for trans_num, raw in zip(wanted, pipe.execute(), strict=True):
            if raw is None:
                continue
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            t, _, merchant = text.split(_SEP, 2)
            found[trans_num] = IndexedTransaction(trans_num, merchant, int(t))
        return found

    def _pipeline(self) -> Any:
        return self.client.pipeline(transaction=False)  # both client kinds; never MULTI/EXEC
