"""The producer journal's cost per publish (``fraud_adapters.journal``, the local stack's
``durable_broker``): ``KafkaPublisher.publish`` on a real broker (tansu, in memory) without a
journal, with one (one ``write`` per call) and with one that also ``fdatasync``s per call; the
scorer's pattern (one record per call) and the replay's (100 per call). The modes take turns in
rounds, so a busy machine's noise falls on all of them alike. Also the journal's append alone.

    uv run python -m bench.journal [--calls 2000] [--rounds 4] [--dir DIR]

``--dir``: where the journals are written (default: a temporary folder; its file system decides
what an fdatasync costs).
"""

import argparse
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench.common import Report, Samples, load_average
from fraud_adapters.journal import Journal
from fraud_adapters.publisher import KafkaPublisher
from fraud_core.schemas import TransactionEvent
from local_stack.services import kafka_broker

MODES = ("no journal", "journal (write)", "journal (write + fdatasync)")


def _event(i: int) -> TransactionEvent:
    return TransactionEvent(
        trans_num=f"bench-{i}",
        cc_num=f"4{i % 1000:015d}",
        merchant="fraud_Kirlin and Sons",
        category="shopping_net",
        amt=12.5,
        transaction_time=datetime(2020, 6, 21, 12, tzinfo=UTC),
        lat=40.7,
        long=-74.0,
        city_pop=8000,
        merch_lat=41.2,
        merch_long=-75.1,
    )


def _time(publisher: KafkaPublisher, batches: Sequence[list[TransactionEvent]], samples: Samples) -> None:
    for batch in batches:
        wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
        publisher.publish(batch, timeout=10)
        samples.cpu.append(time.thread_time_ns() - cpu)
        samples.wall.append(time.perf_counter_ns() - wall)


def run(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--calls", type=int, default=2000, help="single-record publish calls per mode")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--dir", type=Path, default=None)
    args = p.parse_args(argv)
    report = Report("producer journal: KafkaPublisher.publish per call (sync, acks=all)")
    with tempfile.TemporaryDirectory(dir=args.dir) as folder, kafka_broker() as broker:
        servers = f"127.0.0.1:{broker.port}"
        journals = {
            MODES[0]: None,
            MODES[1]: Journal(Path(folder) / "write"),
            MODES[2]: Journal(Path(folder) / "fsync", fsync=True),
        }
        publishers = {
            mode: KafkaPublisher(servers, card_key=lambda cc: cc, journal=writer)
            for mode, writer in journals.items()
        }
        for publisher in publishers.values():
            publisher.warm()
            publisher.publish([_event(0)], timeout=10)
        singles = {mode: Samples() for mode in MODES}
        hundreds = {mode: Samples() for mode in MODES}
        per_round = max(args.calls // args.rounds, 1)
        n = 0
        for _ in range(args.rounds):
            for mode, publisher in publishers.items():
                _time(publisher, [[_event(n + i)] for i in range(per_round)], singles[mode])
                n += per_round
                batches = [[_event(n + i * 100 + k) for k in range(100)] for i in range(per_round // 20)]
                _time(publisher, batches, hundreds[mode])
                n += len(batches) * 100
        for mode in MODES:
            report.add(f"1 record per call, {mode}", singles[mode])
        for mode in MODES:
            report.add(f"100 records per call, {mode}", hundreds[mode])
        # the journal's own append, without the broker
        record = publishers[MODES[0]].record(_event(1))
        for label, fsync in (("write", False), ("write + fdatasync", True)):
            writer = Journal(Path(folder) / f"alone-{label}", fsync=fsync)
            for size in (1, 100):
                samples = Samples()
                for _ in range(args.calls if size == 1 else args.calls // 10):
                    wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
                    writer.append([record] * size)
                    samples.cpu.append(time.thread_time_ns() - cpu)
                    samples.wall.append(time.perf_counter_ns() - wall)
                report.add(f"Journal.append alone, {size} record(s), {label}", samples)
            writer.close()
        for publisher in publishers.values():
            publisher.close()
    print(report.render())
    print(f"load average: {load_average()}")


if __name__ == "__main__":
    run()
