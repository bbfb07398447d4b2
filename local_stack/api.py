"""A local API Gateway: HTTP on 127.0.0.1 -> REST proxy events -> the real scorer handler
(``POST /predict``, ``GET /health``, ``POST /labels``).

Like one Lambda instance, it runs one invocation at a time: the handler runs on the server's
event loop, so requests on other connections wait their turn (the Powertools resolver keeps the
current event on the app object). The HTTP server is uvicorn (httptools parser, uvloop).
Extra routes served here, not by the Lambda:
``GET /metrics`` (Prometheus) and ``GET /openapi.json``. Answers of ``POST /predict`` and
``GET /health`` carry a ``Server-Timing`` header (milliseconds): ``handler`` (the invocation,
with the wait for this worker's lock) and, for a score, ``score`` (``Scorer.score``), ``model``
(in it, the champion: pointer check, load when it changed) and ``read`` (its Redis read), as
``handlers.predict.last_timings`` kept them on this thread. A
client can then split its latency into the handler (Redis read, the rest of scoring, and the
Powertools, validation and publish around it) and everything outside: HTTP, event building,
queueing and the client itself.
"""

import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from local_stack import metrics
from local_stack.events import LocalContext, api_gateway_event, quiet_lambda_metrics, warm_instance

LAMBDA_ROUTES = {("POST", "/predict"), ("GET", "/health"), ("POST", "/labels")}
LOCAL_ROUTES = {"/metrics", "/openapi.json"}  # GET only, served here
MAX_BODY_BYTES = 256 * 1024
DRAIN_BYTES = 8 * 1024 * 1024  # a too large body is read and dropped up to this size
SERVER_TIMING = "Server-Timing"
# Server-Timing name, handlers.predict.last_timings attribute
TIMED = (("score", "score_ms"), ("model", "model_ms"), ("read", "read_ms"))

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyTooLargeError(Exception):
    pass


def _error(status: HTTPStatus, message: str) -> bytes:
    """The API's error body (``handlers.errors``), for the answers this server gives itself."""
    from handlers.errors import error_body

    return json.dumps(error_body(status.value, message)).encode()


class LocalApi:
    def __init__(
        self, host: str = "127.0.0.1", port: int = 8080, reuse_port: bool = False, bind: bool = True
    ) -> None:
        import uvicorn

        warm_instance()  # no ColdStart EMF line on the terminal
        self.lock = threading.Lock()
        self.context = LocalContext("fraudsys-scorer")
        self.host = host
        self.port = port
        self.reuse_port = reuse_port
        self.socket: socket.socket | None = None
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.asgi,
                loop="uvloop",
                http="httptools",
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
        method: str = scope["method"]
        path: str = scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            raw = await self._body(receive)
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
        body = raw.decode("utf-8", errors="replace") if raw else None
        code, payload, out_headers = self.invoke(method, path, body, headers)
        await self._send(
            send,
            code,
            payload,
            out_headers.get("Content-Type", "application/json"),
            [(b"server-timing", out_headers[SERVER_TIMING].encode("latin-1"))],
        )

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
        self, method: str, path: str, body: str | None, headers: dict[str, str]
    ) -> tuple[int, bytes, dict[str, str]]:
        from handlers.predict import handler, last_timings

        event = api_gateway_event(method, path, body, headers)
        started = time.perf_counter()
        with self.lock:
            last_timings.__dict__.clear()
            try:
                result = handler(event, self.context)
            finally:
                quiet_lambda_metrics()
            added = dict(last_timings.__dict__)
        elapsed = time.perf_counter() - started
        status = int(result.get("statusCode", 500))
        payload = (result.get("body") or "").encode()
        metrics.REQUEST_LATENCY.labels(route=path, status=str(status)).observe(elapsed)
        if path == "/predict" and status == 200:
            answer = json.loads(payload)
            metrics.DECISIONS.labels(
                is_fraud=str(answer["is_fraud"]).lower(), degraded=str(answer["degraded"]).lower()
            ).inc()
            metrics.FRAUD_PROBABILITY.observe(answer["fraud_probability"])
        out_headers = {k: str(v) for k, v in (result.get("headers") or {}).items()}
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
        """Cold start before serving: the champion, Redis (``GET /health``) and the Kafka producer."""
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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
