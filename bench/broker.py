"""The local Kafka broker (tansu) under the scorer's publish pattern, with and without a consumer.

One producer sends ``--rate`` records/s, a flush after every ``--batch`` records (1: the
scorer's synchronous publish, one produce request per record; more: what a background publish's
linger gathers), while one kafka-python consumer group polls with the given fetch settings and
commits after every poll (or never). Every 15 s: the broker's CPU share and the produce (flush)
p50/p99 of that window. Shows how the broker's cost grows with its log when a consumer fetches.

    uv run python -m bench.broker --seconds 90 [--no-consumer] [--no-commit] [--batch 1]
        [--fetch-min-bytes 1] [--fetch-max-wait-ms 500] [--rate 200]
"""

import argparse
import os
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from confluent_kafka import Producer
from kafka import KafkaConsumer

from local_stack.services import free_port, tansu_binary, wait_for_port

TOPIC = "bench.broker"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def run(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=90.0)
    p.add_argument("--rate", type=float, default=200.0, help="records per second")
    p.add_argument("--batch", type=int, default=1, help="records per flush (one produce request)")
    p.add_argument("--no-consumer", action="store_true")
    p.add_argument("--no-commit", action="store_true")
    p.add_argument("--fetch-min-bytes", type=int, default=1)
    p.add_argument("--fetch-max-wait-ms", type=int, default=500)
    p.add_argument("--storage", default="memory://tansu/", help="tansu --storage-engine")
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error("--batch must be at least 1")

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
    broker = subprocess.Popen(  # a fixed argv list, no shell  # nosec B603
        [*argv, "--storage-engine", args.storage],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    stop = threading.Event()
    consumed = [0]
    try:
        wait_for_port(port, 30, broker)
        producer = Producer({"bootstrap.servers": f"127.0.0.1:{port}", "linger.ms": 0, "acks": "all"})
        producer.produce(TOPIC, b"warm")
        producer.flush(10)

        def consume() -> None:
            consumer = KafkaConsumer(
                TOPIC,
                bootstrap_servers=f"127.0.0.1:{port}",
                group_id="bench",
                session_timeout_ms=6000,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_min_bytes=args.fetch_min_bytes,
                fetch_max_wait_ms=args.fetch_max_wait_ms,
            )
            while not stop.is_set():
                polled = consumer.poll(timeout_ms=1000, max_records=100)
                consumed[0] += sum(len(records) for records in polled.values())
                if polled and not args.no_commit:
                    consumer.commit()
            consumer.close()

        reader = threading.Thread(target=consume, daemon=True)
        if not args.no_consumer:
            reader.start()
        print(
            f"rate {args.rate:g}/s in flushes of {args.batch}, consumer {not args.no_consumer}, "
            f"commit {not args.no_commit}, "
            f"fetch_min_bytes {args.fetch_min_bytes}, fetch_max_wait_ms {args.fetch_max_wait_ms}"
        )
        start = time.perf_counter()
        last_cpu, last_t, sent = _cpu_seconds(broker.pid), start, 0
        latencies: list[float] = []
        payload = b"x" * 450  # a transaction event's size
        while (now := time.perf_counter()) - start < args.seconds:
            wait = start + sent / args.rate - now
            if wait > 0:
                time.sleep(wait)
            began = time.perf_counter()
            for i in range(args.batch):
                producer.produce(TOPIC, payload, key=str((sent + i) % 1000).encode())
            producer.flush(5)
            latencies.append(time.perf_counter() - began)
            sent += args.batch
            if (now := time.perf_counter()) - last_t >= 15:
                cpu = _cpu_seconds(broker.pid)
                latencies.sort()
                print(
                    f"t={now - start:4.0f} s  sent {sent:6d}  consumed {consumed[0]:6d}  "
                    f"broker CPU {100 * (cpu - last_cpu) / (now - last_t):5.1f} %  produce p50 "
                    f"{1000 * latencies[len(latencies) // 2]:.2f} ms p99 "
                    f"{1000 * latencies[int(len(latencies) * 0.99)]:.2f} ms",
                    flush=True,
                )
                last_cpu, last_t, latencies = cpu, now, []
    finally:
        stop.set()
        broker.kill()
        broker.wait(5)


if __name__ == "__main__":
    run()
