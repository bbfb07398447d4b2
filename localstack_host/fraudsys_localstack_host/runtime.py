"""One Lambda execution environment as a host process (started by ``executor.py``, stdlib only).

``python -I -S runtime.py``: no site-packages; ``sys.path`` is the function's code
(``LAMBDA_TASK_ROOT``), its layers' ``python/`` folders, then the runtime folder with boto3, as on
AWS Lambda. It imports ``_HANDLER`` (the init phase), tells LocalStack it is ready, then serves
LocalStack's ``POST /invoke`` one invocation at a time and posts each result, its error or the
invocation's output back to ``LOCALSTACK_RUNTIME_ENDPOINT``.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import queue
import sys
import threading
import time
import traceback
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

TASK_ROOT = os.environ["LAMBDA_TASK_ROOT"]
LAYERS = [p for p in os.environ.get("FRAUDSYS_LAMBDA_LAYERS", "").split(os.pathsep) if p]
RUNTIME_DIR = os.environ["FRAUDSYS_LAMBDA_RUNTIME_DIR"]
ENDPOINT = os.environ["LOCALSTACK_RUNTIME_ENDPOINT"]
RUNTIME_ID = os.environ["LOCALSTACK_RUNTIME_ID"]
PORT = int(os.environ["FRAUDSYS_LAMBDA_PORT"])
TIMEOUT_S = float(os.environ.get("AWS_LAMBDA_FUNCTION_TIMEOUT", "3"))


def post(path: str, body: bytes, content_type: str = "application/json") -> None:
    request = urllib.request.Request(  # noqa: S310 - LocalStack's own endpoint
        f"{ENDPOINT}{path}", data=body, method="POST", headers={"Content-Type": content_type}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        response.read()


def error_body(exc: BaseException) -> bytes:
    return json.dumps(
        {
            "errorMessage": str(exc),
            "errorType": type(exc).__name__,
            "stackTrace": traceback.format_exception(exc),
        }
    ).encode()


class Tee(io.TextIOBase):
    """The process's stdout/stderr, also kept for the current invocation's logs."""

    def __init__(self, stream: Any, buffer: list[str]) -> None:
        self.stream, self.buffer = stream, buffer

    def write(self, text: str) -> int:
        self.buffer.append(text)
        self.stream.write(text)
        self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


class Context:
    """The handler's ``context`` (the attributes the python runtime's LambdaContext has)."""

    def __init__(self, request_id: str, arn: str, deadline: float) -> None:
        self.aws_request_id = request_id
        self.invoked_function_arn = arn
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = None
        self.client_context = None
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


invocations: queue.Queue[dict[str, Any]] = queue.Queue()


class InvokeHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        payload = json.loads(self.rfile.read(length) or b"{}")
        if self.path.rstrip("/") != "/invoke":
            self.send_response(404)
            self.end_headers()
            return
        invocations.put(payload)
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    sys.path[:0] = [TASK_ROOT, *LAYERS]
    sys.path.append(RUNTIME_DIR)
    logs: list[str] = []
    sys.stdout, sys.stderr = Tee(sys.__stdout__, logs), Tee(sys.__stderr__, logs)
    server = HTTPServer(("127.0.0.1", PORT), InvokeHandler)
    threading.Thread(target=server.serve_forever, name="invoke", daemon=True).start()
    try:
        module_name, _, function_name = os.environ["_HANDLER"].rpartition(".")
        handler = getattr(importlib.import_module(module_name), function_name)
    except Exception as exc:
        traceback.print_exc()
        post(f"/status/{RUNTIME_ID}/error", error_body(exc))
        raise SystemExit(1) from exc
    post(f"/status/{RUNTIME_ID}/ready", b"{}")
    while True:
        invocation = invocations.get()
        request_id = str(invocation["invoke-id"])
        os.environ["_X_AMZN_TRACE_ID"] = str(invocation.get("trace-id") or "")
        logs.clear()
        context = Context(
            request_id, str(invocation.get("invoked-function-arn", "")), time.monotonic() + TIMEOUT_S
        )
        try:
            result = handler(json.loads(invocation.get("payload") or "null"), context)
            body, outcome = json.dumps(result).encode(), "response"
        except Exception as exc:
            traceback.print_exc()
            body, outcome = error_body(exc), "error"
        post(f"/invocations/{request_id}/logs", json.dumps({"logs": "".join(logs)}).encode())
        post(f"/invocations/{request_id}/{outcome}", body)


if __name__ == "__main__":
    main()
