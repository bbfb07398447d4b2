"""Feature-updater (and archiver) throughput per process: batches of 500 stream records.

Three passes over the same time-ordered synthetic stream (transactions, plus fraud labels as
they arrive), each on an empty redis-server and each followed by a redelivery of every batch
(all duplicates):

* the real handler, ``handlers.update_features.handler(msk_event(...))``, as deployed (no
  ``LAKE_URI``: the archiver writes the lake): base64, Powertools batch processor, JSON +
  pydantic validation, the transaction index's claim, one Lua ``store.apply``, logging, metrics;
* parsing alone (``parse_event`` per record: JSON + pydantic), no Redis;
* ``RedisFeatureStore.apply`` alone on parsed events, with the Redis server's own time for the
  Lua script (``INFO commandstats``) and the client-side argument building (HMAC, members).

    uv run python -m bench.updater --batches 200 [--lake folder|s3] [--archiver-beside]
        [--updater-archives] [--json out.json] [--profile]

``--lake folder`` (a temp folder) or ``--lake s3`` (a local moto S3 server) adds the archiver,
``handlers.archive_events.handler`` with ``LAKE_URI`` there, on the same MSK events: its wall
time and its process CPU per batch (the Parquet PUTs run on the writer's threads), first delivery
and redelivery; and ``LakeWriter.append`` alone. ``--archiver-beside`` times the updater's passes
while an archiver process archives the same batches over and over (the local stack's two
processes on one machine; on AWS they are two functions). ``--updater-archives`` sets
``LAKE_URI`` on the updater too: the in-process archive of the backwards-compatible mode.
``--appendonly`` runs redis-server with an append-only file flushed every second, as the local
stack does (``StackConfig.redis_appendonly``).
"""

import contextlib
import cProfile
import io
import multiprocessing
import os
import pstats
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    Report,
    command_line,
    finish,
    lambda_env,
    load_average,
    parser,
    quiet_stdout,
    time_each,
)
from bench.synthetic import batches, encode, kaggle_like_frame, stream_payloads, to_events
from fraud_core import spec
from tests.support.services import redis_server

TARGET_TX_PER_S = 20_000.0


def _server_cpu(client: Any) -> float:
    """CPU seconds the redis-server process has used so far (user + system, all threads)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def memory_by_kind(client: Any) -> dict[str, tuple[int, int]]:
    """(keys, bytes of MEMORY USAGE) per key kind: c, cp, m, mf, seen:l."""
    out: dict[str, tuple[int, int]] = {}
    keys = list(client.scan_iter(count=5000))
    for start in range(0, len(keys), 2000):
        chunk = keys[start : start + 2000]
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.memory_usage(key, samples=0)
        for key, size in zip(chunk, pipe.execute(), strict=True):
            parts = key.decode().split(":")
            kind = ":".join(parts[1:3]) if parts[1] == "seen" else parts[1]
            count, total = out.get(kind, (0, 0))
            out[kind] = (count + 1, total + int(size or 0))
    return out


def _evalsha_usec(client: Any) -> tuple[int, int]:
    """(calls, total microseconds) of EVALSHA on the server since the last CONFIG RESETSTAT."""
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser("Feature updater throughput: handler vs parsing vs store.apply, and redelivery.")
    p.add_argument("--batches", type=int, default=200, help="batches per pass")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--cards", type=int, default=1000)
    p.add_argument("--merchants", type=int, default=700)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--profile", action="store_true", help="cProfile 20 handler batches, print the top")
    p.add_argument(
        "--lake",
        choices=["none", "folder", "s3"],
        default="none",
        help="also time the archiver (handlers.archive_events) on a lake folder or a local moto S3",
    )
    p.add_argument(
        "--archiver-beside",
        action="store_true",
        help="with --lake: time the updater while an archiver process archives the same batches",
    )
    p.add_argument(
        "--updater-archives",
        action="store_true",
        help="with --lake: LAKE_URI on the updater too (the in-process archive, backwards-compatible mode)",
    )
    p.add_argument(
        "--appendonly", action="store_true", help="redis-server with an AOF, fsync every second (local stack)"
    )
    args = p.parse_args(argv)
    if (args.archiver_beside or args.updater_archives) and args.lake == "none":
        p.error("--archiver-beside and --updater-archives need --lake folder|s3")
    from fraud_adapters.redis_store import encode_card_member
    from handlers import archive_events, bootstrap, update_features
    from tests.support.events import FakeContext, msk_event

    report = Report("Feature updater throughput (per process)", command=command_line("bench.updater", argv))
    report.values["load average at start (1/5/15 min)"] = load_average()
    n_events = args.batches * args.batch_size
    label_delay = spec.DEFAULT_LABEL_DELAY
    df = kaggle_like_frame(n_events, args.cards, args.merchants, args.days, seed=args.seed)
    stream = stream_payloads(df, label_delay)[:n_events]
    chunks = list(batches([(topic, payload) for _, topic, payload in stream], args.batch_size))
    raw = [[(topic, encode(payload)) for topic, payload in chunk] for chunk in chunks]
    msk = [msk_event(records, first_offset=k * args.batch_size) for k, records in enumerate(raw)]
    parsed = [to_events([payload for _, payload in chunk]) for chunk in chunks]
    n_labels = sum(len(labels) for _, labels in parsed)
    report.values["events per pass (transactions + fraud labels)"] = f"{n_events - n_labels} + {n_labels}"
    report.values["batch size"] = args.batch_size
    report.values["mean record size (bytes)"] = round(float(np.mean([len(v) for r in raw for _, v in r])))
    ctx = FakeContext()

    with (
        tempfile.TemporaryDirectory() as tmp,
        redis_server() as service,
        lambda_env(service.port, Path(tmp), label_delay, timeout_ms=1000),
    ):
        lake = contextlib.ExitStack()
        lake_uri = lake.enter_context(_lake_store(args.lake, Path(tmp))) if args.lake != "none" else None
        if lake_uri is not None:
            report.values["LAKE_URI (the archiver's)"] = lake_uri
        report.values["updater archives itself (LAKE_URI on the updater)"] = args.updater_archives
        updater_lake = lake.enter_context(_lake_uri(lake_uri if args.updater_archives else None))
        store = bootstrap.feature_store(update_features.UPDATER_REDIS_TIMEOUT_MS)
        client = store.client
        labels_topic = "fraudsys.labels"
        if args.appendonly:
            client.config_set("appendfsync", "everysec")
            client.config_set("appendonly", "yes")
        report.values["redis appendonly"] = client.config_get("appendonly")["appendonly"]

        def fresh() -> None:
            client.flushall()
            client.config_resetstat()

        def handler(k: int) -> None:
            response = update_features.handler(msk[k], ctx)
            if response != {"batchItemFailures": []}:
                raise RuntimeError(f"the updater failed records: {response}")

        def parse(k: int) -> None:
            for topic, value in raw[k]:
                update_features.parse_event(value, topic == labels_topic)

        def apply(k: int) -> None:
            store.apply(*parsed[k])

        def client_args(k: int) -> None:
            for tx in parsed[k][0]:
                store.hasher(tx.cc_num)
                encode_card_member(tx)

        beside = _ArchiverBeside(lake_uri, msk) if args.archiver_beside and lake_uri is not None else None
        with quiet_stdout():
            for k in range(min(5, len(msk))):  # warm: imports, script cache, connections
                handler(k)
            fresh()
            if beside is not None:
                beside.start()
            cpu0, own0 = _server_cpu(client), time.process_time_ns()
            report.add("handler: batch (first delivery)", time_each(handler, range(len(msk))))
            cpu1, own1 = _server_cpu(client), time.process_time_ns()
            report.add("handler: batch (redelivery, all duplicates)", time_each(handler, range(len(msk))))
            cpu2, own2 = _server_cpu(client), time.process_time_ns()
        # the updater's process, every thread (with --updater-archives, the archive thread too)
        for label, spent in (("first delivery", own1 - own0), ("redelivery, all duplicates", own2 - own1)):
            report.values[f"handler process CPU per batch, {label} (ms, all threads)"] = round(
                spent / len(msk) / 1e6, 2
            )
        if beside is not None:
            report.values["archiver beside the updater: batches archived meanwhile"] = beside.stop()
        server_cpu_ms = {
            "first": (cpu1 - cpu0) / len(msk) * 1000,
            "redelivery": (cpu2 - cpu1) / len(msk) * 1000,
        }
        fresh()
        report.add("parse_event x batch (JSON + pydantic)", time_each(parse, range(len(msk))))
        report.add("store.apply: batch (first delivery)", time_each(apply, range(len(msk))))
        calls, usec = _evalsha_usec(client)
        report.values["redis server time per Lua batch, first delivery (ms)"] = round(usec / calls / 1000, 3)
        info = client.info("memory")
        report.values["redis used_memory after one pass (MB)"] = round(int(info["used_memory"]) / 2**20, 1)
        report.values["redis keys after one pass"] = int(client.dbsize())
        for kind, (count, size) in sorted(memory_by_kind(client).items()):
            report.values[f"  keys {kind}: count, MEMORY USAGE (MB)"] = f"{count:,}, {size / 2**20:.1f}"
        client.config_resetstat()
        report.add("store.apply: batch (redelivery, all duplicates)", time_each(apply, range(len(msk))))
        calls, usec = _evalsha_usec(client)
        report.values["redis server time per Lua batch, redelivery (ms)"] = round(usec / calls / 1000, 3)
        report.add(
            "store.apply client-side args (HMAC + member) x batch",
            time_each(client_args, range(len(msk))),
        )
        updater_lake.close()
        if lake_uri is not None:
            with _lake_uri(lake_uri):
                _time_archiver(report, archive_events, msk, ctx, lake_uri, args.batch_size)
                writer = bootstrap.lake_writer()
        else:
            writer = None
        if writer is not None:
            from fraud_adapters.lake import LakeRecord
            from fraud_core.schemas import LabelEvent, TransactionEvent

            lake_batches: list[list[LakeRecord]] = []
            for k, (txs, lbs) in enumerate(parsed):
                events: list[TransactionEvent | LabelEvent] = [*txs, *lbs]
                lake_batches.append(
                    [LakeRecord(e, f"kafka:bench-0@{k}-{i}", e.event_time) for i, e in enumerate(events)]
                )
            report.add(
                "lake: LakeWriter.append x batch (Parquet + put)",
                time_each(lambda k: writer.append(lake_batches[k]), range(len(msk))),
            )
        if args.profile:
            fresh()
            report.values["profile"] = _profile(lambda: time_each(handler, range(min(20, len(msk)))))
        lake.close()

    p50 = {t.name: t.p50 for t in report.timings}
    cpu = {t.name: t.cpu_p50 or 0.0 for t in report.timings}
    size = args.batch_size
    for name in list(p50):
        if name.startswith(("handler", "store.apply: batch")):
            report.values[f"throughput, {name} (events/s, from wall p50)"] = round(size / p50[name] * 1000)
    for kind, label in (("first", "first delivery"), ("redelivery", "redelivery, all duplicates")):
        client_ms = cpu[f"handler: batch ({label})"]
        report.values[f"handler CPU per batch, {label}: python + redis-server (ms)"] = (
            f"{client_ms:.2f} + {server_cpu_ms[kind]:.2f}"
        )
        report.values[f"throughput from CPU time, handler, {label} (events/s)"] = round(
            size / (client_ms + server_cpu_ms[kind]) * 1000
        )
    for name in list(p50):
        if name.startswith("archiver: batch"):
            report.values[f"throughput, {name} (events/s, from wall p50)"] = round(size / p50[name] * 1000)
    parse_ms, apply_ms = (
        p50["parse_event x batch (JSON + pydantic)"],
        p50["store.apply: batch (first delivery)"],
    )
    handler_ms = p50["handler: batch (first delivery)"]
    report.values["handler p50 split (ms): parse / store.apply / rest (Powertools, base64, logging)"] = (
        f"{parse_ms:.2f} / {apply_ms:.2f} / {handler_ms - parse_ms - apply_ms:.2f}"
    )
    report.target(
        "updater handler throughput per process",
        round(size / handler_ms * 1000),
        TARGET_TX_PER_S,
        "events/s",
        higher_is_better=True,
    )
    return finish(report, args.json)


def _time_archiver(
    report: Report, archive_events: Any, msk: list[dict[str, Any]], ctx: Any, lake_uri: str, size: int
) -> None:
    """The archiver's passes (``LAKE_URI`` set): wall and thread CPU per batch, and the process
    CPU per batch (the writer's PUT threads included), first delivery and redelivery."""

    def archive(k: int) -> None:
        response = archive_events.handler(msk[k], ctx)
        if response != {"batchItemFailures": []}:
            raise RuntimeError(f"the archiver failed records: {response}")

    with quiet_stdout():
        for k in range(min(5, len(msk))):  # warm: pyarrow's import, the store's client
            archive(k)
        if not lake_uri.startswith("s3://"):
            shutil.rmtree(lake_uri, ignore_errors=True)  # the first delivery writes new objects
        for label in ("first delivery", "redelivery, the same objects again"):
            started = time.process_time_ns()
            report.add(f"archiver: batch ({label})", time_each(archive, range(len(msk))))
            process_ms = (time.process_time_ns() - started) / len(msk) / 1e6
            report.values[f"archiver process CPU per batch, {label} (ms, all threads)"] = round(process_ms, 2)
            report.values[f"archiver throughput from process CPU, {label} (events/s)"] = round(
                size / process_ms * 1000
            )


class _ArchiverBeside:
    """An archiver process archiving ``msk``'s batches over and over until stopped."""

    def __init__(self, lake_uri: str, msk: list[dict[str, Any]]) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._done = context.Value("q", 0)
        env = {**os.environ, "LAKE_URI": lake_uri}
        self._process = context.Process(
            target=_archive_until_stopped, args=(env, msk, self._stop, self._done), daemon=True
        )

    def start(self) -> None:
        self._process.start()

    def stop(self) -> int:
        self._stop.set()
        self._process.join(60)
        return int(self._done.value)


def _archive_until_stopped(env: dict[str, str], msk: list[dict[str, Any]], stop: Event, done: Any) -> None:
    os.environ.clear()
    os.environ.update(env)
    from handlers import archive_events
    from tests.support.events import FakeContext

    ctx = FakeContext()
    k = 0
    with quiet_stdout():
        while not stop.is_set():
            archive_events.handler(msk[k % len(msk)], ctx)
            k += 1
            done.value = k


@contextlib.contextmanager
def _lake_uri(uri: str | None) -> Iterator[contextlib.ExitStack]:
    """``LAKE_URI`` set to ``uri`` (None: unset) for the handlers, put back after. Yields a stack
    whose ``close()`` ends it early."""
    from handlers import bootstrap

    saved = os.environ.get("LAKE_URI")

    def restore() -> None:
        if saved is None:
            os.environ.pop("LAKE_URI", None)
        else:
            os.environ["LAKE_URI"] = saved
        bootstrap.reset()

    if uri is None:
        os.environ.pop("LAKE_URI", None)
    else:
        os.environ["LAKE_URI"] = uri
    bootstrap.reset()
    with contextlib.ExitStack() as stack:
        stack.callback(restore)
        yield stack


@contextlib.contextmanager
def _lake_store(kind: str, workdir: Path) -> Iterator[str]:
    """A lake: a folder, or a bucket of a local moto S3 server (its endpoint and dummy
    credentials in the environment). Yields its URI."""
    from handlers import bootstrap

    saved = dict(os.environ)
    moto = None
    try:
        if kind == "s3":
            import boto3

            from local_stack.services import free_port, start_moto
            from local_stack.stack import LOCAL_DUMMY_SECRET

            moto = start_moto(free_port())
            os.environ.update(
                {
                    "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{moto.port}",
                    "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": LOCAL_DUMMY_SECRET,
                    "AWS_DEFAULT_REGION": "us-east-1",
                }
            )
            boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"]).create_bucket(
                Bucket="bench-lake"
            )
            yield "s3://bench-lake/archive"
        else:
            yield str(workdir / "lake")
    finally:
        os.environ.clear()
        os.environ.update(saved)
        bootstrap.reset()
        if moto is not None:
            moto.stop()


def _profile(fn: Callable[[], object], top: int = 30) -> str:
    profiler = cProfile.Profile()
    with quiet_stdout():
        profiler.runcall(fn)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return "\n" + out.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
    run(argv)


if __name__ == "__main__":
    main()
