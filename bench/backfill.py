"""``fraudsys backfill`` throughput per process: a lake folder written by the real ``LakeWriter``
(transactions and fraud labels of a synthetic stream), read back with ``read_lake`` and applied to
an empty local redis-server by ``training.backfill.backfill`` (store and transaction index).

    uv run python -m bench.backfill [--events 200000] [--json out.json]
"""

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import Report, command_line, finish, parser
from bench.synthetic import kaggle_like_frame, stream_payloads, to_events
from fraud_adapters.blobs import LocalBlobStore
from fraud_adapters.lake import LakeRecord, LakeWriter, arrival_time
from fraud_adapters.redis_store import CardHasher, RedisFeatureStore
from fraud_adapters.tx_index import TransactionIndex
from fraud_core import spec
from fraud_core.schemas import LabelEvent, TransactionEvent
from tests.support.services import redis_server
from training.backfill import backfill
from training.data.lake import read_lake

HASHER = CardHasher(b"bench-backfill-card-hash-key")


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser("Backfill throughput: lake folder -> read_lake -> store and index.")
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--cards", type=int, default=5000)
    p.add_argument("--merchants", type=int, default=700)
    p.add_argument("--days", type=int, default=40)
    p.add_argument("--batch", type=int, default=5000)
    args = p.parse_args(argv)
    report = Report("Backfill throughput (per process)", command=command_line("bench.backfill", argv))
    one, five, fifteen = os.getloadavg()
    report.values["load average at start (1/5/15 min)"] = f"{one:.1f} / {five:.1f} / {fifteen:.1f}"
    delay = spec.DEFAULT_LABEL_DELAY
    frame = kaggle_like_frame(args.events, args.cards, args.merchants, args.days, seed=args.seed)
    payloads = [payload for _, _, payload in stream_payloads(frame, delay)]
    with tempfile.TemporaryDirectory() as tmp, redis_server() as service:
        import redis

        writer = LakeWriter(LocalBlobStore(Path(tmp)), HASHER)
        for start in range(0, len(payloads), 5000):
            transactions, labels = to_events(payloads[start : start + 5000])
            events: list[TransactionEvent | LabelEvent] = [*transactions, *labels]
            writer.append(LakeRecord(e, "bench", arrival_time(e, e.event_time)) for e in events)
        started = time.perf_counter()
        lake = read_lake(tmp)
        read_seconds = time.perf_counter() - started
        client = redis.Redis(port=service.port)
        store = RedisFeatureStore(client, HASHER, label_delay=delay)
        index = TransactionIndex(client, label_delay=delay)
        stats = backfill(lake.transactions, lake.labels, store, index, batch=args.batch)
        again = backfill(lake.transactions, lake.labels, store, index, batch=args.batch)
        n_events = stats.transactions + stats.labels
        report.values["events backfilled (transactions + labels)"] = (
            f"{stats.transactions:,} + {stats.labels:,}"
        )
        report.values["read_lake (s)"] = round(read_seconds, 2)
        report.values["backfill into an empty store (s)"] = round(stats.seconds, 2)
        report.values["backfill again, all already there (s)"] = round(again.seconds, 2)
        report.values["redis used_memory after (MB)"] = round(
            int(client.info("memory")["used_memory"]) / 2**20, 1
        )
        report.target(
            "backfill throughput", n_events / stats.seconds, 200_000, "events/s", higher_is_better=True
        )
        report.values["backfill throughput including read_lake (events/s)"] = round(
            n_events / (stats.seconds + read_seconds)
        )
        client.close()
    return finish(report, args.json)


if __name__ == "__main__":
    run()
