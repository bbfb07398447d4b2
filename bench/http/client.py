"""The HTTP clients of the benchmarks: open loop (a fixed schedule, no coordinated omission),
closed loop (N clients, each waiting for its answer), and the feature-freshness probe; asyncio,
raw HTTP/1.1 on keep-alive connections with ``TCP_NODELAY``."""

import asyncio
import http.client
import json
import random
import socket
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

import numpy as np

from bench.http.analysis import Run, server_timing
from bench.http.server import Server, cpu_seconds

#: the clients' event loop: "uvloop" (the server's too, and the default: the client shares the
#: machine with the server it measures, so the less CPU it takes per request the less it is late
#: at high rates), or "asyncio" (the standard library's)
CLIENT_LOOPS = ("uvloop", "asyncio")


def run_client[T](main: Coroutine[Any, Any, T], loop: str = "uvloop") -> T:
    """Run a client coroutine on its own event loop (``CLIENT_LOOPS``)."""
    if loop == "uvloop":
        import uvloop

        return asyncio.run(main, loop_factory=uvloop.new_event_loop)
    return asyncio.run(main)


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

    cpu0, client_cpu0 = cpu_seconds(server.pid), time.process_time()
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
    run.client_cpu_s = time.process_time() - client_cpu0
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
    run_client(open_loop(server, "warmup", 100.0, seconds))
