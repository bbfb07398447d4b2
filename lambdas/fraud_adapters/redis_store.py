"""Redis feature store: the online rolling state of cards and merchants (layout 5).

Key format (``<p>`` is the prefix, default ``fs``). Every key carries a hash tag, so one card's
keys share a slot and one merchant's keys share a slot: each script call touches one slot, and
the same code runs on one redis-server and on Redis Cluster (ElastiCache cluster mode).

==============================  ===========  ====================================================
key                             type         content
==============================  ===========  ====================================================
``<p>:{c:<card_hash>}:e``       sorted set   card transactions; score = event time (epoch s),
                                             member = ``trans_num \\0`` then 56 bytes: ``t``,
                                             ``cents``, ``category_code`` (int64),
                                             ``merch_lat``, ``merch_long`` (float64), merchant
                                             hash (8 bytes), date of birth as a day number
                                             (int64, ``fraud_core.online.NO_DOB`` if none),
                                             little-endian; ties sort by trans_num like offline
``<p>:{c:<card_hash>}:p``       hash         card profile: ``t``, ``n`` (trans_num) and ``dob``
                                             of the card's latest event (by time, then
                                             trans_num) that had a date of birth; ``ot``,
                                             ``on``, ``od`` (day number): the same among the
                                             events below the card's retention point
``<p>:{c:<card_hash>}:t``       hash         time tiles of a busy card (more than
                                             ``TILE_THRESHOLD`` events): exact aggregates per
                                             day, hour and 10 minutes (``_TILE_LUA``); absent
                                             for an ordinary card
``<p>:{m:<merchant_hash>}:e``   sorted set   merchant transactions; score = event time,
                                             member = trans_num
``<p>:{m:<merchant_hash>}:l``   sorted set   label events; score = transaction time, member =
                                             ``trans_num␟arrival␟0|1`` (1 = fraud)
``<p>:{m:<merchant_hash>}:f``   sorted set   label chains whose latest label (greatest
                                             ``(arrival, is_fraud)``) is a fraud; score =
                                             transaction time, member = ``trans_num␟trans_t``
``<p>:{m:<merchant_hash>}:a``   sorted set   the arrival index: score = arrival, member = the
                                             label's member ``␟trans_t``
==============================  ===========  ====================================================

``card_hash`` is an HMAC-SHA256 of the card id with a secret key (card numbers never reach
Redis); ``merchant_hash`` is the BLAKE2b-64 of the merchant name (hex), so no free text is part
of a key. Layouts 1-3 (``c``, ``c2``, ``c3`` keys without hash tags) are never read and expire
with their TTL; ``fraudsys backfill`` rebuilds this layout from the event lake.

Retention is by event time: a card set keeps events within ``30d + slack`` of its newest event,
a merchant within ``delay + 30d + slack`` (``fraud_core.spec.HISTORY_SLACK`` is the out-of-order
tolerance). The newest event cannot be in the future: the updater refuses events dated beyond
the clock skew of their arrival (``fraud_core.timeguard``), so no single event can move a key's
retention point. An event older than its key's retention point is *late*: not applied, not a
duplicate, reported back to the caller (the updater counts and logs it). Every key also gets a
wall-clock TTL of its retention plus a day (EXPIRE) refreshed by each event of its card or
merchant, so idle keys disappear. The card profile lives ``spec.DOB_RETENTION`` (400 days) after
its dob's event, counted from the card's newest event, plus a day: as long as the offline rule
remembers the dob, whether the card stays active or goes idle.

Redelivery changes nothing: members are deterministic (a transaction's member is fixed by the
event, a label's by ``(trans_num, arrival, is_fraud)``, the redelivery rule of
``fraud_core.schemas.LabelEvent``), so ``ZADD`` of a redelivered event adds nothing and it is
counted as a duplicate. Label corrections are separate members.

Card reads cost the same whatever the card's activity: an ordinary card's read returns its
events of the last 30 days (~60: cheaper than tiles, and ~6.4 KB in Redis); once a card holds
more than ``TILE_THRESHOLD`` events, its tiles are built from them in the same script call and
kept up to date by every new event, and its read sums, inside Redis, the whole tiles of each
window piece and the events of the partial 10 minutes at the pieces' ends (a card with 30,000
transactions in 30 days: ~0.3 ms in Redis instead of ~60 ms, docs/benchmarks.md). Both reads
give the same exact aggregates (``fraud_core.online.CardSummary``); the property and parity
suites run on both layouts.

Merchant risk reads cost what the request's recency costs, not what the merchant's history
does: the frauds set counts, per risk window (``ZCOUNT``, O(log n)), the chains that are frauds
once every stored label has arrived; the read then returns only the chains with a label that
arrived at or after the request time (for a request scored now, the labels of the last
moments) with all their labels, and ``fraud_core.online`` corrects the counts with
``fraud_core.features.fraud_intervals``, the one rule both paths use. Layout 4 stores (before
the ``:f``/``:a`` keys) are rebuilt by ``fraudsys backfill``.

Writes: one script handles many cards (or merchants); a batch's calls are cut at
``WRITE_CHUNK`` events, and on a cluster grouped by hash slot so that each call touches one
slot; all calls of a batch go in one non-transactional pipeline per node (one round trip on a
single redis-server). ``fraudsys backfill`` writes the same state in bulk
(``fraud_adapters.bulk``): a key's members with one ZADD, then the same apply script, in its bulk
mode for cards, derives the rest from the set; both in one MULTI/EXEC. Reads: one script call for
the card and one for the merchant, in one pipeline.
The store needs a client with ``decode_responses=False`` (replies are bytes).
"""

import hashlib
import hmac
import struct
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from typing import Any, cast

import numpy as np
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from fraud_core import spec
from fraud_core.features import NO_FRAUD_INTERVALS, CardEvents, FraudIntervals, fraud_intervals
from fraud_core.online import NO_CARD_EVENTS, NO_DOB, CardSummary, OnlineState, card_events, latest_dob
from fraud_core.schemas import LabelEvent, TransactionEvent, to_cents

#: Server settings the layout is sized for: card members are 89 bytes (a 32-character trans_num,
#: NUL, 56 bytes), so with Redis' default (64) every card set is a skiplist (~12 KB for 60
#: events); at 128 small sets stay listpacks (~6.4 KB; bench.store_cost). Set by the local
#: redis-servers (local_stack.services) and the ElastiCache parameter group (cdk_app).
REDIS_SERVER_CONFIG: dict[str, str] = {"zset-max-listpack-value": "128"}

#: A card gets time tiles once it holds more events than this (in its 31 days): below it a read
#: returns the events (~60 for an ordinary card, cheaper than tiles and ~6 KB), above it a read
#: costs the same whatever the card's activity (docs/benchmarks.md, bench.store_cost).
TILE_THRESHOLD = 256

#: The most events one script call applies: Redis runs one script at a time, so a batch of a
#: hot key is cut into calls that each hold the server for a few milliseconds at most.
WRITE_CHUNK = 256

#: Card tiles (a busy card): exact aggregates of the card's events per UTC day, clock hour and
#: 10 minutes, so that a read sums ~100 tiles and the events of the partial 10 minutes where its
#: windows' edges fall, whatever the card's activity. A tile (field ``d<n>``, ``h<n>``, ``x<n>``:
#: the n-th day, hour or 10 minutes since the epoch) is a packed string: count, sum of cents,
#: the square sums A, B, C (cents = a * 2**16 + b, so cents**2 = A * 2**32 + B * 2**16 + C with
#: every term exact in a double), max cents, the category bit mask, the time and day number of
#: the latest event with a date of birth, then that event's trans_num (length-prefixed). Hours
#: and 10 minutes also keep the spec.DISTINCT_MERCHANTS_CAP smallest distinct merchant hashes
#: (``H<n>``, ``X<n>``: 8 bytes each, sorted). A tile is a function of its events, whatever
#: their order, and min(distinct, cap) over a window is exact from them. ``lo:<level>``: the
#: first tile kept (tiles exist only whole above the card's retention point).
_TILE_LUA = (
    f"\nlocal NO_DOB = {NO_DOB}\nlocal CAP = {spec.DISTINCT_MERCHANTS_CAP}\n"
    + """
local LEVELS = {{'d', 86400}, {'h', 3600}, {'x', 600}}
local TILE_HEAD = '<dddddddddH'
local function int(x) return string.format('%d', x) end
local function tile_decode(v)
  if not v then return {0, 0, 0, 0, 0, 0, 0, NO_DOB, NO_DOB, tn = ''} end
  local x = {struct.unpack(TILE_HEAD, v)}
  local tile = {x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8], x[9]}
  tile.tn = string.sub(v, x[11], x[11] + x[10] - 1)
  return tile
end
local function tile_encode(tile)
  return struct.pack(TILE_HEAD, tile[1], tile[2], tile[3], tile[4], tile[5], tile[6], tile[7],
    tile[8], tile[9], #tile.tn) .. tile.tn
end
local function set_decode(v)
  local codes = {}
  if v then for p = 1, #v - 7, 8 do codes[#codes + 1] = string.sub(v, p, p + 7) end end
  return codes
end
-- the CAP smallest distinct merchant hashes: the same whatever the order of the events
local function set_add(codes, code)
  for _, known in ipairs(codes) do if known == code then return end end
  if #codes < CAP or code < codes[#codes] then
    codes[#codes + 1] = code
    table.sort(codes)
    if #codes > CAP then codes[#codes] = nil end
  end
end
local function card_member(m)
  if #m < 57 then error(redis.error_reply('FSCORRUPT malformed card member')) end
  -- cents, category, merchant hash, dob day
  return struct.unpack('<i8', m, #m - 47), struct.unpack('<i8', m, #m - 39),
    string.sub(m, #m - 15, #m - 8), struct.unpack('<i8', m, #m - 7)
end
local function tile_add(tile, t, tn, c, category, day)
  local a = math.floor(c / 65536)
  local b = c - a * 65536
  tile[1] = tile[1] + 1
  tile[2] = tile[2] + c
  tile[3] = tile[3] + a * a
  tile[4] = tile[4] + 2 * a * b
  tile[5] = tile[5] + b * b
  if c > tile[6] then tile[6] = c end
  tile[7] = bit.bor(tile[7], bit.lshift(1, category))
  if day ~= NO_DOB and (tile[9] == NO_DOB or t > tile[8] or (t == tile[8] and tn > tile.tn)) then
    tile[8], tile[9], tile.tn = t, day, tn
  end
end
"""
)

# KEYS: (card set, card profile, card tiles) per card. ARGV: keep, ttl extra, dob retention, the
# tile threshold (a card gets tiles once it holds more events than this; negative: never), then
# per card the number of its events and per event t, member, trans_num, dob ('' if none).
# Returns one character per event: a(pplied), d(uplicate), l(ate).
# Bulk mode (``fraudsys backfill``, ``fraud_adapters.bulk``): -1 instead of a card's number of
# events says that its new members were added to its set by a ZADD just before, in the same
# MULTI/EXEC. The script then derives the card's other state from the set, as if those members
# had been its arguments: the profile from its latest member with a dob, the older profile from
# the members it trims, the tiles rebuilt from the kept members (a ZADD does not update them);
# it returns one 'l' per member it trimmed.
_APPLY_CARD_LUA = (
    _TILE_LUA
    + """
-- 'YYYY-MM-DD' of a day number (days since 1970-01-01; H. Hinnant's civil_from_days), as
-- Python's date.isoformat writes the dob of the apply arguments
local function iso_day(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)
  yoe = math.floor(yoe / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02d', y, m, d)
end
local keep, extra, dob_keep = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local threshold = tonumber(ARGV[4])
local out = {}
local i = 5
for g = 1, #KEYS, 3 do
  local events, profile, tiles = KEYS[g], KEYS[g + 1], KEYS[g + 2]
  local tiled = redis.call('EXISTS', tiles) == 1
  local n = tonumber(ARGV[i])
  i = i + 1
  local bulk = n < 0
  if bulk then n = 0 end
  local rebuild = false
  local top = redis.call('ZRANGE', events, -1, -1, 'WITHSCORES')[2]
  top = top and tonumber(top) or nil
  for k = i, i + 4 * (n - 1), 4 do
    local t = tonumber(ARGV[k])
    if top == nil or t > top then top = t end
  end
  -- the retention point: tiles only exist whole above it (one that starts below it is never
  -- read, so none is written: the tiles are a function of the kept events, whatever the order)
  local low = top - keep
  local tiles_of, sets_of = {}, {}  -- the tiles and merchant sets this call touched
  local function tiles_add(t, tn, m)
    local c, category, code, day = card_member(m)
    for _, level in ipairs(LEVELS) do
      local k = math.floor(t / level[2])
      if k * level[2] >= low then
        local field = level[1] .. int(k)
        local tile = tiles_of[field]
        if tile == nil then
          tile = tile_decode(redis.call('HGET', tiles, field))
          tiles_of[field] = tile
        end
        tile_add(tile, t, tn, c, category, day)
        if level[1] ~= 'd' then
          local set_field = string.upper(level[1]) .. int(k)
          local codes = sets_of[set_field]
          if codes == nil then
            codes = set_decode(redis.call('HGET', tiles, set_field))
            sets_of[set_field] = codes
          end
          set_add(codes, code)
        end
      end
    end
  end
  local saved = redis.call('HMGET', profile, 't', 'n', 'ot', 'on')
  local pt, pn = tonumber(saved[1] or ''), saved[2] or ''
  -- the older profile: the latest event with a dob among those below the retention point
  -- (trimmed or late), for a request dated before the profile's event with no dob in its window
  local ot, on, od = tonumber(saved[3] or ''), saved[4] or '', nil
  local function older(t, tn, m)
    local day = struct.unpack('<i8', m, #m - 7)
    if day ~= NO_DOB and (ot == nil or t > ot or (t == ot and tn > on)) then
      ot, on, od = t, tn, day
    end
  end
  for _ = 1, n do
    local t, member, trans_num, dob = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    i = i + 4
    if t < top - keep then
      out[#out + 1] = 'l'
      older(t, trans_num, member)
    elseif redis.call('ZADD', events, t, member) == 1 then
      out[#out + 1] = 'a'
      if tiled then tiles_add(t, trans_num, member) end
    else
      out[#out + 1] = 'd'
    end
    -- the profile follows the latest event with a dob by (time, trans_num), late ones included
    -- (it has no retention), so its content does not depend on the arrival order
    if dob ~= '' and (pt == nil or t > pt or (t == pt and trans_num > pn)) then
      redis.call('HSET', profile, 't', t, 'n', trans_num, 'dob', dob)
      pt, pn = t, trans_num
    end
  end
  if bulk then
    -- the profile, as the loop above: the set's latest member with a dob (the set's order is by
    -- time, then trans_num), members below the retention point included (they are trimmed below)
    local offset, size, done = 0, 1, false  -- pages of 1, 8, 64... members: the newest has one, usually
    while not done do
      local page = redis.call('ZREVRANGE', events, offset, offset + size - 1, 'WITHSCORES')
      for j = 1, #page, 2 do
        local m, t = page[j], tonumber(page[j + 1])
        if pt ~= nil and t < pt then done = true break end
        if #m < 57 then error(redis.error_reply('FSCORRUPT malformed card member in ' .. events)) end
        local day = struct.unpack('<i8', m, #m - 7)
        if day ~= NO_DOB then
          local trans_num = string.sub(m, 1, #m - 57)
          if pt == nil or t > pt or (t == pt and trans_num > pn) then
            redis.call('HSET', profile, 't', int(t), 'n', trans_num, 'dob', iso_day(day))
            pt, pn = t, trans_num
          end
          done = true
          break
        end
      end
      if #page < 2 * size then done = true end
      offset, size = offset + size, size * 8
    end
    if tiled then  -- the ZADD did not update the tiles: rebuilt below from the kept members
      redis.call('DEL', tiles)
      tiled, rebuild = false, true
    end
  end
  local floor = '(' .. string.format('%d', top - keep)
  local trimmed = redis.call('ZRANGEBYSCORE', events, '-inf', floor, 'WITHSCORES')
  for j = 1, #trimmed, 2 do
    local m = trimmed[j]
    older(tonumber(trimmed[j + 1]), string.sub(m, 1, #m - 57), m)
    if bulk then out[#out + 1] = 'l' end
  end
  if #trimmed > 0 then redis.call('ZREMRANGEBYSCORE', events, '-inf', floor) end
  if od ~= nil then
    redis.call('HSET', profile, 'ot', string.format('%d', ot), 'on', on, 'od', string.format('%d', od))
  end
  if not tiled and (rebuild or (threshold >= 0 and redis.call('ZCARD', events) > threshold)) then
    tiled = true  -- built once from the kept events, then kept up to date event by event
    local all = redis.call('ZRANGE', events, 0, -1, 'WITHSCORES')
    for j = 1, #all, 2 do
      local m = all[j]
      tiles_add(tonumber(all[j + 1]), string.sub(m, 1, #m - 57), m)
    end
    for _, level in ipairs(LEVELS) do
      redis.call('HSET', tiles, 'lo:' .. level[1], int(-math.floor(-low / level[2])))
    end
  end
  if tiled then
    local fields = {}
    for field, tile in pairs(tiles_of) do
      fields[#fields + 1] = field
      fields[#fields + 1] = tile_encode(tile)
    end
    for field, codes in pairs(sets_of) do
      fields[#fields + 1] = field
      fields[#fields + 1] = table.concat(codes)
    end
    for j = 1, #fields, 4096 do
      redis.call('HSET', tiles, unpack(fields, j, math.min(j + 4095, #fields)))
    end
    -- tiles that now start below the retention point go (each once: amortized per tile)
    for _, level in ipairs(LEVELS) do
      local name, size = level[1], level[2]
      local first, kept = tonumber(redis.call('HGET', tiles, 'lo:' .. name)), -math.floor(-low / size)
      if first < kept then
        local dead = {}
        for k = first, kept - 1 do
          dead[#dead + 1] = name .. int(k)
          if name ~= 'd' then dead[#dead + 1] = string.upper(name) .. int(k) end
        end
        for j = 1, #dead, 4096 do
          redis.call('HDEL', tiles, unpack(dead, j, math.min(j + 4095, #dead)))
        end
        redis.call('HSET', tiles, 'lo:' .. name, int(kept))
      end
    end
    redis.call('EXPIRE', tiles, keep + extra)
  end
  redis.call('EXPIRE', events, keep + extra)
  -- the dob is remembered dob_keep after its event (spec.DOB_RETENTION), counted from the card's
  -- newest event like the windows' retention
  if pt ~= nil then redis.call('EXPIRE', profile, math.max(dob_keep - (top - pt), 0) + extra) end
end
return table.concat(out)
"""
)

# KEYS: (transactions, labels, frauds, arrivals) per merchant. ARGV: keep, ttl extra, (two unused),
# then per merchant the number of its transactions and of its labels, per transaction t,
# trans_num, per label the transaction time, member. Returns one character per event, each
# merchant's transactions first: a(pplied), d(uplicate), l(ate). A new label also goes to the
# arrival index, and its chain's latest state (its label with the greatest (arrival, is_fraud))
# puts the chain in the frauds set or takes it out.
_APPLY_MERCHANT_LUA = """
local keep, extra = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
local i = 5
local function latest_state(labels, frauds, t, tn)
  local best_a, best_f = nil, nil
  local prefix = tn .. '\\031'
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', labels, t, t)) do
    if string.sub(m, 1, #prefix) == prefix then
      local a, f = string.match(m, '\\031(%d+)\\031([01])$')
      a, f = tonumber(a), tonumber(f)
      if best_a == nil or a > best_a or (a == best_a and f > best_f) then best_a, best_f = a, f end
    end
  end
  local chain = prefix .. string.format('%d', t)
  if best_f == 1 then redis.call('ZADD', frauds, t, chain) else redis.call('ZREM', frauds, chain) end
end
for g = 1, #KEYS, 4 do
  local txs, labels, frauds, arrivals = KEYS[g], KEYS[g + 1], KEYS[g + 2], KEYS[g + 3]
  local n_tx, n_labels = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  i = i + 2
  local top = redis.call('ZRANGE', txs, -1, -1, 'WITHSCORES')[2]
  top = top and tonumber(top) or nil
  for k = i, i + 2 * (n_tx - 1), 2 do
    local t = tonumber(ARGV[k])
    if top == nil or t > top then top = t end
  end
  for e = 1, n_tx + n_labels do
    local t, member = tonumber(ARGV[i]), ARGV[i + 1]
    i = i + 2
    if top ~= nil and t < top - keep then
      out[#out + 1] = 'l'
    elseif redis.call('ZADD', e > n_tx and labels or txs, t, member) == 1 then
      out[#out + 1] = 'a'
      if e > n_tx then
        local tn, arrival = string.match(member, '^(.*)\\031(%d+)\\031[01]$')
        if tn == nil then return redis.error_reply('FSCORRUPT malformed label member for ' .. labels) end
        redis.call('ZADD', arrivals, arrival, member .. '\\031' .. string.format('%d', t))
        latest_state(labels, frauds, t, tn)
      end
    else
      out[#out + 1] = 'd'
    end
  end
  if top ~= nil then
    local floor = '(' .. string.format('%d', top - keep)
    redis.call('ZREMRANGEBYSCORE', txs, '-inf', floor)
    -- labels leave the arrival index with their transaction (each once: amortized per label)
    local old = redis.call('ZRANGEBYSCORE', labels, '-inf', floor, 'WITHSCORES')
    for j = 1, #old, 2 do
      redis.call('ZREM', arrivals, old[j] .. '\\031' .. string.format('%d', tonumber(old[j + 1])))
    end
    redis.call('ZREMRANGEBYSCORE', labels, '-inf', floor)
    redis.call('ZREMRANGEBYSCORE', frauds, '-inf', floor)
    redis.call('ZREMRANGEBYSCORE', arrivals, '-inf', floor)
    redis.call('EXPIRE', txs, keep + extra)
  end
  for _, key in ipairs({labels, frauds, arrivals}) do
    if redis.call('EXISTS', key) == 1 then redis.call('EXPIRE', key, keep + extra) end
  end
end
return table.concat(out)
"""

# KEYS: card set, card profile, card tiles. ARGV: the card range (min, max), the request time.
# A card without tiles: returns the member tails, the profile's time and dob, and the latest dob
# before the range: when the profile cannot answer (its event is not before the request) and no
# event of the range has a dob, the first event with one below the range (kept, not yet
# trimmed), else the older profile. A tiled card: returns 'T', then per window (shortest first)
# count, sum, A, B, C, max; the previous event's time, merch_lat, merch_long ('' if none); the
# distinct merchants (capped) and the category mask of the distinct window; the latest dob before
# the request as (kind, time, dob): kind 'p' (the profile: dob is ISO), 'd' (a day number) or ''.
_READ_CARD_LUA = (
    "#!lua flags=no-writes"
    + _TILE_LUA
    + f"\nlocal WINDOWS = {{{', '.join(str(seconds) for _, seconds in spec.CARD_WINDOWS)}}}"
    + f"\nlocal DISTINCT = {spec.DISTINCT_WINDOW}"
    + """
local events, profile_key, tiles = KEYS[1], KEYS[2], KEYS[3]
local profile = redis.call('HMGET', profile_key, 't', 'dob', 'ot', 'od', 'on')
if redis.call('EXISTS', tiles) == 0 then
  local members = redis.call('ZRANGEBYSCORE', events, ARGV[1], ARGV[2])
  for j = 1, #members do
    local m = members[j]
    if #m < 57 then return redis.error_reply('FSCORRUPT malformed card member in ' .. events) end
    members[j] = string.sub(m, -56)
  end
  local older_t, older_d = profile[3] or '', profile[4] or ''
  if profile[1] and tonumber(profile[1]) >= tonumber(ARGV[3]) then
    local known = false
    for j = #members, 1, -1 do
      if struct.unpack('<i8', members[j], 49) ~= NO_DOB then known = true break end
    end
    local offset = 0
    while not known do
      local below = redis.call(
        'ZREVRANGEBYSCORE', events, '(' .. ARGV[1], '-inf', 'WITHSCORES', 'LIMIT', offset, 64)
      for j = 1, #below, 2 do
        local m = below[j]
        local day = struct.unpack('<i8', m, #m - 7)
        if day ~= NO_DOB then
          older_t, older_d, known = below[j + 1], string.format('%d', day), true
          break
        end
      end
      if #below < 128 then break end
      offset = offset + 64
    end
  end
  return {table.concat(members), profile[1] or '', profile[2] or '', older_t, older_d}
end

-- a tiled card: every window is cut into the pieces [t - w, t - w') between consecutive window
-- starts; a piece is covered by the largest whole tiles that fit (days, then hours, then 10
-- minutes at its edges) and the events of the partial 10 minutes at its two ends
local t = tonumber(ARGV[3])
local function checked(m)
  if #m < 57 then error(redis.error_reply('FSCORRUPT malformed card member in ' .. events)) end
  return m
end
local acc = {0, 0, 0, 0, 0, 0}
local seen, n_merchants, mask = {}, 0, 0
local function merchant(code)
  if n_merchants < CAP and not seen[code] then
    seen[code] = true
    n_merchants = n_merchants + 1
  end
end
local function raw(lo, hi, distinct)
  if lo >= hi then return end
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', events, int(lo), '(' .. int(hi))) do
    checked(m)
    local c = struct.unpack('<i8', m, #m - 47)
    local a = math.floor(c / 65536)
    local b = c - a * 65536
    acc[1], acc[2] = acc[1] + 1, acc[2] + c
    acc[3], acc[4], acc[5] = acc[3] + a * a, acc[4] + 2 * a * b, acc[5] + b * b
    if c > acc[6] then acc[6] = c end
    if distinct then
      mask = bit.bor(mask, bit.lshift(1, struct.unpack('<i8', m, #m - 39)))
      merchant(string.sub(m, #m - 15, #m - 8))
    end
  end
end
local function cover(lo, hi, level, distinct, fields, sets)
  if lo >= hi then return end
  if level > #LEVELS then return raw(lo, hi, distinct) end
  local name, size = LEVELS[level][1], LEVELS[level][2]
  local first, last = -math.floor(-lo / size), math.floor(hi / size)
  if first >= last then return cover(lo, hi, level + 1, distinct, fields, sets) end
  cover(lo, first * size, level + 1, distinct, fields, sets)
  for k = first, last - 1 do
    fields[#fields + 1] = name .. int(k)
    if distinct then sets[#sets + 1] = string.upper(name) .. int(k) end
  end
  cover(last * size, hi, level + 1, distinct, fields, sets)
end
-- tiles that start below the retention point do not exist: a request older than the slack
-- reads the events there instead (as an untiled card does)
local tiles_from = tonumber(redis.call('HGET', tiles, 'lo:x')) * 600
local function piece(lo, hi, distinct)
  if lo < tiles_from then
    local cut = math.min(hi, tiles_from)
    raw(lo, cut, distinct)
    lo = cut
  end
  local fields, sets = {}, {}
  -- the distinct window's pieces use hours and 10 minutes only (days keep no merchants)
  cover(lo, hi, distinct and 2 or 1, distinct, fields, sets)
  if #fields > 0 then
    for _, v in ipairs(redis.call('HMGET', tiles, unpack(fields))) do
      if v then
        local n, sum, sa, sb, sc, most, bits = struct.unpack('<ddddddd', v)
        acc[1], acc[2], acc[3] = acc[1] + n, acc[2] + sum, acc[3] + sa
        acc[4], acc[5] = acc[4] + sb, acc[5] + sc
        if most > acc[6] then acc[6] = most end
        if distinct then mask = bit.bor(mask, bits) end
      end
    end
  end
  if #sets > 0 and n_merchants < CAP then
    for _, v in ipairs(redis.call('HMGET', tiles, unpack(sets))) do
      if v then for p = 1, #v - 7, 8 do merchant(string.sub(v, p, p + 7)) end end
    end
  end
end
local out = {'T'}
local function push(...)
  for _, x in ipairs({...}) do out[#out + 1] = x end
end
local right = t
for _, w in ipairs(WINDOWS) do
  piece(t - w, right, t - w >= t - DISTINCT)
  for k = 1, 6 do out[#out + 1] = acc[k] end
  right = t - w
end
local prev = redis.call('ZREVRANGEBYSCORE', events, '(' .. int(t), int(t - WINDOWS[#WINDOWS]), 'LIMIT', 0, 1)
if prev[1] then
  local m = checked(prev[1])
  local lat, long = struct.unpack('<dd', m, #m - 31)
  push(int(struct.unpack('<i8', m, #m - 55)), string.format('%.17g', lat), string.format('%.17g', long))
else
  push('', '', '')
end
push(n_merchants, mask)
-- the date of birth: the profile when its event is before t, else the latest kept event with a
-- dob before t (the raw events of t's hour, then hour tiles back to the day, then day tiles),
-- else the older profile (events below the retention point), whichever is later
if profile[1] and tonumber(profile[1]) < t then
  push('p', profile[1], profile[2])
  return out
end
local best_t, best_n, best_d = nil, '', nil
local hour = math.floor(t / 3600)
local recent = redis.call('ZREVRANGEBYSCORE', events, '(' .. int(t), int(hour * 3600), 'WITHSCORES')
for j = 1, #recent, 2 do
  local m = checked(recent[j])
  local day = struct.unpack('<i8', m, #m - 7)
  if day ~= NO_DOB then
    best_t, best_n, best_d = tonumber(recent[j + 1]), string.sub(m, 1, #m - 57), day
    break
  end
end
if best_t == nil then
  local bounds = redis.call('HMGET', tiles, 'lo:h', 'lo:d')
  local fields = {}
  local first_day = math.floor(hour / 24)
  local lowest = math.max(first_day * 24, tonumber(bounds[1] or hour))
  for h = hour - 1, lowest, -1 do fields[#fields + 1] = 'h' .. int(h) end
  for d = first_day - 1, tonumber(bounds[2] or first_day), -1 do fields[#fields + 1] = 'd' .. int(d) end
  for j = 1, #fields, 256 do
    local values = redis.call('HMGET', tiles, unpack(fields, j, math.min(j + 255, #fields)))
    for k = 1, #values do
      if values[k] then
        local tile = tile_decode(values[k])
        if tile[9] ~= NO_DOB then best_t, best_n, best_d = tile[8], tile.tn, tile[9] break end
      end
    end
    if best_t ~= nil then break end
  end
end
local ot, od, on = tonumber(profile[3] or ''), profile[4], profile[5] or ''
if ot ~= nil and (best_t == nil or ot > best_t or (ot == best_t and on > best_n)) then
  best_t, best_d = ot, tonumber(od)
end
if best_t == nil then push('', '', '') else push('d', int(best_t), int(best_d)) end
return out
"""
)

# KEYS: merchant transactions, labels, frauds, arrivals. ARGV: the number of transaction counts
# and their (min, max) pairs, the number of fraud counts and their pairs, then the request time
# and the risk range [lo, hi). Returns the counts, then the label members and transaction times
# of every chain in the risk range with a label that arrived at or after the request time.
_READ_MERCHANT_LUA = """#!lua flags=no-writes
local out = {}
local i = 1
for _, key in ipairs({KEYS[1], KEYS[3]}) do
  local n = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, n do
    out[#out + 1] = redis.call('ZCOUNT', key, ARGV[i], ARGV[i + 1])
    i = i + 2
  end
end
local lo, hi = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
local seen, members, trans_t = {}, {}, {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], ARGV[i], '+inf')) do
  local tn, tt = string.match(m, '^(.*)\\031%d+\\031[01]\\031(%-?%d+)$')
  if tn == nil then return redis.error_reply('FSCORRUPT malformed arrival member in ' .. KEYS[4]) end
  local t = tonumber(tt)
  local chain = tn .. '\\031' .. tt
  if t >= lo and t < hi and not seen[chain] then
    seen[chain] = true
    local prefix = tn .. '\\031'
    for _, label in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], t, t)) do
      if string.sub(label, 1, #prefix) == prefix then
        members[#members + 1] = label
        trans_t[#trans_t + 1] = t
      end
    end
  end
end
out[#out + 1] = members
out[#out + 1] = trans_t
return out
"""
#: The fixed tail of a card member (layout 4).
CARD_MEMBER = struct.Struct("<qqqdd8sq")
_CARD_DTYPE = np.dtype(
    [
        ("t", "<i8"),
        ("cents", "<i8"),
        ("category", "<i8"),
        ("merch_lat", "<f8"),
        ("merch_long", "<f8"),
        ("merchant", "<i8"),
        ("dob_day", "<i8"),
    ]
)
if not _CARD_DTYPE.itemsize == CARD_MEMBER.size == 56:
    raise RuntimeError("the card member layout and its numpy dtype disagree")
_EPOCH = date(1970, 1, 1)
_APPLIED, _DUPLICATE, _LATE = b"a"[0], b"d"[0], b"l"[0]
_SEP = "\x1f"


class CorruptStateError(RuntimeError):
    """A key holds members this layout cannot read (written by hand or by foreign code)."""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    applied: int
    duplicates: int
    #: events older than their key's retention point: not applied (``late`` in the module doc)
    late: list[TransactionEvent | LabelEvent] = field(default_factory=list)


class CardHasher:
    """Keyed hash of card ids (HMAC-SHA256, 128 bits hex).

    The updater hashes each event's card three times (the id claim's digest, the archive, the
    store); the latest ``CACHE`` results are kept in memory (never at rest), so repeats cost a
    dictionary lookup instead of an HMAC (~1.7 us).
    """

    CACHE = 1 << 14

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the card hash key must be at least 16 bytes")
        self._key = key
        self._cached = lru_cache(maxsize=self.CACHE)(self._hash)

    def _hash(self, card_id: str) -> str:
        return hmac.new(self._key, card_id.encode(), hashlib.sha256).hexdigest()[:32]

    def __call__(self, card_id: str) -> str:
        return self._cached(card_id)


def merchant_hash(merchant: str) -> bytes:
    """The merchant's 8-byte BLAKE2b: in card members (equality only) and, as hex, in keys."""
    return hashlib.blake2b(merchant.encode(), digest_size=8).digest()


def dob_day(dob: date | None) -> int:
    return NO_DOB if dob is None else (dob - _EPOCH).days


def card_member(
    trans_num: str,
    t: int,
    cents: int,
    category: int,
    merch_lat: float,
    merch_long: float,
    merchant: str,
    dob: date | None = None,
) -> bytes:
    """``trans_num``, a NUL (below every character a trans_num may have), then the fixed tail."""
    tail = CARD_MEMBER.pack(t, cents, category, merch_lat, merch_long, merchant_hash(merchant), dob_day(dob))
    return trans_num.encode() + b"\0" + tail


def encode_card_member(event: TransactionEvent) -> bytes:
    return card_member(
        event.trans_num,
        event.event_time,
        to_cents(event.amt),
        spec.CATEGORY_CODE[event.category],
        event.merch_lat,
        event.merch_long,
        event.merchant,
        event.dob,
    )


def card_member_tails(
    t: np.ndarray[Any, Any],
    cents: np.ndarray[Any, Any],
    category: np.ndarray[Any, Any],
    merch_lat: np.ndarray[Any, Any],
    merch_long: np.ndarray[Any, Any],
    merchant: np.ndarray[Any, Any],
    dob_day: np.ndarray[Any, Any],
) -> np.ndarray[Any, Any]:
    """The fixed tails of many card members at once (``card_member``'s 56 bytes, one row each:
    ``.tobytes()`` gives them back to back). ``merchant``: ``merchant_hash_codes`` of the
    merchants; ``dob_day``: day numbers, ``NO_DOB`` where unknown."""
    rows = np.empty(len(t), dtype=_CARD_DTYPE)
    rows["t"] = t
    rows["cents"] = cents
    rows["category"] = category
    rows["merch_lat"] = merch_lat
    rows["merch_long"] = merch_long
    rows["merchant"] = merchant
    rows["dob_day"] = dob_day
    return rows


def merchant_hash_codes(merchants: Sequence[str]) -> np.ndarray[Any, Any]:
    """``merchant_hash`` of each merchant as the int64 a card member's tail holds (same 8 bytes)."""
    return np.frombuffer(b"".join(merchant_hash(m) for m in merchants), dtype="<i8")


def label_member_of(trans_num: str, arrival: int, is_fraud: bool) -> str:
    """A label's member: ``trans_num␟arrival␟0|1`` (1 = fraud)."""
    return f"{trans_num}{_SEP}{arrival}{_SEP}{int(is_fraud)}"


def label_member(label: LabelEvent) -> str:
    return label_member_of(label.trans_num, label.arrival_time, label.is_fraud)


def decode_card_rows(tails: bytes) -> np.ndarray[Any, Any]:
    if len(tails) % _CARD_DTYPE.itemsize:
        raise CorruptStateError(f"card member tails of {len(tails)} bytes: not a multiple of 56")
    return np.frombuffer(tails, dtype=_CARD_DTYPE)


def decode_card_events(rows: np.ndarray[Any, Any]) -> CardEvents:
    """Columns of a card's events from its decoded members (``decode_card_rows``: one
    ``frombuffer``, in Redis order, by time then trans_num); the columns are views."""
    if not len(rows):
        return NO_CARD_EVENTS
    return card_events(
        t=rows["t"],
        cents=rows["cents"],
        merchant=rows["merchant"],
        category=rows["category"],
        merch_lat=rows["merch_lat"],
        merch_long=rows["merch_long"],
    )


_N_WINDOWS = len(spec.CARD_WINDOWS)


def decode_card_summary(reply: Sequence[Any], t: int) -> tuple[CardSummary, date | None]:
    """A tiled card's read (``_READ_CARD_LUA``): its summary for ``t`` and its date of birth."""
    windows = reply[1 : 1 + 6 * _N_WINDOWS]
    count, total, sumsq, top = [], [], [], []
    for j in range(0, len(windows), 6):
        n, cents, a, b, c, most = (int(x) for x in windows[j : j + 6])
        count.append(n)
        total.append(cents)
        sumsq.append((a << 32) + (b << 16) + c)
        top.append(most)
    prev_t, prev_lat, prev_long, merchants, mask, kind, dob_t, dob_value = reply[1 + 6 * _N_WINDOWS :]
    has_prev = prev_t != b""
    summary = CardSummary(
        count=tuple(count),
        total=tuple(total),
        sumsq=tuple(sumsq),
        max_cents=tuple(top),
        prev_t=int(prev_t) if has_prev else -1,
        prev_merch_lat=float(prev_lat) if has_prev else 0.0,
        prev_merch_long=float(prev_long) if has_prev else 0.0,
        distinct_merchants=int(merchants),
        distinct_categories=int(mask).bit_count(),
    )
    dob: date | None = None
    if kind == b"p":
        dob = date.fromisoformat(dob_value.decode())
    elif kind == b"d":
        dob = _EPOCH + timedelta(days=int(dob_value))
    if kind and t - int(dob_t) > spec.DOB_RETENTION:
        dob = None
    return summary, dob


def decode_labels(members: Sequence[bytes], trans_t: Sequence[int]) -> FraudIntervals:
    """The fraud intervals of a merchant's label members (``trans_num␟arrival␟0|1``)."""
    if not members:
        return NO_FRAUD_INTERVALS
    codes: dict[tuple[bytes, int], int] = {}
    trans, arrival, fraud = [], [], []
    for member, trans_time in zip(members, trans_t, strict=True):
        parts = member.split(b"\x1f")
        if len(parts) != 3 or parts[2] not in (b"0", b"1") or not parts[1].isdigit():
            raise CorruptStateError(f"malformed label member {member[:80]!r}")
        # a label chain: one transaction as its labels place it (id and time, at this merchant)
        trans.append(codes.setdefault((parts[0], int(trans_time)), len(codes)))
        arrival.append(int(parts[1]))
        fraud.append(parts[2] == b"1")
    n = len(members)
    return fraud_intervals(
        key=np.zeros(n, dtype=np.int64),
        trans=np.array(trans, dtype=np.int64),
        trans_t=np.array(trans_t, dtype=np.int64),
        arrival=np.array(arrival, dtype=np.int64),
        is_fraud=np.array(fraud, dtype=bool),
    )


def _chunks[T](items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _CallPacker:
    """Packs key groups into script calls: each call's keys in one hash slot (any keys on one
    redis-server), at most ``write_chunk`` events per call."""

    def __init__(self, store: "RedisFeatureStore") -> None:
        self.store = store
        #: (script, slot) -> open call: keys, args, events
        self.open: dict[tuple[str, int], tuple[list[str], list[Any], list[Any]]] = {}
        self.done: list[tuple[tuple[str, list[str], list[Any]], list[Any]]] = []

    def add(self, script: str, keys: list[str], args: list[Any], events: Sequence[Any]) -> None:
        slot = (script, self.store.slot(keys[0]))
        current = self.open.get(slot)
        if current is not None and len(current[2]) + len(events) > self.store.write_chunk:
            self._close(slot)
            current = None
        if current is None:
            current = self.open[slot] = ([], self.store.script_head(script), [])
        current[0].extend(keys)
        current[1].extend(args)
        current[2].extend(events)

    def _close(self, slot: tuple[str, int]) -> None:
        keys, args, events = self.open.pop(slot)
        self.done.append(((slot[0], keys, args), events))

    def calls(self) -> tuple[list[tuple[str, list[str], list[Any]]], list[list[Any]]]:
        for slot in list(self.open):
            self._close(slot)
        return [call for call, _ in self.done], [events for _, events in self.done]


class RedisFeatureStore:
    """The online state behind the scorer (reads) and the feature updater (writes).

    ``client`` is a ``redis.Redis`` (one node) or a ``redis.cluster.RedisCluster``.
    """

    def __init__(
        self,
        client: "redis.Redis | RedisCluster",
        hasher: CardHasher,
        label_delay: int = spec.DEFAULT_LABEL_DELAY,
        prefix: str = "fs",
        write_chunk: int = WRITE_CHUNK,
        tile_threshold: int = TILE_THRESHOLD,
    ) -> None:
        encoder = client.get_encoder()
        if encoder.decode_responses:
            raise ValueError("the feature store needs a Redis client with decode_responses=False")
        self.client = client
        self.hasher = hasher
        self.label_delay = label_delay
        self.prefix = prefix
        self.write_chunk = write_chunk
        #: events above which a card is tiled; negative: never (the tiles' tests compare both)
        self.tile_threshold = tile_threshold
        self.card_keep = spec.MAX_CARD_WINDOW + spec.HISTORY_SLACK
        self.merchant_keep = label_delay + spec.MAX_MERCHANT_RISK_WINDOW + spec.HISTORY_SLACK
        self._scripts = {
            name: (source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())
            for name, source in (
                ("apply_card", _APPLY_CARD_LUA),
                ("apply_merchant", _APPLY_MERCHANT_LUA),
                ("read_card", _READ_CARD_LUA),
                ("read_merchant", _READ_MERCHANT_LUA),
            )
        }
        # merchant counts as [t + start, t + end): volume windows, then the delayed risk windows
        self._count_windows = [(-seconds, 0) for _, seconds in spec.MERCHANT_VOLUME_WINDOWS] + [
            (-label_delay - seconds, -label_delay) for _, seconds in spec.MERCHANT_RISK_WINDOWS
        ]

    def script(self, name: str) -> tuple[str, str]:
        """Source and SHA1 of a store script (``apply_card``, ``apply_merchant``, ``read_card``,
        ``read_merchant``), for writers that send its calls themselves (``fraud_adapters.bulk``)."""
        return self._scripts[name]

    def script_head(self, name: str) -> list[Any]:
        """The first four arguments of an ``apply_card`` or ``apply_merchant`` call."""
        keep = self.card_keep if name == "apply_card" else self.merchant_keep
        return [keep, spec.DAY, spec.DOB_RETENTION, self.tile_threshold]

    def card_keys(self, card_hash: str) -> list[str]:
        tag = f"{self.prefix}:{{c:{card_hash}}}"
        return [f"{tag}:e", f"{tag}:p", f"{tag}:t"]

    def merchant_keys(self, merchant: str) -> list[str]:
        tag = f"{self.prefix}:{{m:{merchant_hash(merchant).hex()}}}"
        return [f"{tag}:e", f"{tag}:l", f"{tag}:f", f"{tag}:a"]

    def _run(self, calls: Sequence[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """Script calls, pipelined per node: one round trip on one redis-server, one per node
        on a cluster (redis-py's cluster pipeline refuses EVALSHA, so each node's calls go
        through that node's connection). On a cluster, a node that cannot be reached (failover)
        makes the client re-read the slot map and the calls go once more; a call whose slot moved
        (resharding) goes once more through the cluster client, which follows the redirection."""
        client = self.client
        if not isinstance(client, RedisCluster):
            replies = self._pipeline(client, calls)
        else:
            try:
                replies = self._per_node(client, calls)
            except (redis.ConnectionError, redis.TimeoutError):
                client.nodes_manager.initialize()  # the new primaries of the failed node's slots
                replies = self._per_node(client, calls)
            for i, reply in enumerate(replies):
                if isinstance(reply, redis.exceptions.AskError):  # MovedError is an AskError
                    replies[i] = self._redirected(client, calls[i])
        for reply in replies:
            if isinstance(reply, Exception):
                if isinstance(reply, redis.ResponseError) and str(reply).startswith("FSCORRUPT"):
                    raise CorruptStateError(str(reply).removeprefix("FSCORRUPT "))
                raise reply
        return replies

    def _per_node(self, client: RedisCluster, calls: Sequence[tuple[str, list[str], list[Any]]]) -> list[Any]:
        by_node: dict[str, list[int]] = defaultdict(list)
        nodes = {}
        for i, (_, keys, _) in enumerate(calls):
            node = client.get_node_from_key(keys[0])  # type: ignore[no-untyped-call]
            nodes[node.name] = node
            by_node[node.name].append(i)
        replies: list[Any] = [None] * len(calls)
        for name, indices in by_node.items():
            connection = client.get_redis_connection(nodes[name])
            part = self._pipeline(connection, [calls[i] for i in indices])
            for i, reply in zip(indices, part, strict=True):
                replies[i] = reply
        return replies

    def _redirected(self, client: RedisCluster, call: tuple[str, list[str], list[Any]]) -> Any:
        """One call through the cluster client (it follows MOVED/ASK), loading the script where
        the slot's new node does not know it."""
        name, keys, args = call
        source, sha = self._scripts[name]
        try:
            return client.evalsha(sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            client.script_load(source)  # on every primary
            return client.evalsha(sha, len(keys), *keys, *args)

    def _send(self, client: "redis.Redis", calls: Sequence[tuple[str, list[str], list[Any]]]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for name, keys, args in calls:
            pipe.evalsha(self._scripts[name][1], len(keys), *keys, *args)
        return pipe.execute(raise_on_error=False)

    def _pipeline(
        self, client: "redis.Redis", calls: Sequence[tuple[str, list[str], list[Any]]]
    ) -> list[Any]:
        """Calls in one non-transactional pipeline to one node; errors are returned, not raised.
        Scripts the node does not know yet (first use, restart, failover) are loaded and the
        calls that failed for it are sent once more."""
        replies = self._send(client, calls)
        missing = [i for i, r in enumerate(replies) if isinstance(r, redis.exceptions.NoScriptError)]
        if missing:  # only these ran nothing: resending the others would apply them twice
            for name in {calls[i][0] for i in missing}:
                client.script_load(self._scripts[name][0])
            for i, reply in zip(missing, self._send(client, [calls[i] for i in missing]), strict=True):
                replies[i] = reply
        return replies

    def apply(
        self,
        transactions: Sequence[TransactionEvent],
        labels: Sequence[LabelEvent],
        cards_hashed: bool = False,
    ) -> ApplyResult:
        """Apply a batch of events: idempotent, order-independent, one pipeline.

        ``cards_hashed``: the events' ``cc_num`` already holds the card's keyed hash (events read
        back from the lake, ``fraudsys backfill``)."""
        cards: dict[str, list[TransactionEvent]] = defaultdict(list)
        merchants: dict[str, tuple[list[TransactionEvent], list[LabelEvent]]] = defaultdict(lambda: ([], []))
        for tx in transactions:
            cards[tx.cc_num if cards_hashed else self.hasher(tx.cc_num)].append(tx)
            merchants[tx.merchant][0].append(tx)
        for label in labels:
            merchants[label.merchant][1].append(label)
        packer = _CallPacker(self)
        for card, events in cards.items():
            keys = self.card_keys(card)
            for part in _chunks(events, self.write_chunk):
                args: list[Any] = [len(part)]
                for tx in part:
                    dob = tx.dob.isoformat() if tx.dob else ""
                    args += [tx.event_time, encode_card_member(tx), tx.trans_num, dob]
                packer.add("apply_card", keys, args, part)
        for merchant, (txs, labs) in merchants.items():
            keys = self.merchant_keys(merchant)
            # transactions first (their newest time sets the retention point), then labels
            items: list[TransactionEvent | LabelEvent] = [*txs, *labs]
            for share in _chunks(items, self.write_chunk):
                share_tx = [e for e in share if isinstance(e, TransactionEvent)]
                args = [len(share_tx), len(share) - len(share_tx)]
                for tx in share_tx:
                    args += [tx.event_time, tx.trans_num]
                for e in share[len(share_tx) :]:
                    args += [e.event_time, label_member(cast(LabelEvent, e))]
                packer.add("apply_merchant", keys, args, share)
        calls, owners = packer.calls()
        replies = self._run(calls)
        if not any(b"l" in reply for reply in replies):  # the usual case: count per reply
            applied = duplicates = 0
            for (name, _, _), reply, owner in zip(calls, replies, owners, strict=True):
                if name == "apply_card":
                    applied += reply.count(b"a")
                    duplicates += reply.count(b"d")
                else:  # merchant calls count their labels only (transactions: by their card)
                    for event, status in zip(owner, reply, strict=True):
                        if isinstance(event, LabelEvent):
                            applied += status == _APPLIED
                            duplicates += status == _DUPLICATE
            return ApplyResult(applied=applied, duplicates=duplicates)
        # a transaction is late if its card or its merchant refused it, else its card call tells
        outcome: dict[int, int] = {}
        by_id: dict[int, TransactionEvent | LabelEvent] = {}
        for (name, _, _), reply, owner in zip(calls, replies, owners, strict=True):
            for event, status in zip(owner, reply, strict=True):
                key = id(event)
                by_id[key] = event
                counted = name == "apply_card" or isinstance(event, LabelEvent)
                if outcome.get(key) != _LATE and (counted or status == _LATE):
                    outcome[key] = status
        statuses = list(outcome.values())
        return ApplyResult(
            applied=statuses.count(_APPLIED),
            duplicates=statuses.count(_DUPLICATE),
            late=[by_id[key] for key, status in outcome.items() if status == _LATE],
        )

    def slot(self, key: str) -> int:
        """The key's hash slot on a cluster; 0 for every key on one redis-server, where one
        script call may touch any keys."""
        return key_slot(key.encode()) if isinstance(self.client, RedisCluster) else 0

    def read(self, card_id: str, merchant: str, t: int) -> OnlineState:
        """The state for a request at time ``t``: two script calls in one pipeline."""
        delayed = t - self.label_delay
        count_args: list[Any] = [len(self._count_windows)]
        for start, end in self._count_windows:
            count_args += [t + start, f"({t + end}"]
        count_args.append(len(spec.MERCHANT_RISK_WINDOWS))  # chains whose latest label is a fraud
        for _, seconds in spec.MERCHANT_RISK_WINDOWS:
            count_args += [delayed - seconds, f"({delayed}"]
        count_args += [t, delayed - spec.MAX_MERCHANT_RISK_WINDOW, delayed]
        card_reply, merchant_reply = self._run(
            [
                ("read_card", self.card_keys(self.hasher(card_id)), [t - spec.MAX_CARD_WINDOW, f"({t}", t]),
                ("read_merchant", self.merchant_keys(merchant), count_args),
            ]
        )
        n_volume, n_risk = len(spec.MERCHANT_VOLUME_WINDOWS), len(spec.MERCHANT_RISK_WINDOWS)
        counts = merchant_reply[:-2]
        if card_reply[0] == b"T":
            events, summary, dob = NO_CARD_EVENTS, *decode_card_summary(card_reply, t)
        else:
            tails, profile_t, profile_dob, older_t, older_day = card_reply
            rows = decode_card_rows(tails)  # once: the events and their dates of birth
            profile = (int(profile_t), date.fromisoformat(profile_dob.decode())) if profile_t else None
            older = (int(older_t), _EPOCH + timedelta(days=int(older_day))) if older_t else None
            events, summary = decode_card_events(rows), None
            dob = latest_dob(rows["t"], rows["dob_day"], profile, t, older)
        return OnlineState(
            card_events=events,
            card_summary=summary,
            dob=dob,
            merchant_volume=tuple(counts[:n_volume]),
            merchant_risk=tuple(counts[n_volume : n_volume + n_risk]),
            latest_frauds=tuple(counts[n_volume + n_risk :]),
            labels=decode_labels(merchant_reply[-2], merchant_reply[-1]),
        )

    def ping(self) -> bool:
        return bool(self.client.ping())
