"""A local API Gateway: HTTP on 127.0.0.1 -> REST proxy events -> the real scorer handler.

Like one Lambda instance, it runs one invocation at a time (the Powertools resolver keeps the
current event on the app object). Extra routes served here, not by the Lambda:
``GET /metrics`` (Prometheus) and ``GET /openapi.json``.
"""

import json
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from local_stack import metrics
from local_stack.events import LocalContext, api_gateway_event, quiet_lambda_metrics

LAMBDA_ROUTES = {("POST", "/predict"), ("GET", "/health")}
MAX_BODY_BYTES = 256 * 1024


class LocalApi:
    def __init__(
        self, host: str = "127.0.0.1", port: int = 8080, reuse_port: bool = False, bind: bool = True
    ) -> None:
        self.lock = threading.Lock()
        self.context = LocalContext("fraudsys-scorer")
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: with Nagle's algorithm the body waits for
            # the client's delayed ACK of the headers (~40 ms on Linux) on keep-alive connections.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _dispatch(self, method: str) -> None:
                path = self.path.split("?", 1)[0]
                if method == "GET" and path == "/metrics":
                    self._send(200, metrics.exposition(), CONTENT_TYPE_LATEST)
                    return
                if method == "GET" and path == "/openapi.json":
                    from handlers.predict import app

                    self._send(200, app.get_openapi_json_schema().encode())
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    self._send(413, json.dumps({"message": "request body too large"}).encode())
                    return
                body = self.rfile.read(length).decode("utf-8", errors="replace") if length else None
                if (method, path) not in LAMBDA_ROUTES:
                    known = path in {p for _, p in LAMBDA_ROUTES}
                    status = HTTPStatus.METHOD_NOT_ALLOWED if known else HTTPStatus.NOT_FOUND
                    self._send(status, json.dumps({"message": f"{method} {path}: {status.phrase}"}).encode())
                    return
                code, payload, headers = api.invoke(method, path, body, dict(self.headers.items()))
                self._send(code, payload, headers.get("Content-Type", "application/json"))

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def do_PUT(self) -> None:
                self._dispatch("PUT")

            def do_DELETE(self) -> None:
                self._dispatch("DELETE")

        server_class: type[ThreadingHTTPServer] = type(
            "Server", (ThreadingHTTPServer,), {"allow_reuse_port": reuse_port}
        )
        self.server = server_class((host, port), Handler, bind_and_activate=False)
        self.server.daemon_threads = True
        self.port = port
        if bind:
            self.bind()
        self.thread = threading.Thread(target=self.server.serve_forever, name="local-api", daemon=True)

    def invoke(
        self, method: str, path: str, body: str | None, headers: dict[str, str]
    ) -> tuple[int, bytes, dict[str, str]]:
        from handlers.predict import handler

        event = api_gateway_event(method, path, body, headers)
        started = time.perf_counter()
        with self.lock:
            result = handler(event, self.context)
            quiet_lambda_metrics()
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
        return status, payload, {k: str(v) for k, v in (result.get("headers") or {}).items()}

    def bind(self) -> None:
        """Bind and listen (``bind=False`` defers it, e.g. until ``warm`` has run)."""
        self.server.server_bind()
        self.server.server_activate()
        self.port = int(self.server.server_address[1])

    def warm(self) -> None:
        """Cold start before serving: the champion, Redis (``GET /health``) and the Kafka producer."""
        from handlers import bootstrap

        self.invoke("GET", "/health", None, {})
        bootstrap.publisher()

    def start(self) -> "LocalApi":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
