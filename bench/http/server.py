"""The API process of the HTTP benchmarks, and the client's handle on it.

``api_server`` starts ``python -m bench.http.server --serve WORKDIR ...`` (a child process, so
that the load client never shares its interpreter lock): ``serve`` brings ``LocalStack`` up
(redis-server, the tansu Kafka broker, moto S3, the local API Gateway in front of the real
scorer handler, the local MSK poller in front of the real updater, the archiver), trains a real
champion with ``training.pipeline.run_pipeline`` (small tuning config; ``--model test``
publishes ``tests.support.models.publish_test_model_to`` instead) on a simulated stream of
1,200 cards x 45 days, and fills Redis with that stream: directly through
``RedisFeatureStore.apply`` in 500-event batches (``--fill direct``, the default) or by
replaying it into the broker for the poller and the updater handler (``--fill broker``). It
then writes request templates (new transactions an hour or two after the history) and waits
until its stdin closes.
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPO_ROOT, parent_pid, process_cmdline, process_tree, process_usage
from local_stack import DEFAULT_BROKER_ROLL_RECORDS, freeze_heap

LIVE_OFFSET = 3600  # live requests: between 1 h and 2 h after the last filled transaction
FRESHNESS_OFFSET = 60  # freshness probes: 60 s + k after it (before every live request)
TXID = "__TXID__"


@dataclass(frozen=True)
class ServerOptions:
    workdir: Path
    cards: int = 1200
    merchants: int = 400
    days: int = 45
    seed: int = 11
    model: str = "pipeline"  # "pipeline": run_pipeline; "test": publish_test_model_to
    fill: str = "direct"  # "direct": RedisFeatureStore.apply; "broker": replay into Kafka
    batching_window: float | None = None  # None: the CDK dev stage's updater settings
    batch_size: int | None = None
    pointer_ttl: float = 30.0  # the deployed MODEL_POINTER_TTL_SECONDS default
    templates: int = 4000
    max_seconds: float = 3600.0  # the API process stops by itself after this
    env: tuple[str, ...] = ()  # extra KEY=VALUE environment of the API process
    api_workers: int = 1  # StackConfig.api_workers: scorer processes behind the API port
    publish_mode: str = "background"  # StackConfig.publish_mode: the scorer waits for Kafka (sync), or not
    deadline_ms: float = 250.0  # StackConfig.request_deadline_ms: the API's deadline per request
    max_queue: int = 128  # StackConfig.api_max_queue: requests an API process queues at most
    api_thread: bool = False  # not StackConfig.api_instance_process: the handler on the API's thread
    broker_roll_records: int = DEFAULT_BROKER_ROLL_RECORDS  # StackConfig.broker_roll_records (0: never)

    def argv(self) -> list[str]:
        out = [
            "--serve",
            str(self.workdir),
            "--cards",
            str(self.cards),
            "--merchants",
            str(self.merchants),
            "--days",
            str(self.days),
            "--seed",
            str(self.seed),
            "--model",
            self.model,
            "--fill",
            self.fill,
            "--pointer-ttl",
            str(self.pointer_ttl),
            "--templates",
            str(self.templates),
            "--max-seconds",
            str(self.max_seconds),
        ]
        if self.batching_window is not None:
            out += ["--batching-window", str(self.batching_window)]
        if self.batch_size is not None:
            out += ["--batch-size", str(self.batch_size)]
        out += ["--api-workers", str(self.api_workers), "--publish-mode", self.publish_mode]
        out += ["--deadline-ms", str(self.deadline_ms), "--max-queue", str(self.max_queue)]
        if self.api_thread:
            out.append("--api-thread")
        out += ["--broker-roll-records", str(self.broker_roll_records)]
        for kv in self.env:
            out += ["--server-env", kv]
        return out


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def _body(row: dict[Any, Any], t: int, transaction_id: str) -> dict[str, Any]:
    from local_stack.demo import predict_body

    body = predict_body(row)
    body["transaction_id"] = transaction_id
    body["transaction_time"] = _iso(t)
    return body


def serve(opts: ServerOptions) -> None:
    """The API process: stack up, champion, Redis filled, request templates written; then wait
    for stdin to close (or ``max_seconds``) and stop everything."""
    import pandas as pd
    import redis

    from fraud_adapters.blobs import open_blob_store
    from fraud_adapters.model_store import ModelStore
    from fraud_core.schemas import LabelEvent, TransactionEvent
    from handlers import bootstrap
    from local_stack.replay import timeline
    from local_stack.stack import LocalStack, StackConfig, cdk_updater_settings
    from training.config import load_config
    from training.pipeline import load_transactions, run_pipeline

    stop = threading.Event()

    def wait_for_stdin_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_stdin_eof, daemon=True).start()
    cfg = StackConfig.on_free_ports(
        opts.workdir / "stack",
        model_pointer_ttl_seconds=opts.pointer_ttl,
        batch_size=opts.batch_size,
        batching_window=opts.batching_window,
        api_workers=opts.api_workers,
        publish_mode=opts.publish_mode,
        request_deadline_ms=opts.deadline_ms,
        api_max_queue=opts.max_queue,
        api_instance_process=not opts.api_thread,
        broker_roll_records=opts.broker_roll_records or None,
    )
    stack = LocalStack(cfg).up()
    try:
        info: dict[str, Any] = {
            "pid": os.getpid(),
            "api": stack.endpoints()["api"],
            "redis_port": cfg.redis_port,
        }
        batch, window = cdk_updater_settings()
        info["poller_batch_size"] = opts.batch_size or batch
        info["poller_batching_window_s"] = (
            opts.batching_window if opts.batching_window is not None else window
        )
        info["model_pointer_ttl_s"] = opts.pointer_ttl
        info["server_env"] = list(opts.env)
        info["publish_mode"] = opts.publish_mode
        info["deadline_ms"], info["max_queue"] = opts.deadline_ms, opts.max_queue
        info["handler"] = "API thread" if opts.api_thread else "instance process"
        info["broker_roll_records"] = opts.broker_roll_records
        info["label_delay_s"] = cfg.label_delay_seconds

        started = time.perf_counter()
        pipeline_cfg = load_config(
            REPO_ROOT / "training" / "configs" / "default.yaml",
            overrides={
                "source": {
                    "n_cards": opts.cards,
                    "n_merchants": opts.merchants,
                    "n_days": opts.days,
                    "seed": opts.seed,
                },
                "data_dir": str(opts.workdir / "pipeline"),
                "model_store_uri": cfg.model_store_uri,
                "label_delay_seconds": cfg.label_delay_seconds,
                "split": {"validation_days": 7, "test_days": 7},
                "tuning": {"n_trials": 1, "n_folds": 2, "max_rounds": 60},
            },
        )
        frame = load_transactions(pipeline_cfg)
        store = ModelStore(open_blob_store(cfg.model_store_uri))
        if opts.model == "pipeline":
            result = run_pipeline(pipeline_cfg)
            info["model"] = f"run_pipeline version {result.version} (promoted: {result.promoted})"
            if not result.promoted:
                raise RuntimeError(f"the trained model was not promoted: {result.decision.reason}")
        else:
            from tests.support.models import publish_test_model_to

            publish_test_model_to(store, version="1", label_delay=cfg.label_delay_seconds)
            info["model"] = "tests.support.models.publish_test_model_to (10 trees, random data)"
        info["model_version"] = store.champion_version()
        info["train_seconds"] = time.perf_counter() - started

        started = time.perf_counter()
        if opts.fill == "direct":
            fs = bootstrap.feature_store(10_000)
            txs: list[TransactionEvent] = []
            labels: list[LabelEvent] = []
            for _, event in timeline(frame, cfg.label_delay_seconds):
                if isinstance(event, TransactionEvent):
                    txs.append(event)
                else:
                    labels.append(event)
                if len(txs) + len(labels) >= 500:
                    fs.apply(txs, labels)
                    txs, labels = [], []
            fs.apply(txs, labels)
        else:
            from handlers.bootstrap import kafka_publisher
            from local_stack.demo import wait_for_updates
            from local_stack.replay import replay

            publisher = kafka_publisher(cfg.kafka)
            progress = stack.replay_progress()
            try:
                stats = replay(
                    frame,
                    lambda events: publisher.publish(events, timeout=30),
                    20_000.0,
                    cfg.label_delay_seconds,
                    applied=progress,
                )
            finally:
                progress.close()
                publisher.close()
            published = time.perf_counter()
            applied_then = stack.poller.processed if stack.poller is not None else 0
            wait_for_updates(stack, stats.transactions + stats.labels, timeout=900)
            # the updater's throughput with batches from the broker (the poller, the MSK trigger's
            # stand-in, hands them over): overall, where replay and apply overlap, and the drain
            # of the backlog left when the replay ended (the updater path alone)
            done = time.perf_counter()
            info["fill_events"] = stats.transactions + stats.labels
            info["fill_publish_seconds"] = published - started
            info["fill_events_per_s"] = info["fill_events"] / (done - started)
            info["fill_backlog_at_publish_end"] = info["fill_events"] - applied_then
            if done > published:
                info["fill_drain_events_per_s"] = info["fill_backlog_at_publish_end"] / (done - published)
        info["fill"] = opts.fill
        info["fill_seconds"] = time.perf_counter() - started
        info["stream_transactions"] = len(frame)
        info["stream_frauds"] = int(frame["is_fraud"].sum())

        client = redis.Redis(port=cfg.redis_port, decode_responses=True)
        card_keys = list(client.scan_iter("fs:{c:*}:e", count=1000))
        pipe = client.pipeline(transaction=False)
        for key in card_keys:
            pipe.zcard(key)
        info["cards_in_redis"] = len(card_keys)
        info["card_events_in_redis"] = int(sum(pipe.execute()))
        info["merchants_in_redis"] = sum(1 for _ in client.scan_iter("fs:{m:*}:e", count=1000))
        info["redis_keys"] = int(client.dbsize())
        info["redis_used_memory_mb"] = int(client.info("memory")["used_memory"]) / 2**20
        client.close()

        end = int(frame["event_time"].max())
        recent = frame[frame["event_time"] >= end - 7 * 86_400]
        rng = np.random.default_rng(opts.seed)
        rows: list[dict[Any, Any]] = recent.iloc[rng.integers(0, len(recent), opts.templates)].to_dict(
            "records"
        )
        offsets = rng.integers(LIVE_OFFSET, 2 * LIVE_OFFSET, len(rows))
        templates = [_body(row, end + int(dt), TXID) for row, dt in zip(rows, offsets, strict=True)]
        last_per_card: pd.DataFrame = recent.drop_duplicates("cc_num", keep="last")
        fresh_rows: list[dict[Any, Any]] = last_per_card.sample(frac=1.0, random_state=opts.seed).to_dict(
            "records"
        )
        fresh = [_body(row, end + FRESHNESS_OFFSET + k, f"fresh-{k:05d}") for k, row in enumerate(fresh_rows)]
        (opts.workdir / "templates.json").write_text(json.dumps(templates))
        (opts.workdir / "freshness.json").write_text(json.dumps(fresh))
        # the setup's data (the stream, the training run) is the bench's, not the stack's: out of
        # the collector's sight, as ``LocalStack.up`` puts its own, so that the API measured is
        # the one ``fraudsys local up`` runs
        freeze_heap()
        (opts.workdir / "ready.json").write_text(json.dumps(info))
        print("ready", json.dumps(info), flush=True)
        deadline = time.monotonic() + opts.max_seconds
        while not stop.wait(1.0):
            stack.check()
            if time.monotonic() > deadline:
                print("max-seconds reached: stopping", flush=True)
                break
    finally:
        stack.down()


# --------------------------------------------------------------------------- the client side


@dataclass
class Server:
    """The API process as seen by the client: its pid, URL and what it reported when ready."""

    process: "subprocess.Popen[bytes]"
    info: dict[str, Any]
    templates: list[bytes]
    freshness: list[dict[str, Any]]
    log: Path

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = str(self.info["api"]).removeprefix("http://").split(":")
        return host, int(port)

    def body(self, name: str, i: int) -> bytes:
        """Template ``i`` with a new transaction id (``[A-Za-z0-9_.:-]``) made of ``name`` and ``i``."""
        slug = "".join(c if c.isalnum() else "_" for c in name)[:40]
        return self.templates[i % len(self.templates)].replace(TXID.encode(), f"{slug}-{i:07d}".encode())


@contextlib.contextmanager
def api_server(opts: ServerOptions, ready_timeout: float = 900.0) -> Iterator[Server]:
    """Start the API process, wait until it is ready, yield it; stop it on exit (stdin closed,
    then SIGTERM, then SIGKILL)."""
    opts.workdir.mkdir(parents=True, exist_ok=True)
    log = opts.workdir / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"} | dict(kv.split("=", 1) for kv in opts.env)
    with log.open("ab") as out:
        process = subprocess.Popen(  # a fixed argv list, no shell  # nosec B603
            [sys.executable, "-m", "bench.http.server", *opts.argv()],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env=env,
        )
    try:
        ready = opts.workdir / "ready.json"
        deadline = time.monotonic() + ready_timeout
        while not ready.exists():
            if process.poll() is not None:
                raise RuntimeError(f"the API process exited with {process.returncode}; log: {log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the API process was not ready after {ready_timeout:.0f} s; log: {log}")
            time.sleep(0.5)
        info = json.loads(ready.read_text())
        templates = [
            json.dumps(b).encode() for b in json.loads((opts.workdir / "templates.json").read_text())
        ]
        fresh = json.loads((opts.workdir / "freshness.json").read_text())
        yield Server(process, info, templates, fresh, log)
    finally:
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def api_pids(pid: int) -> list[int]:
    """The API process, its API worker processes (``local_stack.workers``, spawned children) and
    their scorer instance processes (``local_stack.instance``): the API Gateway and the Lambda;
    not redis-server, the broker, the local S3 or the archiver, which it also starts."""
    parents = {p: parent_pid(p) for p in process_tree(pid) if p != pid}
    commands = {p: " ".join(process_cmdline(p)) for p in parents}
    workers = [p for p, parent in parents.items() if parent == pid and "multiprocessing.spawn" in commands[p]]
    fronts = {pid, *workers}
    instances = [
        p for p, parent in parents.items() if parent in fronts and "local_stack.instance" in commands[p]
    ]
    return [pid, *workers, *instances]


def rss_mb(pid: int) -> float:
    """Resident memory of the API process, its workers and their instances (``api_pids``)."""
    total = sum(usage[0] for p in api_pids(pid) if (usage := process_usage(p)) is not None)
    return total / 2**20 if total else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the API process, its workers and their instances (``api_pids``:
    all their threads)."""
    return sum(usage[1] for p in api_pids(pid) if (usage := process_usage(p)) is not None)


def add_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cards", type=int, default=1200)
    p.add_argument("--merchants", type=int, default=400)
    p.add_argument("--days", type=int, default=45)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--model", choices=("pipeline", "test"), default="pipeline")
    p.add_argument("--fill", choices=("direct", "broker"), default="direct")
    p.add_argument("--batching-window", type=float, default=None, help="poller window (default: CDK dev)")
    p.add_argument("--batch-size", type=int, default=None, help="poller batch size (default: CDK dev)")
    p.add_argument("--pointer-ttl", type=float, default=30.0, help="MODEL_POINTER_TTL_SECONDS")
    p.add_argument("--templates", type=int, default=4000)
    p.add_argument("--max-seconds", type=float, default=3600.0, help="the API process stops after this")
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment of the API process (e.g. OMP_NUM_THREADS=1), not one the stack sets "
        "for the handlers (local_stack.stack.handler_environment); repeatable",
    )
    p.add_argument("--workdir", type=Path, default=None, help="default: a new temporary folder")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--api-workers", type=int, default=1, help="API processes (StackConfig.api_workers)")
    p.add_argument(
        "--publish-mode",
        choices=("sync", "background"),
        default="background",
        help="PUBLISH_MODE of the scorer (StackConfig.publish_mode)",
    )
    p.add_argument("--deadline-ms", type=float, default=250.0, help="the API's deadline per request")
    p.add_argument("--max-queue", type=int, default=128, help="requests an API process queues at most")
    p.add_argument(
        "--broker-roll-records",
        type=int,
        default=DEFAULT_BROKER_ROLL_RECORDS,
        help="restart the broker with an empty log past this many records "
        "(StackConfig.broker_roll_records; 0: never)",
    )
    p.add_argument(
        "--api-thread",
        action="store_true",
        help="run the handler on the API process's own thread, not in an instance process of its own "
        "(StackConfig.api_instance_process)",
    )


def refused_server_env(env: Sequence[str]) -> list[str]:
    """The ``--server-env`` keys that ``LocalStack.up()`` sets for the handlers itself
    (``handler_environment``), where a value given here would be silently lost; the stack reads
    POWERTOOLS_LOG_LEVEL from the environment, so that one may be set."""
    from local_stack.stack import StackConfig, handler_environment

    stack_sets = handler_environment(StackConfig()).keys() - {"POWERTOOLS_LOG_LEVEL"}
    return sorted({kv.split("=", 1)[0] for kv in env} & stack_sets)


def server_options(args: argparse.Namespace, workdir: Path) -> ServerOptions:
    if refused := refused_server_env(args.server_env):
        raise SystemExit(f"--server-env cannot set {', '.join(refused)}: the stack sets it (see --help)")
    return ServerOptions(
        workdir=workdir,
        cards=args.cards,
        merchants=args.merchants,
        days=args.days,
        seed=args.seed,
        model=args.model,
        fill=args.fill,
        batching_window=args.batching_window,
        batch_size=args.batch_size,
        pointer_ttl=args.pointer_ttl,
        templates=args.templates,
        max_seconds=args.max_seconds,
        env=tuple(args.server_env),
        api_workers=args.api_workers,
        publish_mode=args.publish_mode,
        deadline_ms=args.deadline_ms,
        max_queue=args.max_queue,
        api_thread=args.api_thread,
        broker_roll_records=args.broker_roll_records,
    )


@contextlib.contextmanager
def workdir_of(args: argparse.Namespace) -> Iterator[Path]:
    if args.workdir is not None:
        yield Path(args.workdir)
        return
    with tempfile.TemporaryDirectory(prefix="fraudsys-bench-") as tmp:
        yield Path(tmp)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="The API process of the HTTP benchmarks (see api_server).")
    p.add_argument("--serve", type=Path, required=True, help="the work folder")
    add_server_args(p)
    args = p.parse_args(argv)
    serve(server_options(args, args.serve))


if __name__ == "__main__":
    main()
