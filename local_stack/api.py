"""A local API Gateway: HTTP on 127.0.0.1 -> REST proxy events -> the real scorer handler
(``POST /predict``, ``GET /health``, ``POST /labels``).

Like one Lambda instance, it runs one invocation at a time: in a scorer instance process of its
own when it is given one (``instance``, ``local_stack.instance``: the stack's default), else on
its one handler thread (the Powertools resolver keeps the current event on the app object); the
server's event loop (uvicorn: httptools parser, uvloop) keeps reading requests meanwhile, and admits them
(``Admission``): each request gets a deadline from its arrival (``deadline_ms``, default 250 ms),
and one that would wait in a full queue (``max_queue`` requests admitted and not finished) or
could not be answered by its deadline (the queued work, estimated from each route's recent
handler times) is answered 503 with ``Retry-After`` at once, in the API's one error body. A
request whose deadline passes while it waits, or whose client goes away, is dropped before the
handler runs; inside the handler the deadline is the context's remaining time
(``handlers.deadline``: checked before the feature read and before the publish).
Extra routes served here, not by the Lambda:
``GET /metrics`` (Prometheus) and ``GET /openapi.json``. Answers of ``POST /predict`` and
``GET /health`` carry a ``Server-Timing`` header (milliseconds): ``queue`` (from the request's
arrival to the start of its invocation), ``handler`` (the invocation) and, for a score,
``score`` (``Scorer.score``), ``model`` (in it, the champion: pointer check, load when it
changed) and ``read`` (its Redis read), as ``handlers.predict.last_timings`` kept them on the
handler thread. A client can then split its latency into the handler (Redis read, the rest of scoring, and the
Powertools, validation and publish around it) and everything outside: HTTP, event building,
queueing and the client itself.

Slow or idle clients hold nothing for long: a connection must complete a request's headers within
``HEADER_TIMEOUT`` of opening (or of its request's first byte), else it is answered 408 and
closed; a body must arrive whole within ``BODY_TIMEOUT`` of its headers, else 408 in the API's
error body; at most ``MAX_CONNECTIONS`` connections and requests at once (uvicorn's
``limit_concurrency``: past it, 503).
"""

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from local_stack import metrics
from local_stack.events import LocalContext, api_gateway_event, quiet_lambda_metrics, warm_instance
from local_stack.instance import (
    Answer,
    InstanceCrashedError,
    InstanceError,
    InstanceProcess,
    InstanceUnavailableError,
    Outcome,
)

LAMBDA_ROUTES = {("POST", "/predict"), ("GET", "/health"), ("POST", "/labels")}
LOCAL_ROUTES = {"/metrics", "/openapi.json"}  # GET only, served here
MAX_BODY_BYTES = 256 * 1024
HEADER_TIMEOUT = 5.0  # seconds from a connection's opening (or a request's first byte) to its headers' end
BODY_TIMEOUT = 5.0  # seconds from a request's headers to its body's end
MAX_CONNECTIONS = 1024  # open connections and requests in flight per API process
DRAIN_BYTES = 8 * 1024 * 1024  # a too large body is read and dropped up to this size
SERVER_TIMING = "Server-Timing"
# Server-Timing name, handlers.predict.last_timings attribute
TIMED = (("score", "score_ms"), ("model", "model_ms"), ("read", "read_ms"))

#: an invocation's status, body, headers and handler time (ms)
type Invoked = tuple[int, bytes, dict[str, str], float]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyTooLargeError(Exception):
    pass


def _unavailable_response(message: str, keep_alive: bool) -> bytes:
    """A whole 503 answer (``Retry-After``, the API's error body), as bytes for the transport."""
    from handlers.deadline import retry_after

    body = _error(HTTPStatus.SERVICE_UNAVAILABLE, message)
    head = [b"HTTP/1.1 503 Service Unavailable", b"content-type: application/json"]
    head += [f"{k.lower()}: {v}".encode("latin-1") for k, v in retry_after().items()]
    head += [b"content-length: " + str(len(body)).encode()]
    if not keep_alive:
        head.append(b"connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _guarded_protocol(admission: "Admission | None" = None) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with a header deadline (``HEADER_TIMEOUT``): a connection that
    has not completed a request's headers in time (nothing sent, or a slow trickle) is answered
    408 and closed, so slow clients cannot hold connections open.

    With ``admission``: a request to a Lambda route that admission would refuse is answered 503
    as soon as its headers are parsed, in the protocol itself (the refusal the ASGI app would
    give, without building the ASGI request, its task and its messages: under overload most
    requests are refused, and this is their cost); its body is read and dropped, and a connection
    to close is closed after it. Not where uvicorn must answer (``_answerable_here``)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    answer = _error(HTTPStatus.REQUEST_TIMEOUT, f"request headers not received within {HEADER_TIMEOUT:.0f} s")
    timed_out = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        + b"content-length: "
        + str(len(answer)).encode()
        + b"\r\n\r\n"
        + answer
    )

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        header_timer: asyncio.TimerHandle | None = None
        begun = False  # a request's first bytes came, its headers' end not yet

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            # a refusal re-arms the keep-alive timer inside the read; a request that follows in
            # the same read must not run under it
            self._unset_keepalive_if_required()
            self.begun = True
            self._arm()

        refusing = False  # a request answered 503 at its headers: its body is being dropped
        refusal_keeps_alive = True  # ... and its connection stays open after it

        def on_headers_complete(self) -> None:
            self.begun = False
            self._disarm()
            if self.transport.is_closing():  # after a refusal that closed: nothing more is served
                self.refusing, self.refusal_keeps_alive = True, False
                return
            if admission is not None and self._refused_at_once(admission):
                return
            super().on_headers_complete()

        def _answerable_here(self) -> bool:
            """Whether this request may be answered from the protocol: not one that waits for
            ``100 Continue``, an upgrade, one behind an unanswered request (its answer goes
            first), one for a client that does not read (uvicorn's send waits for it), nor one
            past the connection cap (uvicorn answers it 503 and closes the connection)."""
            if self.expect_100_continue or self.pipeline or self.parser.should_upgrade():
                return False
            if (self.cycle is not None and not self.cycle.response_complete) or self.flow.write_paused:
                return False
            cap = self.limit_concurrency
            return cap is None or (len(self.connections) < cap and len(self.tasks) < cap)

        def _refused_at_once(self, admission: "Admission") -> bool:
            if not self._answerable_here():
                return False
            method = self.parser.get_method().decode("ascii", "replace")
            path = self.url.decode("latin-1")
            if (method, path) not in LAMBDA_ROUTES:
                return False
            reason = admission.refusal(path, time.monotonic())
            if reason is None:
                return False
            metrics.SHED.labels(route=path, reason="refused").inc()
            http_11 = self.parser.get_http_version() == "1.1"
            self.refusal_keeps_alive = http_11 and self.parser.should_keep_alive()
            self.transport.write(_unavailable_response(reason, self.refusal_keeps_alive))
            # the connection is closed (if asked) once the body is read: closed with unread data,
            # it would be reset, and the client could lose the answer
            self.refusing = True
            self._arm()  # a body that never ends closes the connection at HEADER_TIMEOUT
            return True

        def on_body(self, body: bytes) -> None:
            if not self.refusing:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if not self.refusing:
                super().on_message_complete()
                return
            self.refusing = False
            self._disarm()
            if not self.refusal_keeps_alive:
                self.server_state.total_requests += 1
                self.transport.close()
                return
            self.on_response_complete()  # keep-alive timer, next pipelined request

        def shutdown(self) -> None:
            if self.refusing:  # closed once the refused request's body is read (or at its timer)
                self.refusal_keeps_alive = False
                return
            super().shutdown()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self.header_timer = self.loop.call_later(HEADER_TIMEOUT, self._headers_too_slow)

        def _disarm(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _headers_too_slow(self) -> None:
            self.header_timer = None
            if self.refusing:  # answered already; its body did not come whole in time
                self.transport.close()
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being answered (its headers came): the body has its own timeout
            if not self.transport.is_closing():
                if self.begun:  # a partial request is answered; a connection that sent nothing is just closed
                    self.transport.write(timed_out)
                self.transport.close()

    return GuardedHttpToolsProtocol


def _error(status: HTTPStatus, message: str) -> bytes:
    """The API's error body (``handlers.errors``), for the answers this server gives itself."""
    from handlers.errors import error_body

    return json.dumps(error_body(status.value, message)).encode()


#: a route's handler time before its first invocation was measured (ms)
FIRST_ESTIMATE_MS = 5.0
#: weight of the latest measure in the moving averages (a route's handler time, the pace)
ESTIMATE_WEIGHT = 0.1
#: a request is admitted when the estimates say it ends within this share of its deadline: the
#: rest is slack for the estimates' error (the pace changes with the machine's load), so that
#: an admitted request is answered in time rather than dropped when its deadline passes. The
#: queue it allows must also outlast the gaps of bursty arrivals: with a quarter (~60 ms of work
#: at 250 ms), 256 clients sending together every 100 ms (hey) left the instance idle between
#: bursts, 438 answers/s against 632 with half (docs/benchmarks-http.md)
ADMIT_WITHIN = 0.5


def _settle(future: "asyncio.Future[Outcome | BaseException]", outcome: "Outcome | BaseException") -> None:
    if not future.done():
        future.set_result(outcome)


def run_invocation(
    method: str, path: str, body: str | None, headers: dict[str, str], context: LocalContext
) -> "Answer":
    """The real handler on a REST proxy event: status, body, headers, the score's timings
    (``handlers.predict.last_timings``) and the handler's time in seconds. Runs where the
    handler lives: the instance process, or the API's handler thread."""
    from handlers.predict import handler, last_timings

    event = api_gateway_event(method, path, body, headers)
    started = time.perf_counter()
    last_timings.__dict__.clear()
    try:
        result = handler(event, context)
    finally:
        quiet_lambda_metrics()
    added = dict(last_timings.__dict__)
    elapsed = time.perf_counter() - started
    status = int(result.get("statusCode", 500))
    payload = (result.get("body") or "").encode()
    # Powertools answers a REST event with multiValueHeaders (Retry-After, Allow...)
    out_headers = {k: str(v[0]) for k, v in (result.get("multiValueHeaders") or {}).items() if v}
    out_headers |= {k: str(v) for k, v in (result.get("headers") or {}).items()}
    return status, payload, out_headers, added, elapsed


@dataclass
class Ticket:
    """One admitted request: its deadline (``time.monotonic()``), its handler time estimate, when
    the handler thread took it (``started``), and whether its client has gone away (set by the
    event loop)."""

    route: str
    arrived: float
    deadline: float
    estimate_ms: float
    gone: threading.Event = field(default_factory=threading.Event)
    started: float | None = None

    def expired(self) -> bool:
        return self.gone.is_set() or time.monotonic() >= self.deadline


@dataclass
class Admission:
    """Admission control of one handler thread (used from the event loop only: no lock).

    ``admit`` refuses (returns the reason) when ``max_queue`` requests are admitted and not
    finished, or when a request admitted now would not end within ``ADMIT_WITHIN`` of its
    deadline: the requests ahead of it, each taking ``drain_ms`` (the handler thread's measured
    pace while requests wait: from one start to the next, everything included), then its own
    handler time (each route's moving average). An idle handler takes any request, so a slow
    spell cannot make the estimates refuse everything for ever."""

    deadline_ms: float = 250.0
    max_queue: int = 128
    outstanding: int = 0
    drain_ms: float = FIRST_ESTIMATE_MS
    estimates_ms: dict[str, float] = field(default_factory=dict)
    last_started: float | None = None

    def admit(self, route: str, arrived: float) -> Ticket | str:
        reason = self.refusal(route, arrived)
        if reason is not None:
            return reason
        self.outstanding += 1
        estimate = self.estimates_ms.get(route, FIRST_ESTIMATE_MS)
        return Ticket(route, arrived, arrived + self.deadline_ms / 1000, estimate)

    def refusal(self, route: str, arrived: float) -> str | None:
        """Why a request arrived at ``arrived`` would be refused now, or None (nothing changes)."""
        if self.outstanding >= self.max_queue:
            return f"overloaded: {self.outstanding} requests queued"
        if not self.outstanding:
            return None
        estimate = self.estimates_ms.get(route, FIRST_ESTIMATE_MS)
        ahead_ms = self.outstanding * self.drain_ms
        admit_by = arrived + ADMIT_WITHIN * self.deadline_ms / 1000
        if time.monotonic() + (ahead_ms + estimate) / 1000 > admit_by:
            return (
                f"overloaded: the {self.outstanding} requests queued (~{ahead_ms:.0f} ms) leave "
                f"no time to answer within the {self.deadline_ms:g} ms deadline"
            )
        return None

    def finished(self, ticket: Ticket, handler_ms: float | None) -> None:
        """``handler_ms``: the invocation's time, None if the request was dropped before it.
        Tickets finish in the order the one handler thread started them."""
        self.outstanding -= 1
        if ticket.started is not None:
            if self.last_started is not None and ticket.arrived <= self.last_started:
                # it waited while the one before ran: the thread went from that one to this one
                pace = (ticket.started - self.last_started) * 1000
                self.drain_ms += ESTIMATE_WEIGHT * (pace - self.drain_ms)
            self.last_started = ticket.started
        if handler_ms is not None:
            old = self.estimates_ms.get(ticket.route, handler_ms)
            self.estimates_ms[ticket.route] = old + ESTIMATE_WEIGHT * (handler_ms - old)


class LocalApi:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        reuse_port: bool = False,
        bind: bool = True,
        deadline_ms: float = 250.0,
        max_queue: int = 128,
        max_connections: int = MAX_CONNECTIONS,
        instance: InstanceProcess | None = None,
    ) -> None:
        """``instance``: run the handler in that process (started by ``warm``), as a Lambda
        instance runs apart from API Gateway; None: on this process's handler thread."""
        import uvicorn

        if deadline_ms <= 0 or max_queue < 1:
            raise ValueError("the deadline must be positive and the queue hold at least one request")
        self.instance = instance
        if instance is None:
            warm_instance()  # no ColdStart EMF line on the terminal
        self.lock = threading.Lock()
        self.context = LocalContext("fraudsys-scorer")
        self.admission = Admission(deadline_ms, max_queue)
        # one invocation at a time, like one Lambda instance, off the event loop
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-api-handler")
        self.host = host
        self.port = port
        self.reuse_port = reuse_port
        self.socket: socket.socket | None = None
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.asgi,
                loop="uvloop",
                http=_guarded_protocol(self.admission),
                limit_concurrency=max_connections,
                interface="asgi3",
                lifespan="off",
                proxy_headers=False,
                access_log=False,
                log_level="warning",
                server_header=False,
                date_header=False,
                timeout_graceful_shutdown=2,
                timeout_keep_alive=60,  # idle keep-alive connections (uvicorn default: 5 s)
            )
        )
        if bind:
            self.bind()
        self.thread = threading.Thread(target=self._run, name="local-api", daemon=True)

    # ------------------------------------------------------------------------------- the ASGI app

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        arrived = time.monotonic()
        method: str = scope["method"]
        path: str = scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            raw = await asyncio.wait_for(self._body(receive), BODY_TIMEOUT)
        except TimeoutError:
            status = HTTPStatus.REQUEST_TIMEOUT
            message = f"request body not received within {BODY_TIMEOUT:.0f} s"
            closing = [(b"connection", b"close")]
            await self._send(send, status.value, _error(status, message), extra_headers=closing)
            return
        except BodyTooLargeError:
            status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
            message = f"request body too large: at most {MAX_BODY_BYTES} bytes"
            await self._send(send, status.value, _error(status, message))
            return
        if method == "GET" and path == "/metrics":
            await self._send(send, 200, metrics.exposition(), CONTENT_TYPE_LATEST)
            return
        if method == "GET" and path == "/openapi.json":
            from handlers.predict import app

            await self._send(send, 200, app.get_openapi_json_schema().encode())
            return
        if (method, path) not in LAMBDA_ROUTES:
            from handlers.errors import ROUTES, route_not_found

            if path in LOCAL_ROUTES and path not in ROUTES:
                status = HTTPStatus.METHOD_NOT_ALLOWED
                message, allow = f"{method} {path}: {status.phrase} (allowed: GET)", {"Allow": "GET"}
            else:
                status, message, allow = route_not_found(method, path)
            allow_header = [(k.lower().encode(), v.encode()) for k, v in allow.items()]
            await self._send(send, status.value, _error(status, message), extra_headers=allow_header)
            return
        await self._lambda_route(method, path, raw, headers, arrived, receive, send)

    async def _lambda_route(
        self,
        method: str,
        path: str,
        raw: bytes,
        headers: dict[str, str],
        arrived: float,
        receive: Receive,
        send: Send,
    ) -> None:
        """Admission, then the invocation on the handler thread (or the 503 that sheds it)."""
        body = raw.decode("utf-8", errors="replace") if raw else None
        ticket = self.admission.admit(path, arrived)
        if isinstance(ticket, str):
            metrics.SHED.labels(route=path, reason="refused").inc()
            await self._send_unavailable(send, ticket)
            return
        outcome: Invoked | str = "client_gone"
        try:
            if self.instance is not None:
                outcome = await self._in_instance(self.instance, ticket, method, path, body, headers, receive)
            else:
                watcher = asyncio.ensure_future(self._watch_disconnect(receive, ticket))
                try:
                    outcome = await asyncio.get_running_loop().run_in_executor(
                        self.executor, self._invoke_admitted, ticket, method, path, body, headers
                    )
                finally:
                    watcher.cancel()
        except InstanceUnavailableError as exc:  # its instance is starting again: none to run it
            metrics.SHED.labels(route=path, reason="no_instance").inc()
            await self._send_unavailable(send, str(exc))
            return
        except (InstanceCrashedError, InstanceError) as exc:
            # API Gateway answers a Lambda that crashed or raised with 502
            status = HTTPStatus.BAD_GATEWAY
            await self._send(send, status.value, _error(status, str(exc)))
            return
        finally:
            self.admission.finished(ticket, None if isinstance(outcome, str) else outcome[3])
        if isinstance(outcome, str):  # dropped before the handler ran
            metrics.SHED.labels(route=path, reason=outcome).inc()
            if outcome != "client_gone":
                await self._send_unavailable(send, "deadline exceeded while queued: not done, retry later")
            return
        code, payload, out_headers, _ = outcome
        content_type = out_headers.pop("Content-Type", "application/json")
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in out_headers.items()]
        await self._send(send, code, payload, content_type, extra)

    async def _in_instance(
        self,
        instance: InstanceProcess,
        ticket: Ticket,
        method: str,
        path: str,
        body: str | None,
        headers: dict[str, str],
        receive: Receive,
    ) -> "Invoked | str":
        """The request sent to the instance process at once (it takes them in order), its
        outcome awaited: the answer, or why it was not run (``expired``, ``client_gone``)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome | BaseException] = loop.create_future()

        def settle(outcome: Outcome | BaseException) -> None:  # on the instance's reader thread
            loop.call_soon_threadsafe(_settle, future, outcome)

        slot = instance.submit(method, path, body, headers, ticket.deadline, settle)
        watcher = asyncio.ensure_future(
            self._watch_disconnect(receive, ticket, lambda: instance.cancel(slot))
        )
        try:
            try:
                # its deadline passes before the instance takes it: answered now, and skipped there
                remaining = ticket.deadline - time.monotonic()
                result = await asyncio.wait_for(asyncio.shield(future), max(remaining, 0.0))
            except TimeoutError:
                if not instance.taken(slot):
                    instance.cancel(slot)
                    return "expired"
                result = await future  # running: its handler's own deadline checks end it
        finally:
            watcher.cancel()
        if isinstance(result, BaseException):
            raise result
        ticket.started, answer = instance.checked(result)
        if isinstance(answer, str):
            return answer
        code, payload, out_headers = self._record(path, answer)
        queued = f"queue;dur={(ticket.started - ticket.arrived) * 1000:.3f}"
        out_headers[SERVER_TIMING] = f"{queued}, {out_headers[SERVER_TIMING]}"
        return code, payload, out_headers, answer[4] * 1000

    @staticmethod
    async def _watch_disconnect(
        receive: Receive, ticket: Ticket, on_gone: Callable[[], None] | None = None
    ) -> None:
        """Marks the ticket when the client goes away (the request's body has been read: the next
        message is the disconnect)."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                ticket.gone.set()
                if on_gone is not None:
                    on_gone()
                return

    async def _send_unavailable(self, send: Send, message: str) -> None:
        from handlers.deadline import retry_after

        status = HTTPStatus.SERVICE_UNAVAILABLE
        headers = [(k.lower().encode(), v.encode()) for k, v in retry_after().items()]
        await self._send(send, status.value, _error(status, message), extra_headers=headers)

    def _invoke_admitted(
        self, ticket: Ticket, method: str, path: str, body: str | None, headers: dict[str, str]
    ) -> "Invoked | str":
        """On the handler thread: the invocation with the ticket's deadline, or (not invoked) why
        not: ``expired`` or ``client_gone``."""
        ticket.started = started = time.monotonic()
        if ticket.gone.is_set():
            return "client_gone"
        if started >= ticket.deadline:
            return "expired"
        context = LocalContext("fraudsys-scorer", deadline=ticket.deadline, gone=ticket.gone.is_set)
        code, payload, out_headers = self.invoke(method, path, body, headers, context)
        handler_ms = (time.monotonic() - started) * 1000
        queued = f"queue;dur={(started - ticket.arrived) * 1000:.3f}"
        out_headers[SERVER_TIMING] = f"{queued}, {out_headers[SERVER_TIMING]}"
        return code, payload, out_headers, handler_ms

    @staticmethod
    async def _body(receive: Receive) -> bytes:
        """The request body, or ``BodyTooLargeError`` past ``MAX_BODY_BYTES``. A too large body is
        still read (and dropped, up to ``DRAIN_BYTES``): a socket closed with unread data is reset,
        and the client would see the reset instead of the 413."""
        chunks: list[bytes] = []
        size = 0
        while size <= DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                break
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size <= MAX_BODY_BYTES:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if size > MAX_BODY_BYTES:
            raise BodyTooLargeError
        return b"".join(chunks)

    @staticmethod
    async def _send(
        send: Send,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type.encode("latin-1")),
                    (b"content-length", str(len(body)).encode()),
                    *(extra_headers or ()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    # ------------------------------------------------------------------------ one Lambda invocation

    def invoke(
        self,
        method: str,
        path: str,
        body: str | None,
        headers: dict[str, str],
        context: LocalContext | None = None,
    ) -> tuple[int, bytes, dict[str, str]]:
        """One invocation: in the instance process when there is one, else on this thread."""
        context = context or self.context
        if self.instance is not None:
            answer = self.instance.invoke(method, path, body, headers, context.deadline)
        else:
            with self.lock:
                answer = run_invocation(method, path, body, headers, context)
        return self._record(path, answer)

    @staticmethod
    def _record(path: str, answer: "Answer") -> tuple[int, bytes, dict[str, str]]:
        """The invocation's metrics (``/metrics``) and ``Server-Timing``; its status, body, headers."""
        status, payload, out_headers, added, elapsed = answer
        metrics.REQUEST_LATENCY.labels(route=path, status=str(status)).observe(elapsed)
        if path == "/predict" and status == 200:
            scored = json.loads(payload)
            metrics.DECISIONS.labels(
                is_fraud=str(scored["is_fraud"]).lower(), degraded=str(scored["degraded"]).lower()
            ).inc()
            metrics.FRAUD_PROBABILITY.observe(scored["fraud_probability"])
        timings = [f"handler;dur={elapsed * 1000:.3f}"]
        timings += [f"{name};dur={added[key]:.3f}" for name, key in TIMED if key in added]
        out_headers[SERVER_TIMING] = ", ".join(timings)
        return status, payload, out_headers

    # ------------------------------------------------------------------------------ the server

    def bind(self) -> None:
        """Bind and listen (``bind=False`` defers it, e.g. until ``warm`` has run)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.host, self.port))
        sock.listen(1024)
        sock.setblocking(False)
        self.socket = sock
        self.port = int(sock.getsockname()[1])

    def warm(self) -> None:
        """Cold start before serving: the champion, Redis (``GET /health``) and the Kafka producer
        (in the instance process, when there is one: it warms itself)."""
        if self.instance is not None:
            if not self.instance.alive():
                self.instance.start()
            return
        from handlers import bootstrap

        self.invoke("GET", "/health", None, {})
        bootstrap.publisher().warm()

    def _run(self) -> None:
        if self.socket is None:
            raise RuntimeError("LocalApi.bind() before start()")
        # uvicorn installs signal handlers only on the main thread: this thread leaves them alone
        self.server.run(sockets=[self.socket])

    def start(self, timeout: float = 30.0) -> "LocalApi":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the local API did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(5)
        elif self.socket is not None:
            self.socket.close()
        self.executor.shutdown(wait=True, cancel_futures=True)
        if self.instance is not None:
            self.instance.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
