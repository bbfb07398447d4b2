"""Redis feature store: the online rolling state of cards and merchants.

Key format (``<p>`` is the prefix, default ``fs``; Redis with cluster mode disabled):

============================  ===========  =====================================================
key                           type         content
============================  ===========  =====================================================
``<p>:c:<card_hash>``         sorted set   card transactions; score = event time (epoch s),
                                           member = ``trans_num␟cents␟merchant␟category_code␟
                                           merch_lat␟merch_long`` (``␟`` = ``\\x1f``), so ties
                                           sort by trans_num like the offline pipeline
``<p>:cp:<card_hash>``        hash         card profile: ``dob`` (ISO date) when an event had it
``<p>:m:<merchant>``          sorted set   merchant transactions; score = event time,
                                           member = trans_num
``<p>:mf:<merchant>``         sorted set   fraud labels; score = transaction time,
                                           member = ``trans_num␟label_arrival_time``
``<p>:seen:t:<trans_num>``    string       dedupe marker of an applied transaction
``<p>:seen:l:<trans_num>``    string       dedupe marker of an applied label
============================  ===========  =====================================================

``card_hash`` is an HMAC-SHA256 of the card id with a secret key: card numbers never appear
in Redis. Retention is by event time, not wall-clock: after each batch a card set keeps events
within ``30d + slack`` of its newest event, a merchant set within ``delay + 30d + slack``
(``fraud_core.spec.HISTORY_SLACK`` is the out-of-order tolerance). Every key also gets a
wall-clock TTL of its retention plus a day (EXPIRE), so idle cards and merchants disappear;
dedupe markers live as long as the card retention, so a redelivery in that time changes nothing.

Writes go through one Lua script per batch (atomic per batch, one round trip); reads are one
non-transactional pipeline per request (one round trip).
"""

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, cast

import redis

from fraud_core import spec
from fraud_core.online import CardEvent, OnlineState
from fraud_core.schemas import LabelEvent, TransactionEvent, to_cents

SEP = "\x1f"

_APPLY_LUA = """
local p = ARGV[1]
local card_keep = tonumber(ARGV[2])
local merchant_keep = tonumber(ARGV[3])
local seen_ttl = tonumber(ARGV[4])
local key_ttl_extra = tonumber(ARGV[5])
local n_tx = tonumber(ARGV[6])
local touched_cards, touched_merchants, touched_frauds = {}, {}, {}
local applied, duplicates = 0, 0
local i = 7
for _ = 1, n_tx do
  local trans_num, card, merchant = ARGV[i], ARGV[i+1], ARGV[i+2]
  local t, member, dob = ARGV[i+3], ARGV[i+4], ARGV[i+5]
  i = i + 6
  if redis.call('SET', p .. ':seen:t:' .. trans_num, '1', 'NX', 'EX', seen_ttl) then
    redis.call('ZADD', p .. ':c:' .. card, t, member)
    redis.call('ZADD', p .. ':m:' .. merchant, t, trans_num)
    if dob ~= '' then
      redis.call('HSET', p .. ':cp:' .. card, 'dob', dob)
      redis.call('EXPIRE', p .. ':cp:' .. card, card_keep + key_ttl_extra)
    end
    touched_cards[card] = true
    touched_merchants[merchant] = true
    applied = applied + 1
  else
    duplicates = duplicates + 1
  end
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
local function trim(key, keep)
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2]
  if newest then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%d', tonumber(newest) - keep))
    redis.call('EXPIRE', key, keep + key_ttl_extra)
  end
end
for card in pairs(touched_cards) do trim(p .. ':c:' .. card, card_keep) end
for merchant in pairs(touched_merchants) do trim(p .. ':m:' .. merchant, merchant_keep) end
for merchant in pairs(touched_frauds) do trim(p .. ':mf:' .. merchant, merchant_keep) end
return {applied, duplicates}
"""


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


def encode_card_member(event: TransactionEvent) -> str:
    return SEP.join(
        (
            event.trans_num,
            str(to_cents(event.amt)),
            event.merchant,
            str(spec.CATEGORY_CODE[event.category]),
            repr(event.merch_lat),
            repr(event.merch_long),
        )
    )


def decode_card_member(member: str, score: float) -> CardEvent:
    trans_num, cents, merchant, category, merch_lat, merch_long = member.split(SEP)
    return CardEvent(
        t=int(score),
        trans_num=trans_num,
        cents=int(cents),
        merchant=merchant,
        category=int(category),
        merch_lat=float(merch_lat),
        merch_long=float(merch_long),
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
        self.client = client
        self.hasher = hasher
        self.label_delay = label_delay
        self.prefix = prefix
        self.card_keep = spec.MAX_CARD_WINDOW + spec.HISTORY_SLACK
        self.merchant_keep = label_delay + spec.MAX_MERCHANT_RISK_WINDOW + spec.HISTORY_SLACK
        self._apply = client.register_script(_APPLY_LUA)

    def apply(self, transactions: Sequence[TransactionEvent], labels: Sequence[LabelEvent]) -> ApplyResult:
        """Apply a batch of events in one round trip; idempotent and order-independent."""
        args: list[str | int] = [self.prefix, self.card_keep, self.merchant_keep, self.card_keep, spec.DAY]
        args.append(len(transactions))
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
        """The state for a request at time ``t``: one pipelined round trip."""
        p, card = self.prefix, self.hasher(card_id)
        delayed = t - self.label_delay
        pipe = self.client.pipeline(transaction=False)
        pipe.zrangebyscore(f"{p}:c:{card}", t - spec.MAX_CARD_WINDOW, f"({t}", withscores=True)
        pipe.hget(f"{p}:cp:{card}", "dob")
        for _, seconds in spec.MERCHANT_VOLUME_WINDOWS:
            pipe.zcount(f"{p}:m:{merchant}", t - seconds, f"({t}")
        for _, seconds in spec.MERCHANT_RISK_WINDOWS:
            pipe.zcount(f"{p}:m:{merchant}", delayed - seconds, f"({delayed}")
        pipe.zrangebyscore(
            f"{p}:mf:{merchant}", delayed - spec.MAX_MERCHANT_RISK_WINDOW, f"({delayed}", withscores=True
        )
        replies: list[Any] = pipe.execute()
        n_volume = len(spec.MERCHANT_VOLUME_WINDOWS)
        card_rows, dob = replies[0], replies[1]
        counts = [int(c) for c in replies[2:-1]]
        labels: list[tuple[str, float]] = replies[-1]
        arrivals = [int(member.rsplit(SEP, 1)[1]) for member, _ in labels]
        return OnlineState(
            card_events=[decode_card_member(member, score) for member, score in card_rows],
            dob=date.fromisoformat(dob) if dob else None,
            merchant_volume=tuple(counts[:n_volume]),
            merchant_risk=tuple(counts[n_volume:]),
            label_trans_t=[int(score) for _, score in labels],
            label_arrival_t=arrivals,
        )

    def ping(self) -> bool:
        return bool(self.client.ping())
