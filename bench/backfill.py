"""``fraudsys backfill`` throughput per process: a lake folder written by the real ``LakeWriter``
(transactions and fraud labels of a synthetic stream), read back and written to an empty local
redis-server by ``training.backfill.backfill`` (store and transaction index), ``--repeat`` times
(Redis flushed before each run; the median is the figure), then once more onto the full store.

Besides wall-clock throughput it reports the CPU each side spent per event (this process, all
threads; redis-server's ``used_cpu_*``): on a shared machine the wall clock depends on the other
work, the CPU per event much less. The longest single command Redis ran during the timed runs
comes from ``SLOWLOG`` (commands over 1 ms are logged; the commands of a MULTI/EXEC one by one),
the mean MULTI/EXEC from ``INFO commandstats`` (both wall-clock inside Redis: a busy machine
stretches them).

    uv run python -m bench.backfill [--events 200000] [--repeat 3] [--json out.json]
"""

import math
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import redis

from bench.common import Report, command_line, finish, load_average, parser
from bench.synthetic import kaggle_like_frame, stream_payloads, to_events
from fraud_adapters import bulk
from fraud_adapters.blobs import LocalBlobStore
from fraud_adapters.lake import LakeRecord, LakeWriter, arrival_time
from fraud_adapters.redis_store import REDIS_SERVER_CONFIG, CardHasher, RedisFeatureStore
from fraud_adapters.tx_index import TransactionIndex
from fraud_core import spec
from fraud_core.schemas import LabelEvent, TransactionEvent
from tests.support.services import redis_server
from training.backfill import backfill
from training.data.lake import read_lake, read_lake_tables

HASHER = CardHasher(b"bench-backfill-card-hash-key")
SLOW_US = 1000


def _redis_cpu(client: "redis.Redis") -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _replay(
    client: "redis.Redis",
    port: int,
    transactions: Any,
    labels: Any,
    store: RedisFeatureStore,
    index: TransactionIndex,
    batch: int,
) -> list[float]:
    """redis-server's CPU per event for the very commands of one backfill: they are recorded as
    the bulk writer sends them (store and index; the few label calls go through redis-py and are
    left out), then sent again to an empty server by ``redis-cli --pipe`` (C, pipelined), 3 times."""
    sent: list[bytes] = []
    submit = bulk._Pipe.submit

    def recording(pipe: Any, payload: bytes, replies: int, done: Any) -> None:
        sent.append(bytes(payload))
        submit(pipe, payload, replies, done)

    client.flushall()
    bulk._Pipe.submit = recording  # type: ignore[method-assign,assignment]
    try:
        stats = backfill(transactions, labels, store, index, batch=batch)
    finally:
        bulk._Pipe.submit = submit  # type: ignore[method-assign]
    out: list[float] = []
    with tempfile.TemporaryFile() as commands:
        commands.write(b"".join(sent))
        for _ in range(3):
            client.flushall()
            for name in ("apply_card", "apply_merchant"):
                client.script_load(store.script(name)[0])
            commands.seek(0)
            before = _redis_cpu(client)
            subprocess.run(  # a fixed argv list, no shell  # nosec B603 B607
                ["redis-cli", "-p", str(port), "--pipe"], stdin=commands, capture_output=True, check=True
            )
            out.append((_redis_cpu(client) - before) / stats.transactions * 1e6)
    return out


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser("Backfill throughput: lake folder -> store and index.")
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument(
        "--cards", type=int, default=None, help="default: events / 60 (Kaggle's ~60 per card and month)"
    )
    p.add_argument("--merchants", type=int, default=700)
    p.add_argument("--days", type=int, default=40)
    p.add_argument("--batch", type=int, default=1024, help="events per MULTI/EXEC")
    p.add_argument("--repeat", type=int, default=3, help="timed runs into an empty store")
    p.add_argument(
        "--replay",
        action="store_true",
        help="also send one backfill's commands again (redis-cli --pipe): redis-server's CPU per event",
    )
    p.add_argument(
        "--index-buckets",
        type=int,
        default=None,
        help="TX_INDEX_BUCKETS; default: the power of two >= events / 64 (docs/architecture.md)",
    )
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.cards is None:
        args.cards = max(1, args.events // 60)
    if args.index_buckets is None:
        args.index_buckets = 1 << max(0, math.ceil(math.log2(max(1, args.events / 64))))
    report = Report("Backfill throughput (per process)", command=command_line("bench.backfill", argv))
    report.values["load average at start (1/5/15 min)"] = load_average()
    delay = spec.DEFAULT_LABEL_DELAY
    frame = kaggle_like_frame(args.events, args.cards, args.merchants, args.days, seed=args.seed)
    payloads = [payload for _, _, payload in stream_payloads(frame, delay)]
    with tempfile.TemporaryDirectory() as tmp, redis_server() as service:
        writer = LakeWriter(LocalBlobStore(Path(tmp)), HASHER)
        for start in range(0, len(payloads), 5000):
            transactions, labels = to_events(payloads[start : start + 5000])
            events: list[TransactionEvent | LabelEvent] = [*transactions, *labels]
            writer.append(LakeRecord(e, "bench", arrival_time(e, e.event_time)) for e in events)
        started = time.perf_counter()
        read_lake(tmp)
        frames_seconds = time.perf_counter() - started
        started = time.perf_counter()
        lake_transactions, lake_labels = read_lake_tables(tmp)
        read_seconds = time.perf_counter() - started
        client = redis.Redis(port=service.port)
        for name, value in REDIS_SERVER_CONFIG.items():
            client.config_set(name, value)
        client.config_set("slowlog-log-slower-than", str(SLOW_US))
        store = RedisFeatureStore(client, HASHER, label_delay=delay)
        index = TransactionIndex(client, label_delay=delay, buckets=args.index_buckets)
        rates, seconds, python_us, redis_us, runs = [], [], [], [], []
        client.config_resetstat()
        for _ in range(args.repeat):
            client.flushall()
            client.slowlog_reset()
            redis_before, cpu_before = _redis_cpu(client), time.process_time()
            stats = backfill(lake_transactions, lake_labels, store, index, batch=args.batch)
            n_events = stats.transactions + stats.labels
            python_us.append((time.process_time() - cpu_before) / n_events * 1e6)
            redis_us.append((_redis_cpu(client) - redis_before) / n_events * 1e6)
            rates.append(n_events / stats.seconds)
            seconds.append(stats.seconds)
            runs.append(stats)
        stats = runs[-1]
        slowest = max((int(entry["duration"]) for entry in client.slowlog_get(10_000)), default=0)
        execs = client.info("commandstats").get("cmdstat_exec", {})
        memory = int(client.info("memory")["used_memory"])
        again = backfill(lake_transactions, lake_labels, store, index, batch=args.batch)
        n_events = stats.transactions + stats.labels
        report.values["events backfilled (transactions + labels)"] = (
            f"{stats.transactions:,} + {stats.labels:,}"
        )
        kept = lake_transactions.filter(pc.greater_equal(lake_transactions["event_time"], stats.since))
        per_card = kept.group_by("card").aggregate([("trans_num", "count")])["trans_num_count"].to_numpy()
        per_merchant = (
            kept.group_by("merchant").aggregate([("trans_num", "count")])["trans_num_count"].to_numpy()
        )
        report.values["transactions per card: mean / median / max (cards)"] = (
            f"{per_card.mean():.1f} / {np.median(per_card):.0f} / {per_card.max()} ({len(per_card):,})"
        )
        report.values["transactions per merchant: mean / median / max (merchants)"] = (
            f"{per_merchant.mean():.1f} / {np.median(per_merchant):.0f} / {per_merchant.max()}"
            f" ({len(per_merchant):,})"
        )
        buckets = list(client.scan_iter(match=f"{index.prefix}:{{xi:*", count=10_000))
        report.values["index buckets written, entries per bucket (mean)"] = (
            f"{len(buckets):,} of {args.index_buckets:,}, {stats.transactions / max(1, len(buckets)):.1f}"
        )
        index_bytes = sum(int(client.memory_usage(key) or 0) for key in buckets)
        report.values["index memory per entry (B, MEMORY USAGE of its buckets)"] = round(
            index_bytes / max(1, stats.transactions)
        )
        report.values["read_lake_tables (s), the backfill's reader"] = round(read_seconds, 2)
        report.values["read_lake (s), the training reader (pandas frames)"] = round(frames_seconds, 2)
        report.values["backfill into an empty store, each run (s)"] = ", ".join(f"{s:.2f}" for s in seconds)
        report.values["each run (events/s)"] = ", ".join(f"{r:,.0f}" for r in rates)
        report.values["CPU per event, this process / redis-server (us, medians)"] = (
            f"{statistics.median(python_us):.2f} / {statistics.median(redis_us):.2f}"
        )
        report.values["longest single Redis command (ms, SLOWLOG over 1 ms)"] = (
            round(slowest / 1000, 2) if slowest else "none over 1 ms"
        )
        report.values["MULTI/EXEC, mean time in Redis (ms, commandstats)"] = (
            round(float(execs["usec_per_call"]) / 1000, 2) if execs else "none"
        )
        report.values["backfill again, all already there (s)"] = round(again.seconds, 2)
        report.values["redis used_memory after (MB)"] = round(memory / 2**20, 1)
        median_rate = statistics.median(rates)
        report.target("backfill throughput (median)", median_rate, 200_000, "events/s", higher_is_better=True)
        if args.replay:
            replay_us = _replay(
                client, service.port, lake_transactions, lake_labels, store, index, args.batch
            )
            report.values[
                "redis-server alone: CPU per event replaying the same commands (us; cap events/s)"
            ] = (
                f"{statistics.median(replay_us):.2f} ({', '.join(f'{u:.2f}' for u in replay_us)}); "
                f"{1e6 / statistics.median(replay_us):,.0f}"
            )
        report.values["median including read_lake_tables (events/s)"] = round(
            n_events / (statistics.median(seconds) + read_seconds)
        )
        report.values["load average at end (1/5/15 min)"] = load_average()
        client.close()
    return finish(report, args.json)


if __name__ == "__main__":
    run()
