"""Scoring latency over HTTP through the local API Gateway, and end-to-end feature freshness.

The API process (a child process, so that the load client never shares its interpreter lock)
runs ``LocalStack`` (redis-server, the tansu Kafka broker, moto S3, the local API Gateway in
front of the real scorer handler, and the local MSK poller in front of the real updater), trains
a real champion with ``training.pipeline.run_pipeline`` (small tuning config; ``--model test``
publishes ``tests.support.models.publish_test_model_to`` instead) on a simulated stream of
1,200 cards x 45 days, and fills Redis with that stream: directly through
``RedisFeatureStore.apply`` in 500-event batches (``--fill direct``, the default) or by replaying
it into the broker for the poller and the updater handler (``--fill broker``).

The client (this process, asyncio, keep-alive HTTP/1.1 connections) then measures:

* open loop: requests sent on a fixed schedule at ``--rate`` per second for ``--duration`` s,
  whatever the answers do (no coordinated omission); latency from send to the full answer, and
  from the scheduled time (adds client lag and waiting for a free connection); each answer's
  ``Server-Timing`` splits it into the handler (in it ``Scorer.score``, in that the Redis read)
  and the time outside the handler;
* saturation: closed loop with N concurrent clients, each sending its next request as soon as
  the previous one is answered;
* freshness: a transaction scored with ``POST /predict`` (the scorer publishes it to Kafka,
  before answering with ``--publish-mode sync``, within ``PUBLISH_LINGER_MS`` after with
  ``background``) -> poller -> updater -> Redis; time until ``RedisFeatureStore.read`` for
  the next request sees the card's count rise, polled every 2 ms, one sample at a time with a
  random pause between samples (so samples fall anywhere in the poller's batching window).

Every scored request is a new transaction at a time after the filled history; the scorer
publishes it, so the updater is applying the live stream during the measurements too.

    uv run python -m bench.http_latency [--api-workers 2] [--publish-mode background]
        [--rate 200] [--duration 60] [--json out.json]
"""

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import parent_pid, process_cmdline, process_tree, process_usage, write_json

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGET_P99_MS = 5.0
LIVE_OFFSET = 3600  # live requests: between 1 h and 2 h after the last filled transaction
FRESHNESS_OFFSET = 60  # freshness probes: 60 s + k after it (before every live request)
TXID = "__TXID__"
PEERS = (
    ("Feast Python server + Redis (1 entity, 50 features)", "8.8", "15.3"),
    ("Feast Go server + Redis", "1.4", "2.6"),
    ("Tecton (published)", "", "29"),
    ("FraudSys original claim", "", "< 100"),
)


# --------------------------------------------------------------------------- the API process


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
    publish_mode: str = "sync"  # StackConfig.publish_mode: the scorer waits for Kafka, or not
    deadline_ms: float = 250.0  # StackConfig.request_deadline_ms: the API's deadline per request
    max_queue: int = 128  # StackConfig.api_max_queue: requests an API process queues at most

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
            [sys.executable, "-m", "bench.http_latency", *opts.argv()],
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
    """The API process and its API worker processes (``local_stack.workers``, spawned children);
    not redis-server, the broker or moto, which it also starts."""
    return [pid] + [
        p
        for p in process_tree(pid)
        if p != pid and parent_pid(p) == pid and "multiprocessing.spawn" in " ".join(process_cmdline(p))
    ]


def rss_mb(pid: int) -> float:
    """Resident memory of the API process and its workers."""
    total = sum(usage[0] for p in api_pids(pid) if (usage := process_usage(p)) is not None)
    return total / 2**20 if total else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the API process and its workers (all their threads)."""
    return sum(usage[1] for p in api_pids(pid) if (usage := process_usage(p)) is not None)


class HttpConnection:
    """One keep-alive HTTP/1.1 connection (TCP_NODELAY), opened on first use."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes, dict[str, float]]:
        """Status, body, and the server's ``Server-Timing`` durations (ms; empty if absent)."""
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            sock = self.writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        response_head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(response_head[9:12])
        length = 0
        timing: dict[str, float] = {}
        for line in response_head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                length = int(value)
            elif key == b"server-timing":
                timing = server_timing(value)
        payload = await self.reader.readexactly(length) if length else b""
        return status, payload, timing

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def server_timing(value: bytes) -> dict[str, float]:
    """``handler;dur=1.2, read;dur=0.3`` (``Server-Timing``) -> ``{"handler": 1.2, "read": 0.3}``;
    entries without a readable ``dur`` are left out."""
    out: dict[str, float] = {}
    for metric in value.split(b","):
        name, *params = (part.strip() for part in metric.split(b";"))
        for param in params:
            key, _, number = param.partition(b"=")
            if key.strip() == b"dur" and name:
                try:
                    out[name.decode("latin-1")] = float(number)
                except ValueError:
                    continue
    return out


@dataclass
class Run:
    """Per-request results of one load phase (times in seconds from ``time.perf_counter``)."""

    name: str
    scheduled: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)
    ok: list[bool] = field(default_factory=list)
    status: list[str] = field(default_factory=list)  # each request's status code, or the error's name
    timings: list[dict[str, float]] = field(default_factory=list)  # Server-Timing of each answer
    statuses: Counter[str] = field(default_factory=Counter)
    started: float = 0.0
    finished: float = 0.0
    server_cpu_s: float = 0.0
    unsent: int = 0

    def record(
        self, scheduled: float, sent: float, done: float, status: str, timing: dict[str, float] | None = None
    ) -> None:
        self.scheduled.append(scheduled)
        self.timings.append(timing or {})
        self.sent.append(sent)
        self.done.append(done)
        self.ok.append(status == "200")
        self.status.append(status)
        self.statuses[status] += 1

    @property
    def errors(self) -> int:
        return self.ok.count(False)

    def summary(self, select: "Sequence[int] | np.typing.NDArray[np.int64] | None" = None) -> dict[str, Any]:
        idx = np.arange(len(self.done)) if select is None else np.asarray(select, dtype=np.int64)
        if len(idx) == 0:
            return {"requests": 0}
        done, sent, sched = (np.asarray(a)[idx] for a in (self.done, self.sent, self.scheduled))
        ok = np.asarray(self.ok)[idx]
        service = (done - sent)[ok] * 1000
        from_schedule = (done - sched)[ok] * 1000
        lag = (sent - sched) * 1000
        span = float(sched.max() - sched.min()) if len(idx) > 1 else 0.0
        wall = float(done.max() - sched.min())
        out: dict[str, Any] = {
            "requests": len(idx),
            "errors": int((~ok).sum()),
            "achieved_rps": int(ok.sum()) / wall if wall > 0 else float("nan"),  # answered 200 per second
            "offered_rps": (len(idx) - 1) / span if span > 0 else float("nan"),
        }
        if len(service):
            p50, p95, p99, p999 = np.percentile(service, [50, 95, 99, 99.9])
            out |= {"p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "p99.9_ms": p999, "max_ms": service.max()}
            s50, s99 = np.percentile(from_schedule, [50, 99])
            out |= {
                "from_schedule_p50_ms": s50,
                "from_schedule_p99_ms": s99,
                "from_schedule_max_ms": from_schedule.max(),
            }
            out["client_lag_p99_ms"] = float(np.percentile(lag, 99))
            out |= self._server_timing(idx[ok], service)
        return {k: float(v) if isinstance(v, np.floating) else v for k, v in out.items()}

    def _server_timing(
        self, idx: "np.typing.NDArray[np.int64]", service: "np.typing.NDArray[np.float64]"
    ) -> dict[str, float]:
        """p50/p99 of each ``Server-Timing`` duration (``handler``, ``score``, ``read``), and the
        p99 of the time outside the handler (HTTP, queueing, the client) over the same answers."""
        out: dict[str, float] = {}
        for name in ("handler", "score", "read"):
            values = np.array([self.timings[i].get(name, math.nan) for i in idx], dtype=np.float64)
            if len(values) and not np.isnan(values).all():
                p50, p99 = np.nanpercentile(values, [50, 99])
                out |= {f"{name}_p50_ms": float(p50), f"{name}_p99_ms": float(p99)}
                if name == "handler":
                    out["outside_handler_p99_ms"] = float(np.nanpercentile(service - values, 99))
        return out

    def windows(self, seconds: float) -> list[dict[str, Any]]:
        sched = np.asarray(self.scheduled)
        if len(sched) == 0:
            return []
        t0 = self.started
        bucket = ((sched - t0) // seconds).astype(int)
        out = []
        for b in range(int(bucket.max()) + 1):
            select = np.flatnonzero(bucket == b).astype(np.int64)
            out.append({"window": f"{b * seconds:.0f}-{(b + 1) * seconds:.0f} s"} | self.summary(select))
        return out


async def post_status(conn: "HttpConnection", body: bytes, timeout: float) -> tuple[str, dict[str, float]]:
    """One ``POST /predict``: the status code as text, or the error's name (the connection is
    then closed, and reopened on its next use); and the answer's ``Server-Timing`` durations."""
    try:
        code, _, timing = await asyncio.wait_for(conn.post("/predict", body), timeout)
        return str(code), timing
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
        conn.close()
        return type(exc).__name__, {}


async def open_loop(
    server: Server,
    name: str,
    rate: float,
    duration: float,
    connections: int = 32,
    timeout: float = 5.0,
    on_tick: Callable[[float], None] | None = None,
) -> Run:
    """``rate * duration`` requests at fixed times ``start + i / rate`` (bounded count and time).

    Each request has ``timeout`` seconds in all: one that waits that long for a free connection
    (all ``connections`` busy) is counted as ``unsent``, one sent but not answered in time as a
    ``TimeoutError``; both are errors. So an overloaded server shows as errors and a steady
    achieved rate per window, not as an ever-growing client-side queue."""
    host, port = server.host_port
    # FIFO: requests rotate over every connection, like a load balancer spreading requests over
    # instances. A LIFO pool reuses the one or two most recently freed connections, which the
    # kernel pinned to one API worker process (SO_REUSEPORT balances connections, not requests).
    pool: asyncio.Queue[HttpConnection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(HttpConnection(host, port))
    run = Run(name)
    n = int(rate * duration)
    pending: set[asyncio.Task[None]] = set()

    async def one(i: int, scheduled: float) -> None:
        try:  # a request that finds no free connection within the timeout is never sent: an error
            conn = await asyncio.wait_for(pool.get(), timeout)
        except TimeoutError:
            now = time.perf_counter()
            run.record(scheduled, now, now, "unsent")
            return
        except asyncio.CancelledError:
            now = time.perf_counter()
            run.record(scheduled, now, now, "unsent")
            raise
        sent = time.perf_counter()
        status = "error"
        timing: dict[str, float] = {}
        try:
            status, timing = await post_status(conn, server.body(name, i), timeout)
        except asyncio.CancelledError:
            status = "cancelled"
            conn.close()
            raise
        finally:
            pool.put_nowait(conn)
            run.record(scheduled, sent, time.perf_counter(), status, timing)

    cpu0 = cpu_seconds(server.pid)
    run.started = start = time.perf_counter() + 0.01
    last_tick = start
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i, scheduled))
        pending.add(task)
        task.add_done_callback(pending.discard)
        if on_tick is not None and scheduled - last_tick >= 1.0:
            last_tick = scheduled
            on_tick(scheduled - start)
    if pending:
        _, late = await asyncio.wait(pending, timeout=timeout + 5)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=1.0)
    run.unsent = run.statuses["unsent"]
    run.finished = time.perf_counter()
    run.server_cpu_s = cpu_seconds(server.pid) - cpu0
    while not pool.empty():
        pool.get_nowait().close()
    return run


async def closed_loop(
    server: Server,
    name: str,
    clients: int,
    duration: float,
    max_requests: int = 200_000,
    timeout: float = 5.0,
) -> Run:
    """``clients`` connections, each sending its next request when the previous one is answered."""
    host, port = server.host_port
    run = Run(name)
    counter = iter(range(max_requests))
    cpu0 = cpu_seconds(server.pid)
    run.started = time.perf_counter()
    stop_at = run.started + duration

    async def client() -> None:
        conn = HttpConnection(host, port)
        try:
            for i in counter:
                now = time.perf_counter()
                if now >= stop_at:
                    return
                status, timing = await post_status(conn, server.body(name, i), timeout)
                run.record(now, now, time.perf_counter(), status, timing)
        finally:
            conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    run.finished = time.perf_counter()
    run.server_cpu_s = cpu_seconds(server.pid) - cpu0
    return run


def measure_freshness(server: Server, samples: int, timeout: float = 15.0, seed: int = 0) -> dict[str, Any]:
    """POST /predict of a new transaction, then poll the feature store until the card's count for
    the next request has risen; one sample at a time."""
    import redis

    from fraud_adapters.redis_store import CardHasher, RedisFeatureStore
    from handlers.settings import DEV_CARD_HASH_KEY

    host, port = server.host_port
    client = redis.Redis(port=int(server.info["redis_port"]), decode_responses=False)
    store = RedisFeatureStore(
        client, CardHasher(DEV_CARD_HASH_KEY.encode()), int(server.info["label_delay_s"])
    )
    window = float(server.info["poller_batching_window_s"])
    rng = random.Random(seed)  # pauses between samples, not security  # nosec B311
    conn = http.client.HTTPConnection(host, port, timeout=10)
    from_response: list[float] = []
    from_send: list[float] = []
    failures = 0
    try:
        for body in server.freshness[:samples]:
            t = int(datetime.fromisoformat(body["transaction_time"]).timestamp())

            def count(b: dict[str, Any] = body, t: int = t) -> int:
                return store.read(b["cc_num"], b["merchant_name"], t + 1).card(t + 1).count[-1]

            before = count()
            time.sleep(rng.uniform(0, window))  # a random phase in the poller's batching window
            sent = time.perf_counter()
            conn.request("POST", "/predict", json.dumps(body), {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            answered = time.perf_counter()
            if response.status != 200:
                failures += 1
                continue
            deadline = answered + timeout
            while count() <= before and time.perf_counter() < deadline:
                time.sleep(0.002)
            visible = time.perf_counter()
            if visible >= deadline:
                failures += 1
                continue
            from_response.append((visible - answered) * 1000)
            from_send.append((visible - sent) * 1000)
    finally:
        conn.close()
        client.close()
    out: dict[str, Any] = {"samples": len(from_response), "failures": failures, "batching_window_s": window}
    if from_response:
        for label, values in (("from_response", from_response), ("from_send", from_send)):
            p50, p99 = np.percentile(values, [50, 99])
            out |= {
                f"{label}_p50_ms": float(p50),
                f"{label}_p99_ms": float(p99),
                f"{label}_max_ms": max(values),
            }
    return out


def warm_up(server: Server, seconds: float = 5.0) -> None:
    asyncio.run(open_loop(server, "warmup", 100.0, seconds))


def fmt(row: dict[str, Any], keys: Sequence[str]) -> str:
    cells = []
    for key in keys:
        value = row.get(key, "")
        cells.append(f"{value:,.2f}" if isinstance(value, float) else str(value))
    return "| " + " | ".join(cells) + " |"


def table(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return "\n".join([*lines, *(fmt(r, keys) for r in rows)])


LATENCY_KEYS = (
    "phase",
    "requests",
    "errors",
    "achieved_rps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "p99.9_ms",
    "max_ms",
    "from_schedule_p99_ms",
    "handler_p99_ms",
    "outside_handler_p99_ms",
    "server_cpu_pct",
    "server_cpu_ms_per_req",
)


def phase_row(run: Run) -> dict[str, Any]:
    row = {"phase": run.name} | run.summary()
    wall = run.finished - run.started
    row["server_cpu_pct"] = 100 * run.server_cpu_s / wall if wall > 0 else float("nan")
    answered = sum(run.ok)  # CPU time of the API process per request answered 200
    row["server_cpu_ms_per_req"] = 1000 * run.server_cpu_s / max(answered, 1)
    row["unsent"] = run.unsent
    row["statuses"] = dict(run.statuses)
    return row


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": load[0],
        "python": sys.version.split()[0],
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


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
        default="sync",
        help="PUBLISH_MODE of the scorer (StackConfig.publish_mode)",
    )
    p.add_argument("--deadline-ms", type=float, default=250.0, help="the API's deadline per request")
    p.add_argument("--max-queue", type=int, default=128, help="requests an API process queues at most")


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
    )


@contextlib.contextmanager
def workdir_of(args: argparse.Namespace) -> Iterator[Path]:
    if args.workdir is not None:
        yield Path(args.workdir)
        return
    with tempfile.TemporaryDirectory(prefix="fraudsys-bench-") as tmp:
        yield Path(tmp)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--serve", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, default=200.0, help="open-loop requests per second")
    p.add_argument("--duration", type=float, default=60.0, help="open-loop seconds (at most 600)")
    p.add_argument("--concurrency", default="1,4,16", help="closed-loop client counts")
    p.add_argument(
        "--rate-sweep", default="", help="extra open-loop rates, e.g. 50,100 (--sweep-seconds each)"
    )
    p.add_argument("--sweep-seconds", type=float, default=20.0)
    p.add_argument("--saturation-seconds", type=float, default=15.0)
    p.add_argument("--freshness-samples", type=int, default=100)
    add_server_args(p)
    args = p.parse_args(argv)
    if args.serve is not None:
        serve(server_options(args, args.serve))
        return {}
    duration = min(args.duration, 600.0)
    results: dict[str, Any] = {
        "machine": machine(),
        "command": "uv run python -m bench.http_latency " + " ".join(sys.argv[1:]),
    }
    with workdir_of(args) as workdir, api_server(server_options(args, workdir)) as server:
        results["setup"] = server.info
        print("setup:", json.dumps(server.info, indent=1), flush=True)
        warm_up(server)
        rows = []
        run = asyncio.run(open_loop(server, f"open loop {args.rate:g}/s", args.rate, duration))
        rows.append(phase_row(run))
        results["open_loop_windows"] = run.windows(10.0)
        for rate in (float(r) for r in str(args.rate_sweep).split(",") if r):
            rows.append(
                phase_row(asyncio.run(open_loop(server, f"open loop {rate:g}/s", rate, args.sweep_seconds)))
            )
        for clients in (int(c) for c in str(args.concurrency).split(",") if c):
            run = asyncio.run(
                closed_loop(server, f"closed loop x{clients}", clients, min(args.saturation_seconds, 120.0))
            )
            rows.append(phase_row(run))
        results["phases"] = rows
        results["rss_mb_after"] = rss_mb(server.pid)
        results["freshness"] = measure_freshness(server, args.freshness_samples, seed=args.seed)
    open_p99 = rows[0].get("p99_ms", float("inf"))
    results["target"] = {
        "what": f"HTTP p99 < {TARGET_P99_MS} ms at {args.rate:g} req/s",
        "measured_p99_ms": open_p99,
        "met": bool(open_p99 < TARGET_P99_MS and rows[0]["errors"] == 0),
    }
    print(table(rows, LATENCY_KEYS))
    print("open loop per 10 s:")
    window_keys = (
        *("window", "requests", "errors", "p50_ms", "p99_ms", "max_ms"),
        *("handler_p99_ms", "score_p99_ms", "read_p99_ms", "outside_handler_p99_ms"),
    )
    print(table(results["open_loop_windows"], window_keys))
    print("freshness:", json.dumps(results["freshness"]))
    print("target:", json.dumps(results["target"]))
    return write_json(args.json, results)


if __name__ == "__main__":
    main()
