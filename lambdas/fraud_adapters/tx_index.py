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
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pydantic_core
import redis

from fraud_core import spec
from fraud_core.schemas import TransactionEvent

if TYPE_CHECKING:
    import pyarrow as pa

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
        digest = hashlib.blake2b(content_json(event, card), digest_size=8).hexdigest()
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


def content_json(event: TransactionEvent, card: str) -> bytes:
    """What the content digest hashes: the event as JSON without ``received_at``, with ``card``
    (the keyed hash) as ``cc_num``."""
    return event.model_copy(update={"cc_num": card}).model_dump_json(exclude={"received_at"}).encode()


#: ``TransactionEvent``'s fields in its JSON (``content_json``), and the lake column each comes from
_CONTENT_COLUMNS = {
    "kind": None,
    "trans_num": "trans_num",
    "cc_num": "card",
    "merchant": "merchant",
    "category": "category",
    "amt": "amt",
    "transaction_time": "event_time",
    "lat": "lat",
    "long": "long",
    "city_pop": "city_pop",
    "merch_lat": "merch_lat",
    "merch_long": "merch_long",
    "dob": "dob",
}
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def bulk_value_parts(table: "pa.Table") -> list[Any]:
    """``TransactionIndex.encode`` of many transactions at once (``fraudsys backfill``), as the
    pieces (arrays of one value per row, or bytes) whose concatenation is each row's value.
    ``table`` has the lake's columns (``fraud_adapters.lake``: ``card`` is the keyed hash,
    ``event_time`` whole seconds, ``dob`` a date) and at least one row. The JSON of
    ``content_json`` is assembled column by column from pydantic's own serialization of the
    values (floats as one ``to_json`` of the column, text that needs escaping value by value),
    then hashed row by row; the first row is checked against ``content_json``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    fields = [name for name in TransactionEvent.model_fields if name != "received_at"]
    if fields != list(_CONTENT_COLUMNS):
        raise RuntimeError("TransactionEvent's fields changed: update tx_index._CONTENT_COLUMNS")
    n = table.num_rows
    pieces: list[Any] = []  # text, or arrays of one value per row

    def text(value: str) -> None:
        if pieces and isinstance(pieces[-1], str):
            pieces[-1] += value
        else:
            pieces.append(value)

    comma = False  # the last piece's values end with the comma before the next field
    for i, (name, column) in enumerate(_CONTENT_COLUMNS.items()):
        text(("{" if i == 0 else "" if comma else ",") + f'"{name}":')
        comma = False
        if column is None:
            text(pydantic_core.to_json("transaction").decode())
            continue
        values = table[column].combine_chunks()
        if name == "transaction_time":
            # 'YYYY-MM-DD hh:mm:ss' (event times are 1971..2200), written as pydantic writes UTC
            when = pc.cast(pc.cast(values, pa.timestamp("s")), pa.string())
            text('"')
            pieces.append(pc.replace_substring(when, " ", "T", max_replacements=1))
            text('Z"')
        elif name == "dob":  # a date is its ISO text (date32: years 1..9999, zero-padded) in quotes
            quoted = pc.binary_join_element_wise('"', pc.cast(values, pa.string()), '"', "")
            pieces.append(pc.fill_null(quoted, "null"))
        elif name == "city_pop":
            pieces.append(pc.cast(values, pa.string()))
        elif pa.types.is_floating(values.type):
            pieces.append(_json_floats(values))
            comma = True
        elif _plain_text(values):  # JSON quotes it as is
            text('"')
            pieces.append(values)
            text('"')
        else:
            pieces.append(_json_distinct(values))
    text("}")
    binary = [p.cast(pa.binary()) if isinstance(p, pa.Array) else p.encode() for p in pieces]
    content = pc.binary_join_element_wise(*binary, b"")
    first = TransactionEvent.model_construct(
        trans_num=table["trans_num"][0].as_py(),
        cc_num=table["card"][0].as_py(),
        merchant=table["merchant"][0].as_py(),
        category=table["category"][0].as_py(),
        amt=table["amt"][0].as_py(),
        transaction_time=datetime.fromtimestamp(table["event_time"][0].as_py(), UTC),
        lat=table["lat"][0].as_py(),
        long=table["long"][0].as_py(),
        city_pop=table["city_pop"][0].as_py(),
        merch_lat=table["merch_lat"][0].as_py(),
        merch_long=table["merch_long"][0].as_py(),
        dob=table["dob"][0].as_py(),
        received_at=None,
    )
    if content[0].as_py() != content_json(first, first.cc_num):
        raise RuntimeError(f"bulk index values disagree with TransactionIndex.encode: {content[0]!r}")
    hexes = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(_digests(content))])
    t = pc.cast(table["event_time"].combine_chunks(), pa.string()).cast(pa.binary())
    merchant = table["merchant"].combine_chunks().cast(pa.binary())
    return [t, _SEP.encode(), hexes.cast(pa.binary()), _SEP.encode(), merchant]


def bulk_values(table: "pa.Table") -> "pa.Array":
    """``TransactionIndex.encode`` of many transactions at once: ``bulk_value_parts`` joined."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return pa.array([], pa.binary())
    return pc.binary_join_element_wise(*bulk_value_parts(table), b"")


def _digests(content: "pa.Array") -> bytes:
    """The hex BLAKE2b-64 of each value, 16 bytes each, back to back."""
    offsets = np.frombuffer(
        content.buffers()[1], dtype=np.int32, count=len(content) + 1, offset=4 * content.offset
    )
    data = memoryview(content.buffers()[2])
    start = hashlib.blake2b(digest_size=8)  # copied: cheaper than building one per value
    out = []
    bounds = offsets.tolist()
    for first, last in itertools.pairwise(bounds):
        hashed = start.copy()
        hashed.update(data[first:last])
        out.append(hashed.digest())
    nibbles = np.frombuffer(b"".join(out), dtype=np.uint8)
    hexes = np.empty(2 * len(nibbles), dtype=np.uint8)
    hexes[0::2], hexes[1::2] = _HEX[nibbles >> 4], _HEX[nibbles & 15]
    return hexes.tobytes()


def _json_floats(values: "pa.Array") -> "pa.Array":
    """Each float as pydantic's JSON writes it, with the comma that follows it (one ``to_json`` of
    the column's values, cut after each comma)."""
    import pyarrow as pa

    if values.null_count:
        raise ValueError("the index values need every float of a transaction")
    floats = values.to_numpy(zero_copy_only=False)
    body = np.frombuffer(pydantic_core.to_json(floats.tolist()), dtype=np.uint8)
    offsets = np.empty(len(floats) + 1, dtype=np.int32)
    offsets[0], offsets[-1] = 1, len(body)  # after '[', and the ']' becomes the last comma
    offsets[1:-1] = np.flatnonzero(body == ord(",")) + 1
    body = body.copy()
    body[-1] = ord(",")
    return pa.BinaryArray.from_buffers(
        pa.binary(), len(floats), [None, pa.py_buffer(offsets), pa.py_buffer(body)]
    )


def _plain_text(values: "pa.Array") -> bool:
    """Whether JSON writes every value as it is, in quotes: printable ASCII but the quote and the
    backslash."""
    if values.null_count or not len(values):
        return False
    offsets = np.frombuffer(
        values.buffers()[1], dtype=np.int32, count=len(values) + 1, offset=4 * values.offset
    )
    data = np.frombuffer(values.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    outside = (data < 0x20) | (data > 0x7E) | (data == ord('"')) | (data == ord("\\"))
    return not outside.any()


def _json_distinct(values: "pa.Array") -> "pa.Array":
    """Each value as pydantic's JSON writes it, serialized once per distinct value."""
    import pyarrow as pa

    encoded = values.dictionary_encode()
    texts = [pydantic_core.to_json(v).decode() for v in encoded.dictionary.to_pylist()]
    return pa.array(texts, pa.string()).take(encoded.indices)
