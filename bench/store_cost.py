"""The online store's cost per key (issue 14): memory per active card, reads of hot keys, and
the longest single script call while a large batch is applied.

* memory: 1,000 cards with 60 transactions each over 30 days, through ``store.apply``; the
  median ``MEMORY USAGE`` of a card's keys (events + profile), with the server's default
  ``zset-max-listpack-value`` (64) and with 128 (what ``fraudsys local up`` and the ElastiCache
  parameter group set);
* hot keys: ``store.read`` for a card with 30,000 transactions in 30 days, and for a merchant
  with 1,000,000 transactions and 50,000 fraud labels in its windows (filled with the members
  ``store.apply`` writes, by ``ZADD`` for speed);
* the longest script call (``SLOWLOG``, threshold 0) while one batch of 10,000 events of one
  card is applied, and while 10,000 events of 1,000 cards are.

    uv run python -m bench.store_cost [--json out.json]
"""

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from bench.common import Report, Samples, command_line, finish, load_average, parser
from fraud_adapters.redis_store import TILE_THRESHOLD, CardHasher, RedisFeatureStore
from fraud_core import spec
from fraud_core.schemas import LabelEvent, TransactionEvent
from tests.support.services import redis_server

T0 = 1_590_969_600  # 2020-06-01
HASHER = CardHasher(b"bench-store-cost-card-hash-key")


def _tx(card: str, merchant: str, i: int, t: int, dob: bool = True) -> TransactionEvent:
    return TransactionEvent(
        trans_num=f"{card[-6:]}{i:026x}",
        cc_num=card,
        merchant=merchant,
        category="grocery_pos",
        amt=12.34 + i % 100,
        transaction_time=datetime.fromtimestamp(t, UTC),
        lat=40.0,
        long=-75.0,
        city_pop=1000,
        merch_lat=40.1,
        merch_long=-75.1,
        dob=datetime(1980, 1, 1).date() if dob else None,
    )


def _apply_all(store: RedisFeatureStore, events: Sequence[TransactionEvent], size: int = 500) -> None:
    for start in range(0, len(events), size):
        store.apply(events[start : start + size], [])


def _read_times(store: RedisFeatureStore, card: str, merchant: str, t: int, n: int) -> tuple[Samples, str]:
    """Client-side samples of ``store.read`` and, from SLOWLOG, the p50 / p99 of the time Redis
    spent in the script that read the card (``{c:``) or the merchant (``{m:``) key, whichever
    costs more: the part that a busy key makes grow and that holds Redis for other clients."""
    client = store.client
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 4 * n + 16)
    client.slowlog_reset()
    samples = Samples()
    for _ in range(n):
        started, cpu = time.perf_counter_ns(), time.thread_time_ns()
        store.read(card, merchant, t)
        samples.cpu.append(time.thread_time_ns() - cpu)
        samples.wall.append(time.perf_counter_ns() - started)
    entries = client.slowlog_get(4 * n + 16)
    client.config_set("slowlog-log-slower-than", 10_000)
    server = []
    for tag in (b"{c:", b"{m:"):
        durations = [
            e["duration"] / 1000.0
            for e in entries
            if e["command"].startswith(b"EVALSHA") and tag in e["command"]
        ]
        if durations:
            server.append((float(np.percentile(durations, 99)), float(np.median(durations))))
    p99, p50 = max(server)
    return samples, f"{p50:.3f} / {p99:.3f}"


def _longest_script_ms(client: Any) -> float:
    entries = client.slowlog_get(1024)
    evals = [e["duration"] for e in entries if e["command"].split(b" ")[0].upper() == b"EVALSHA"]
    return max(evals, default=0) / 1000.0


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser("The online store's cost per key: memory per card, hot-key reads, longest script call.")
    p.add_argument("--reads", type=int, default=300, help="timed reads per hot key")
    args = p.parse_args(argv)
    report = Report("Online store cost per key", command=command_line("bench.store_cost", argv))
    report.values["load average at start (1/5/15 min)"] = load_average()
    rng = np.random.default_rng(args.seed)

    with redis_server() as service:
        import redis

        client = redis.Redis(port=service.port)
        store = RedisFeatureStore(client, HASHER)

        # memory per active card: 60 transactions in 30 days
        cards = [f"4{n:015d}" for n in range(1000)]
        for listpack_value in (64, 128):
            client.flushall()
            client.config_set("zset-max-listpack-value", listpack_value)
            events = [
                _tx(
                    card, f"merchant {int(rng.integers(0, 700))}", i, T0 + int(rng.integers(0, 30 * spec.DAY))
                )
                for card in cards
                for i in range(60)
            ]
            _apply_all(store, events)
            sizes = []
            for card in cards[:200]:
                keys = store.card_keys(HASHER(card))
                sizes.append(sum(int(client.memory_usage(k, samples=0) or 0) for k in keys))
            encoding = client.object("encoding", store.card_keys(HASHER(cards[0]))[0])
            report.values[
                f"memory per card, 60 tx / 30 days, zset-max-listpack-value {listpack_value} (bytes)"
            ] = f"{int(np.median(sizes)):,} (median of 200; encoding {encoding.decode()})"
        members = client.zrange(store.card_keys(HASHER(cards[0]))[0], 0, -1)
        report.values["card member size (bytes)"] = int(np.median([len(m) for m in members]))

        # a hot card: 30,000 transactions in 30 days, stored as events (every read returns them:
        # the layout before tiles) and as time tiles (the store's default above TILE_THRESHOLD)
        hot_card = "4999999999999999"
        t_end = T0 + 30 * spec.DAY
        hot = [
            _tx(hot_card, f"merchant {i % 50}", i, T0 + i * (30 * spec.DAY // 30_000)) for i in range(30_000)
        ]
        for layout, threshold in (("events", -1), ("tiles", TILE_THRESHOLD)):
            client.flushall()
            layout_store = RedisFeatureStore(client, HASHER, tile_threshold=threshold)
            _apply_all(layout_store, hot, 1000)
            for label, at in (("at its newest event", t_end), ("23h30m17s earlier", t_end - 84_617)):
                name = f"read: card with 30,000 tx in 30 days, {layout}, request {label}"
                samples, server = _read_times(layout_store, hot_card, "quiet", at, args.reads)
                report.add(name, samples)
                report.values[f"{name}: in Redis, p50 / p99 ms"] = server
            if threshold >= 0:
                keys = layout_store.card_keys(HASHER(hot_card))
                report.values["hot card memory: events, tiles (bytes)"] = ", ".join(
                    f"{int(client.memory_usage(k, samples=0) or 0):,}" for k in (keys[0], keys[2])
                )

        # a hot merchant: 1,000,000 transactions, 50,000 fraud labels in its windows
        client.flushall()
        merchant = "fraud_Busy Merchant"
        tx_key = store.merchant_keys(merchant)[0]
        span = store.merchant_keep - spec.DAY
        times = np.sort(rng.integers(t_end - span, t_end, 1_000_000))
        pipe = client.pipeline(transaction=False)
        for start in range(0, len(times), 10_000):
            pipe.zadd(
                tx_key, {f"m{start + j:031x}": int(t) for j, t in enumerate(times[start : start + 10_000])}
            )
        pipe.execute()
        # 50,000 chargebacks, each arrived a label delay after its transaction (by t_end: a label
        # cannot arrive after the time it is read at), applied by the store's script
        known = int(np.searchsorted(times, t_end - spec.DEFAULT_LABEL_DELAY))
        fraud_idx = np.sort(rng.choice(known, 50_000, replace=False))
        labels = [
            LabelEvent(
                trans_num=f"m{j:031x}",
                merchant=merchant,
                transaction_time=datetime.fromtimestamp(int(times[j]), UTC),
                label_time=datetime.fromtimestamp(int(times[j]) + spec.DEFAULT_LABEL_DELAY, UTC),
            )
            for j in fraud_idx
        ]
        for start in range(0, len(labels), 10_000):
            store.apply([], labels[start : start + 10_000])
        for name, at in (
            ("read: merchant with 1M tx, 50k frauds in window", t_end),
            (
                "read: the same merchant, a request dated 1 day earlier (its labels since corrected)",
                t_end - spec.DAY,
            ),
        ):
            samples, server = _read_times(store, "4000000000000001", merchant, at, max(args.reads // 10, 20))
            report.add(name, samples)
            report.values[f"{name}: in Redis, p50 / p99 ms"] = server

        # the longest script call while a batch of 10,000 events is applied
        for name, batch in (
            (
                "one card (tiled)",
                [_tx(hot_card, f"merchant {i % 50}", i, T0 + i * 60) for i in range(10_000)],
            ),
            (
                "1,000 cards",
                [_tx(cards[i % 1000], f"merchant {i % 700}", i, T0 + i * 60) for i in range(10_000)],
            ),
        ):
            client.flushall()
            client.config_set("slowlog-log-slower-than", 0)
            client.slowlog_reset()
            started = time.perf_counter()
            result = store.apply(batch, [])
            elapsed = time.perf_counter() - started
            report.values[f"10,000-event batch of {name}: longest script call (ms)"] = round(
                _longest_script_ms(client), 3
            )
            report.values[f"10,000-event batch of {name}: whole apply (ms), applied"] = (
                f"{elapsed * 1000:.1f}, {result.applied:,}"
            )
        client.close()
    return finish(report, args.json)


if __name__ == "__main__":
    run()
