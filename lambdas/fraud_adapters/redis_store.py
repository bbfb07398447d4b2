"""Redis feature store: the online rolling state of cards and merchants.

Key format (``<p>`` is the prefix, default ``fs``; Redis with cluster mode disabled):

============================  ===========  =====================================================
key                           type         content
============================  ===========  =====================================================
``<p>:c3:<card_hash>``        sorted set   card transactions; score = event time (epoch s),
                                           member = ``trans_num \\0`` then 48 bytes: ``t``,
                                           ``cents``, ``category_code`` (int64),
                                           ``merch_lat``, ``merch_long`` (float64),
                                           merchant hash (8 bytes), little-endian; ties sort
                                           by trans_num like the offline pipeline
``<p>:cp:<card_hash>``        hash         card profile: ``dob`` (ISO date) when an event had it
``<p>:m:<merchant>``          sorted set   merchant transactions; score = event time,
                                           member = trans_num
``<p>:mf:<merchant>``         sorted set   fraud labels; score = transaction time,
                                           member = ``trans_num␟label_arrival_time``
``<p>:seen:l:<trans_num>``    string       dedupe marker of an applied label
============================  ===========  =====================================================

Layout 3: card members are binary (``c3``). The read script returns the fixed 48-byte tails of
a card's members as one string, which decodes with one ``numpy.frombuffer`` (the text members
of layout 2 took ~0.13 ms to parse per request). The merchant is the first 8 bytes of its
BLAKE2b hash: the features only compare merchants for equality (distinct merchants in 24 h),
and two of one card's merchants collide with probability ~2**-64. Layouts 1 (``c``) and 2
(``c2``) are never read and expire with their TTL. A layout change gets a new key name, so old
and new code never parse each other's members during a rolling deploy.

The store needs a client with ``decode_responses=False`` (replies are bytes).

``card_hash`` is an HMAC-SHA256 of the card id with a secret key: card numbers never appear
in Redis. Retention is by event time, not wall-clock: after each batch a card set keeps events
within ``30d + slack`` of its newest event, a merchant set within ``delay + 30d + slack``
(``fraud_core.spec.HISTORY_SLACK`` is the out-of-order tolerance). Every key also gets a
wall-clock TTL of its retention plus a day (EXPIRE), so idle cards and merchants disappear.

Redelivery changes nothing. Transactions need no marker: their sorted-set members are
deterministic (a redelivered event adds no member, ``ZADD`` returns 0, and it is counted as a
duplicate), and an event older than a set's retention is skipped, as the end-of-batch trim would
remove it. A conflicting event with a known ``trans_num`` and other content is not detected:
``trans_num`` identifies one transaction. Labels keep a marker per ``trans_num`` (as long as
the card retention) because a label's member carries its arrival time.

Writes go through one Lua script per batch (atomic per batch, one round trip); reads through
one read-only Lua script per request (one round trip, one command: ~25% less client CPU than
a pipeline of seven commands). A card member carries its own event time, so the read asks
for members only: scores (``WITHSCORES``) would double the server's and the client's work for
the largest reply.
"""

import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, cast

import numpy as np
import redis

from fraud_core import spec
from fraud_core.features import CardEvents
from fraud_core.online import NO_CARD_EVENTS, OnlineState, card_events
from fraud_core.schemas import LabelEvent, TransactionEvent, to_cents

_APPLY_LUA = """
local p = ARGV[1]
local card_keep = tonumber(ARGV[2])
local merchant_keep = tonumber(ARGV[3])
local seen_ttl = tonumber(ARGV[4])
local key_ttl_extra = tonumber(ARGV[5])
local n_tx = tonumber(ARGV[6])
local touched_cards, touched_merchants, touched_frauds = {}, {}, {}
local applied, duplicates = 0, 0
local newest, dobs = {}, {}
-- The newest event time of a set: read once per batch, then kept up to date here, so that
-- the end-of-batch trim needs no second read. An event older than the newest minus the
-- retention would be trimmed at once: it is skipped.
local function add(key, keep, t, member)
  local top = newest[key]
  if top == nil then
    top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2]
    top = top and tonumber(top) or false
  end
  if top and t < top - keep then
    newest[key] = top
    return 0
  end
  newest[key] = (top and top > t) and top or t
  return redis.call('ZADD', key, t, member)
end
local i = 7
for _ = 1, n_tx do
  local trans_num, card, merchant = ARGV[i], ARGV[i+1], ARGV[i+2]
  local t, member, dob = tonumber(ARGV[i+3]), ARGV[i+4], ARGV[i+5]
  i = i + 6
  local added = add(p .. ':c3:' .. card, card_keep, t, member)
  added = added + add(p .. ':m:' .. merchant, merchant_keep, t, trans_num)
  -- sorted sets are idempotent: a redelivered event adds no member, so it is a duplicate
  if added > 0 then
    if dob ~= '' then dobs[card] = dob end
    touched_cards[card] = true
    touched_merchants[merchant] = true
    applied = applied + 1
  else
    duplicates = duplicates + 1
  end
end
for card, dob in pairs(dobs) do
  redis.call('HSET', p .. ':cp:' .. card, 'dob', dob)
  redis.call('EXPIRE', p .. ':cp:' .. card, card_keep + key_ttl_extra)
end
local n_labels = tonumber(ARGV[i])
i = i + 1
for _ = 1, n_labels do
  local trans_num, merchant, t, arrival = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3]
  i = i + 4
  if redis.call('SET', p .. ':seen:l:' .. trans_num, '1', 'NX', 'EX', seen_ttl) then
    redis.call('ZADD', p .. ':mf:' .. merchant, t, trans_num .. '\\31' .. arrival)
    touched_frauds[merchant] = true
    applied = applied + 1
  else
    duplicates = duplicates + 1
  end
end
local function trim(key, keep, top)
  if top == nil then
    top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2]
    top = top and tonumber(top)
  end
  if top then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%d', top - keep))
    redis.call('EXPIRE', key, keep + key_ttl_extra)
  end
end
for card in pairs(touched_cards) do
  local key = p .. ':c3:' .. card
  trim(key, card_keep, newest[key])
end
for merchant in pairs(touched_merchants) do
  local key = p .. ':m:' .. merchant
  trim(key, merchant_keep, newest[key])
end
for merchant in pairs(touched_frauds) do trim(p .. ':mf:' .. merchant, merchant_keep) end
return {applied, duplicates}
"""


# KEYS: card set, card profile, merchant set, merchant frauds. ARGV: the card range (min, max),
# the number of merchant counts and their (min, max) pairs, then the label range.
_READ_LUA = """#!lua flags=no-writes
local members = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2])
for j = 1, #members do
  local m = members[j]
  if #m < 49 then return redis.error_reply('FSCORRUPT malformed card member in ' .. KEYS[1]) end
  members[j] = string.sub(m, -48)
end
local out = {table.concat(members), redis.call('HGET', KEYS[2], 'dob') or ''}
local n = tonumber(ARGV[3])
local i = 4
for _ = 1, n do
  out[#out + 1] = redis.call('ZCOUNT', KEYS[3], ARGV[i], ARGV[i + 1])
  i = i + 2
end
-- fraud labels as two integer arrays: transaction times, arrival times
local labels = redis.call('ZRANGEBYSCORE', KEYS[4], ARGV[i], ARGV[i + 1], 'WITHSCORES')
local trans_t, arrival_t = {}, {}
for j = 1, #labels, 2 do
  local arrival = tonumber(string.match(labels[j], '\\31(%d+)$'))
  if not arrival then return redis.error_reply('FSCORRUPT malformed label member in ' .. KEYS[4]) end
  trans_t[#trans_t + 1] = tonumber(labels[j + 1])
  arrival_t[#arrival_t + 1] = arrival
end
out[#out + 1] = trans_t
out[#out + 1] = arrival_t
return out
"""
#: The fixed tail of a card member (layout 3).
CARD_MEMBER = struct.Struct("<qqqdd8s")
_CARD_DTYPE = np.dtype(
    [
        ("t", "<i8"),
        ("cents", "<i8"),
        ("category", "<i8"),
        ("merch_lat", "<f8"),
        ("merch_long", "<f8"),
        ("merchant", "<i8"),
    ]
)
if not _CARD_DTYPE.itemsize == CARD_MEMBER.size == 48:
    raise RuntimeError("the card member layout and its numpy dtype disagree")


class CorruptStateError(RuntimeError):
    """A key holds members this layout cannot read (written by hand or by foreign code)."""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    applied: int
    duplicates: int


class CardHasher:
    """Keyed hash of card ids (HMAC-SHA256, 128 bits hex)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the card hash key must be at least 16 bytes")
        self._key = key

    def __call__(self, card_id: str) -> str:
        return hmac.new(self._key, card_id.encode(), hashlib.sha256).hexdigest()[:32]


def card_member(
    trans_num: str, t: int, cents: int, category: int, merch_lat: float, merch_long: float, merchant: str
) -> bytes:
    """``trans_num``, a NUL (below every character a trans_num may have), then the fixed tail."""
    merchant_hash = hashlib.blake2b(merchant.encode(), digest_size=8).digest()
    return (
        trans_num.encode()
        + b"\0"
        + CARD_MEMBER.pack(t, cents, category, merch_lat, merch_long, merchant_hash)
    )


def encode_card_member(event: TransactionEvent) -> bytes:
    return card_member(
        event.trans_num,
        event.event_time,
        to_cents(event.amt),
        spec.CATEGORY_CODE[event.category],
        event.merch_lat,
        event.merch_long,
        event.merchant,
    )


def _layout2_to_3(member: str) -> bytes:
    """A layout 2 text member (``trans_num␟cents␟merchant␟category_code␟merch_lat␟merch_long␟t``,
    ``␟`` = ``\\x1f``) as the layout 3 member of the same event."""
    trans_num, cents, merchant, category, lat, long, t = member.split("\x1f")
    return card_member(trans_num, int(t), int(cents), int(category), float(lat), float(long), merchant)


def decode_card_events(tails: bytes) -> CardEvents:
    """Columns of a card's events from its members' fixed tails, in Redis order (by time, then
    trans_num): one ``frombuffer``, the columns are views."""
    if not tails:
        return NO_CARD_EVENTS
    if len(tails) % _CARD_DTYPE.itemsize:
        raise CorruptStateError(f"card member tails of {len(tails)} bytes: not a multiple of 48")
    rows = np.frombuffer(tails, dtype=_CARD_DTYPE)
    return card_events(
        t=rows["t"],
        cents=rows["cents"],
        merchant=rows["merchant"],
        category=rows["category"],
        merch_lat=rows["merch_lat"],
        merch_long=rows["merch_long"],
    )


class RedisFeatureStore:
    """The online state behind the scorer (reads) and the feature updater (writes)."""

    def __init__(
        self,
        client: "redis.Redis",
        hasher: CardHasher,
        label_delay: int = spec.DEFAULT_LABEL_DELAY,
        prefix: str = "fs",
    ) -> None:
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("the feature store needs a Redis client with decode_responses=False")
        self.client = client
        self.hasher = hasher
        self.label_delay = label_delay
        self.prefix = prefix
        self.card_keep = spec.MAX_CARD_WINDOW + spec.HISTORY_SLACK
        self.merchant_keep = label_delay + spec.MAX_MERCHANT_RISK_WINDOW + spec.HISTORY_SLACK
        self._apply = client.register_script(_APPLY_LUA)
        self._read = client.register_script(_READ_LUA)
        # merchant counts as [t + start, t + end): volume windows, then the delayed risk windows
        self._count_windows = [(-seconds, 0) for _, seconds in spec.MERCHANT_VOLUME_WINDOWS] + [
            (-label_delay - seconds, -label_delay) for _, seconds in spec.MERCHANT_RISK_WINDOWS
        ]

    def apply(self, transactions: Sequence[TransactionEvent], labels: Sequence[LabelEvent]) -> ApplyResult:
        """Apply a batch of events in one round trip; idempotent and order-independent."""
        args: list[str | int | bytes] = [self.prefix, self.card_keep, self.merchant_keep, self.card_keep]
        args += [spec.DAY, len(transactions)]
        for tx in transactions:
            args += [
                tx.trans_num,
                self.hasher(tx.cc_num),
                tx.merchant,
                tx.event_time,
                encode_card_member(tx),
                tx.dob.isoformat() if tx.dob else "",
            ]
        frauds = [label for label in labels if label.is_fraud]
        args.append(len(frauds))
        for label in frauds:
            args += [label.trans_num, label.merchant, label.event_time, label.arrival_time]
        applied, duplicates = cast(list[int], self._apply(keys=[], args=args))
        return ApplyResult(applied=applied, duplicates=duplicates + len(labels) - len(frauds))

    def read(self, card_id: str, merchant: str, t: int) -> OnlineState:
        """The state for a request at time ``t``: one round trip, one command."""
        p, card = self.prefix, self.hasher(card_id)
        delayed = t - self.label_delay
        args: list[str | int] = [t - spec.MAX_CARD_WINDOW, f"({t}", len(self._count_windows)]
        for start, end in self._count_windows:
            args += [t + start, f"({t + end}"]
        args += [delayed - spec.MAX_MERCHANT_RISK_WINDOW, f"({delayed}"]
        keys = [f"{p}:c3:{card}", f"{p}:cp:{card}", f"{p}:m:{merchant}", f"{p}:mf:{merchant}"]
        try:
            replies = cast(list[Any], self._read(keys=keys, args=args))
        except redis.ResponseError as exc:
            if str(exc).startswith("FSCORRUPT"):
                raise CorruptStateError(str(exc).removeprefix("FSCORRUPT ")) from exc
            raise
        n_volume = len(spec.MERCHANT_VOLUME_WINDOWS)
        counts = replies[2:-2]
        return OnlineState(
            card_events=decode_card_events(replies[0]),
            dob=date.fromisoformat(replies[1].decode()) if replies[1] else None,
            merchant_volume=tuple(counts[:n_volume]),
            merchant_risk=tuple(counts[n_volume:]),
            label_trans_t=np.array(replies[-2], dtype=np.int64),
            label_arrival_t=np.array(replies[-1], dtype=np.int64),
        )

    def ping(self) -> bool:
        return bool(self.client.ping())

    def migrate_card_sets(self, batch: int = 500) -> tuple[int, int]:
        """Rewrite layout 2 card sets (``c2``, text members) as layout 3 (``c3``): keys, members.

        Run once when upgrading from layout 2 (``fraudsys migrate-store``), before or right after
        the new scorer goes live: without it, cards look new to the scorer until their sets refill
        (up to 30 days). Each set keeps its scores and TTL; the ``c2`` key is deleted after its
        ``c3`` set is written, so a rerun resumes where an interrupted one stopped and events
        the new updater already added to ``c3`` stay (ZADD of the same member is a no-op).
        """
        keys = members = 0
        prefix = f"{self.prefix}:c2:"
        for key in self.client.scan_iter(match=f"{prefix}*", count=batch):
            name = key.decode()
            rows = cast(list[tuple[bytes, float]], self.client.zrange(name, 0, -1, withscores=True))
            ttl_ms = self.client.pttl(name)
            mapping = {_layout2_to_3(member.decode()): score for member, score in rows}
            target = f"{self.prefix}:c3:{name.removeprefix(prefix)}"
            # the longer of the two TTLs (the new updater may have written the c3 set already)
            keep_ms = max(
                ttl_ms if ttl_ms > 0 else (self.card_keep + spec.DAY) * 1000, self.client.pttl(target)
            )
            pipe = self.client.pipeline(transaction=True)
            if mapping:
                pipe.zadd(target, mapping)
                pipe.pexpire(target, keep_ms)
            pipe.delete(name)
            pipe.execute()
            keys, members = keys + 1, members + len(mapping)
        return keys, members
