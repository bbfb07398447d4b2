"""The local broker's memory over a long replay, with and without rolling it
(``StackConfig.broker_roll_records``: a planned restart once its log holds that many records, the
journal's relay sending again what is not yet consumed).

A whole local stack (redis-server, tansu, the local S3, the updater and the archiver) on free
ports; ``--transactions`` simulated transactions replayed through the journaled publisher at
``--rate``; tansu's resident memory sampled every 5 s (the broker's current process: a roll
starts a new one). At the end: every transaction applied in Redis (the transaction index).

    uv run python -m bench.broker_memory [--transactions 120000] [--rate 1000] [--roll 40000]
"""

import argparse
import contextlib
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import load_average
from bench.synthetic import kaggle_like_frame


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--transactions", type=int, default=120_000)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--roll", type=int, default=0, help="broker_roll_records (0: never roll)")
    args = p.parse_args(argv)

    from handlers import bootstrap
    from local_stack.replay import Event, replay
    from local_stack.stack import LocalStack, StackConfig

    frame = kaggle_like_frame(
        args.transactions, n_cards=2000, n_merchants=300, days=20, seed=7, fraud_rate=0.0
    )
    with tempfile.TemporaryDirectory() as folder:
        cfg = StackConfig.on_free_ports(Path(folder), broker_roll_records=args.roll or None)
        stack = LocalStack(cfg).up()
        samples: list[tuple[float, float]] = []
        stop = threading.Event()
        started = time.monotonic()

        def sample() -> None:
            while not stop.wait(5):
                service = stack.services.get("kafka")
                if service is not None:
                    with contextlib.suppress(OSError):  # (the broker between two processes)
                        samples.append((time.monotonic() - started, _rss_mb(service.process.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            publisher = bootstrap.kafka_publisher(cfg.kafka)

            def publish(events: list[Event]) -> None:
                while True:
                    try:
                        publisher.publish(events, timeout=10)
                        return
                    except (RuntimeError, TimeoutError):
                        time.sleep(0.2)

            stats = replay(frame, publish, args.rate, 7 * 86400, chunk=100)
            publisher.close()
            ids = list(frame["trans_num"])
            deadline = time.monotonic() + 600
            applied = 0
            while time.monotonic() < deadline:
                applied = len(bootstrap.transaction_index().get(ids))
                if applied == len(ids):
                    break
                time.sleep(2)
            time.sleep(10)  # a last sample or two after the replay
            stop.set()
            relay = stack.relay
            if relay is None:
                raise RuntimeError("no journal relay: durable_broker is off")
            print(
                f"broker_roll_records={args.roll or None}: {stats.transactions:,} transactions in "
                f"{stats.seconds:.0f} s; applied {applied:,} of {len(ids):,}; rolls {relay.rolls}; "
                f"records sent again by the relay {relay.resent:,}; journal now {relay.journaled():,} "
                f"records; load average {load_average()}"
            )
            rss = [mb for _, mb in samples]
            print(
                f"tansu RSS MB: first {rss[0]:.0f}, max {max(rss):.0f}, last {rss[-1]:.0f} "
                f"({len(rss)} samples)"
            )
            print("t s, RSS MB: " + ", ".join(f"{t:.0f}:{mb:.0f}" for t, mb in samples))
        finally:
            stop.set()
            stack.down()


if __name__ == "__main__":
    run()
