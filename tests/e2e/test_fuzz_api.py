"""Fuzzing the scoring API from its own OpenAPI document (schemathesis), over HTTP.

A ``LocalApi`` on a free port in front of the real scorer handler, a real redis-server and a
published test champion. Schemathesis generates schema-valid and schema-violating requests for
every operation of ``GET /openapi.json``; hand-written junk covers what a schema cannot describe
(bodies that are not JSON, wrong methods and paths, oversized bodies). Every answer must be a
non-5xx; every rejection a 4xx JSON object with a non-empty ``message``.
"""

import http.client
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from bench.http.analysis import server_timing
from fraud_adapters.store_marker import StoreMarker
from handlers import bootstrap, predict
from local_stack import api as local_api
from local_stack import metrics as local_metrics
from local_stack.api import MAX_BODY_BYTES, LocalApi
from local_stack.services import free_port
from tests.support.events import a_request
from tests.support.models import publish_test_model
from tests.support.services import Service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MAX_EXAMPLES = 150  # per operation and generation mode: the module runs in well under 2 minutes


@pytest.fixture(scope="module")
def api(redis_service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalApi]:
    models = tmp_path_factory.mktemp("fuzz-models")
    publish_test_model(str(models), version="7")
    StoreMarker(redis.Redis(port=redis_service.port)).mark("tests: a new store")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("REDIS_URL", f"redis://127.0.0.1:{redis_service.port}/0")
        env.setenv("MODEL_STORE_URI", str(models))
        env.setenv("DEAD_LETTER_URI", str(tmp_path_factory.mktemp("fuzz-dead")))
        env.setenv("STREAM_KIND", "none")
        env.setenv("POWERTOOLS_LOG_LEVEL", os.environ.get("POWERTOOLS_LOG_LEVEL", "ERROR"))
        bootstrap.reset()
        predict.scorer.cache_clear()
        local = LocalApi(port=free_port()).start()
        try:
            yield local
        finally:
            local.stop()
            bootstrap.reset()
            predict.scorer.cache_clear()


@pytest.fixture(scope="module")
def api_schema(api: LocalApi) -> "schemathesis.BaseSchema":
    return schemathesis.openapi.from_url(f"{api.url}/openapi.json")


def rejection_is_json_with_message(
    ctx: Any, response: schemathesis.Response, case: "schemathesis.Case[Any]"
) -> None:
    """Every 4xx is a JSON object with a non-empty string ``message``."""
    if 400 <= response.status_code < 500:
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type.startswith("application/json"), f"{response.status_code} with {content_type!r}"
        body = json.loads(response.content)
        assert isinstance(body, dict), body
        assert isinstance(body.get("message"), str), body
        assert body["message"].strip(), body
        assert body.get("statusCode") == response.status_code, body


def test_the_openapi_document_lists_the_lambda_routes(api_schema: "schemathesis.BaseSchema") -> None:
    assert len(list(api_schema.get_all_operations())) == 3
    assert api_schema["/predict"]["POST"].label == "POST /predict"
    assert api_schema["/health"]["GET"].label == "GET /health"
    assert api_schema["/labels"]["POST"].label == "POST /labels"


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [
        ("POST", "/predict", GenerationMode.POSITIVE),
        ("POST", "/predict", GenerationMode.NEGATIVE),
        ("GET", "/health", GenerationMode.POSITIVE),  # no parameters: nothing to negate
        ("POST", "/labels", GenerationMode.POSITIVE),
        ("POST", "/labels", GenerationMode.NEGATIVE),
    ],
    ids=["predict-valid", "predict-invalid", "health", "labels-valid", "labels-invalid"],
)
def test_openapi_fuzz_no_server_errors_and_json_rejections(
    api_schema: "schemathesis.BaseSchema", method: str, path: str, mode: GenerationMode
) -> None:
    statuses: Counter[int] = Counter()
    strategy = api_schema[path][method].as_strategy(generation_mode=mode)

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def fuzz(case: "schemathesis.Case[Any]") -> None:
        response = case.call(timeout=10)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=[not_a_server_error, rejection_is_json_with_message])

    fuzz()
    print(f"{method} {path} {mode}: statuses {dict(statuses)}")
    assert sum(statuses.values()) >= 1
    assert all(code < 500 for code in statuses)


def raw_exchange(api: LocalApi, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 exchange (``Connection: close``): status, headers (lower-case) and body."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split(" ", 2)[1]), headers, body


def raw_request(api: LocalApi, request: bytes) -> tuple[int, bytes]:
    """One raw HTTP/1.1 exchange (``Connection: close``): status and body."""
    status, _, body = raw_exchange(api, request)
    return status, body


def post(path: str, body: bytes, content_type: str = "application/json", method: str = "POST") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


VALID = {
    "cc_num": "4111111111111111",
    "merchant_name": "fraud_Kirlin and Sons",
    "category": "shopping_net",
    "amount_usd": 912.4,
    "transaction_time": "2020-06-21T02:14:25Z",
    "lat": 40.7,
    "long": -74.0,
    "city_pop": 8000000,
    "merch_lat": 41.2,
    "merch_long": -75.1,
}

JUNK: dict[str, bytes] = {
    "empty body": post("/predict", b""),
    "not json": post("/predict", b"{not json"),
    "json array": post("/predict", b"[1, 2, 3]"),
    "json string": post("/predict", b'"hello"'),
    "json null": post("/predict", b"null"),
    "nan amount": post("/predict", json.dumps({**VALID, "amount_usd": float("nan")}).encode()),
    "infinite amount": post("/predict", json.dumps({**VALID, "amount_usd": float("inf")}).encode()),
    "huge integer": post("/predict", json.dumps({**VALID, "city_pop": 10**400}).encode()),
    "deep nesting": post("/predict", b"[" * 5000 + b"]" * 5000),
    "invalid utf-8": post("/predict", b'{"cc_num": "\xff\xfe"}'),
    "nul in merchant": post("/predict", json.dumps({**VALID, "merchant_name": "a\x00b"}).encode()),
    "unit separator in merchant": post("/predict", json.dumps({**VALID, "merchant_name": "a\x1fb"}).encode()),
    "year 9999": post("/predict", json.dumps({**VALID, "transaction_time": "9999-12-31T23:59:59Z"}).encode()),
    "both card ids": post("/predict", json.dumps({**VALID, "customer_id": "c-1"}).encode()),
    "extra field": post("/predict", json.dumps({**VALID, "admin": True}).encode()),
    "form content type": post("/predict", b"cc_num=4111111111111111", "application/x-www-form-urlencoded"),
    "body too large": post("/predict", b"{" + b" " * (MAX_BODY_BYTES + 1) + b"}"),
    "unknown path": post("/admin", b"{}"),
    "wrong method on predict": post("/predict", b"", method="DELETE"),
    "wrong method on health": post("/health", b"{}", method="PUT"),
    "labels not json": post("/labels", b"{not json"),
    "labels json array": post("/labels", b"[1, 2, 3]"),
    "labels is_fraud a string": post("/labels", b'{"transaction_id": "t", "is_fraud": "true"}'),
    "labels both shapes": post("/labels", b'{"transaction_id": "t", "is_fraud": true, "labels": []}'),
    "wrong method on labels": post("/labels", b"", method="GET"),
    "path traversal": post("/../../etc/passwd", b"", method="GET"),
    "text content type": post("/predict", b"hello", "text/plain"),
    "post on metrics": post("/metrics", b"", method="POST"),
}
# the status (and, for a 405, the Allow header) of some: one error shape for every answer
EXPECTED: dict[str, tuple[int, str | None]] = {
    "not json": (422, None),
    "body too large": (413, None),
    "unknown path": (404, None),
    "wrong method on predict": (405, "POST"),
    "wrong method on health": (405, "GET"),
    "wrong method on labels": (405, "POST"),
    "post on metrics": (405, "GET"),
    "text content type": (415, None),
}


@pytest.mark.parametrize("name", list(JUNK))
def test_junk_requests_get_json_4xx_with_message(api: LocalApi, name: str) -> None:
    status, headers, body = raw_exchange(api, JUNK[name])

    assert 400 <= status < 500, (status, body[:300])
    answer = json.loads(body)
    assert isinstance(answer, dict)
    assert isinstance(answer.get("message"), str)
    assert answer["message"].strip()
    assert answer["statusCode"] == status, answer
    assert headers["content-type"] == "application/json"
    if name in EXPECTED:
        expected_status, allow = EXPECTED[name]
        assert status == expected_status, answer
        assert headers.get("allow") == allow, headers


def test_a_body_that_is_not_json_is_placed_by_line_and_column(api: LocalApi) -> None:
    status, body = raw_request(api, post("/predict", b'{\n  "cc_num": "4111",\n  "amount_usd": ,\n}'))
    answer = json.loads(body)
    assert status == 422, answer
    assert "invalid JSON at line 3 column 17" in answer["message"], answer
    assert answer["detail"][0]["loc"] == ["body"], answer  # no character offset posing as a field


def test_a_valid_request_still_scores_after_the_fuzzing(api: LocalApi, tmp_path: Path) -> None:
    status, body = raw_request(api, post("/predict", json.dumps(VALID).encode()))

    assert status == 200, body[:300]
    assert json.loads(body)["model_version"] == "7"


def test_a_label_over_http(api: LocalApi) -> None:
    # given a transaction the updater indexed
    bootstrap.transaction_index().put([a_request(transaction_id="http-label-1").to_event()])
    # when a batch of labels is posted to the local API, then each label has its outcome
    labels = [
        {"transaction_id": "http-label-1", "is_fraud": True},
        {"transaction_id": "nope", "is_fraud": False},
    ]
    status, body = raw_request(api, post("/labels", json.dumps({"labels": labels}).encode()))
    assert status == 202, body[:300]
    answer = json.loads(body)
    assert [r["status"] for r in answer["results"]] == ["accepted", "unknown_transaction"]


def test_an_idle_keep_alive_connection_stays_open(api: LocalApi) -> None:
    """Clients keep connections open between requests (the benchmarks' freshness probe waits
    seconds between two); the local API must not drop them after uvicorn's default 5 s."""
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        conn.request("GET", "/health")
        first = conn.getresponse()
        first.read()
        time.sleep(6)
        conn.request("GET", "/health")
        second = conn.getresponse()
        second.read()
    finally:
        conn.close()

    assert first.status == 200
    assert second.status == 200


def test_answers_carry_the_handler_score_and_read_times(api: LocalApi) -> None:
    """``Server-Timing`` lets a client split its latency: the wait in the API's queue, the handler
    invocation, within it ``Scorer.score``, within that the champion check (``model``) and the
    Redis read (milliseconds)."""
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        conn.request("POST", "/predict", json.dumps(VALID), {"Content-Type": "application/json"})
        scored = conn.getresponse()
        scored.read()
        conn.request("GET", "/health")
        health = conn.getresponse()
        health.read()
    finally:
        conn.close()

    timing = server_timing(scored.getheader("Server-Timing", "").encode())
    assert scored.status == 200
    assert set(timing) == {"queue", "handler", "score", "model", "read"}
    assert 0 < timing["read"] <= timing["score"] <= timing["handler"] < 10_000
    assert 0 <= timing["model"] <= timing["score"] - timing["read"] + 0.01  # both inside score
    assert set(server_timing(health.getheader("Server-Timing", "").encode())) == {"queue", "handler"}


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_headers_that_trickle_in_are_answered_408_and_closed(
    api: LocalApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a client that sends half a request line and stops (a slow-loris)
    monkeypatch.setattr(local_api, "HEADER_TIMEOUT", 0.5)
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        # when it waits, then the API answers 408 in its error body and closes the connection
        data = _read_all(sock)
        waited = time.monotonic() - started
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), data[:200]
    assert json.loads(body)["message"].startswith("request headers not received")
    assert waited < 5


def test_a_connection_that_sends_nothing_is_closed(api: LocalApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_api, "HEADER_TIMEOUT", 0.5)
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        started = time.monotonic()
        assert _read_all(sock) == b""  # closed without an answer: no request to answer
        assert time.monotonic() - started < 5


def test_a_body_that_trickles_in_is_answered_408(api: LocalApi, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a request whose headers announce 100 bytes of body, of which 10 come
    monkeypatch.setattr(local_api, "BODY_TIMEOUT", 0.5)
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"transac'
        )
        data = _read_all(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), data[:200]
    assert "body not received" in json.loads(body)["message"]


def test_slow_clients_do_not_hold_up_the_others(api: LocalApi, monkeypatch: pytest.MonkeyPatch) -> None:
    # given 50 connections stalled in their headers
    monkeypatch.setattr(local_api, "HEADER_TIMEOUT", 30.0)
    stalled = [socket.create_connection(("127.0.0.1", api.port), timeout=10) for _ in range(50)]
    try:
        for sock in stalled:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 1")
        # when a well-behaved client asks, then it is answered at once
        started = time.monotonic()
        status, body = raw_request(api, post("/predict", json.dumps(VALID).encode()))
        assert status == 200, body[:300]
        assert time.monotonic() - started < 2
    finally:
        for sock in stalled:
            sock.close()


def test_connections_past_the_cap_are_refused_with_503() -> None:
    # given an API that takes at most 4 connections, 4 of them open and idle
    capped = LocalApi(port=free_port(), max_connections=4).start()
    idle = [socket.create_connection(("127.0.0.1", capped.port), timeout=10) for _ in range(4)]
    try:
        time.sleep(0.2)
        # when a fifth asks, then it is refused with 503, the API's connections stay bounded
        request = b"GET /openapi.json HTTP/1.1\r\nHost: 1\r\nConnection: close\r\n\r\n"
        assert raw_request(capped, request)[0] == 503
        # and once they close, requests are served again (the cap counts open connections)
        for sock in idle:
            sock.close()
        deadline = time.monotonic() + 10
        while (status := raw_request(capped, request)[0]) == 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status == 200
    finally:
        for sock in idle:
            sock.close()
        capped.stop()


@contextmanager
def full_queue(api: LocalApi) -> Iterator[None]:
    """Admission sees its queue full (as under overload): every Lambda route is refused."""
    api.admission.outstanding += api.admission.max_queue
    try:
        yield
    finally:
        api.admission.outstanding -= api.admission.max_queue


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    """One answer read off a keep-alive connection: status, headers, JSON body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        rest += sock.recv(65536)
    assert len(rest) == length, "more bytes than one answer"
    return int(lines[0].split()[1]), headers, json.loads(rest)


def test_a_refused_request_is_answered_at_its_headers_and_its_connection_stays_in_step(api: LocalApi) -> None:
    body = json.dumps({**VALID, "transaction_id": "refused-at-once"}).encode()
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    shed_before, invoked_before = shed(), invocations()
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=10)
    try:
        with full_queue(api):
            # given an overloaded API, when a request's headers arrive (its body not yet sent)
            sock.sendall(head)
            # then it is answered 503 with Retry-After at once, in the API's error body
            status, headers, answer = _answer(sock)
            assert status == 503
            assert headers["retry-after"] == "1"
            assert answer["statusCode"] == 503
            assert answer["message"].startswith("overloaded")
            # and its body, sent later, is read and dropped: the next request on the connection
            # is parsed from its own first byte (refused again, then scored once there is room)
            sock.sendall(body + head + body)
            assert _answer(sock)[0] == 503
            # and what is not a Lambda route is not held up by admission
            sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert _answer(sock)[0] == 200
        sock.sendall(head + body)
        status, _, answer = _answer(sock)
        assert status == 200, answer
        assert answer["transaction_id"] == "refused-at-once"
    finally:
        sock.close()
    # and the two refused never reached the handler: counted as shed, one invocation in all
    assert shed() == shed_before + 2
    assert invocations() == invoked_before + 1


def shed() -> float:
    return (
        local_metrics.REGISTRY.get_sample_value(
            "fraudsys_shed_requests_total", {"route": "/predict", "reason": "refused"}
        )
        or 0.0
    )


def invocations() -> float:
    """``POST /predict`` invocations of the handler (each records its latency, whatever its status)."""
    return sum(
        sample.value
        for metric in local_metrics.REGISTRY.collect()
        if metric.name == "fraudsys_request_latency_seconds"
        for sample in metric.samples
        if sample.name.endswith("_count") and sample.labels.get("route") == "/predict"
    )


def test_a_refused_request_that_asks_to_close_gets_its_answer_and_the_close(api: LocalApi) -> None:
    with full_queue(api):
        status, body = raw_request(api, post("/predict", json.dumps(VALID).encode()))
        assert status == 503
        assert json.loads(body)["statusCode"] == 503
        # and one whose body comes after its answer: the connection closes once the body is read
        # (closed with the body unread, the connection would be reset under the client)
        request = post("/predict", json.dumps(VALID).encode())
        head, _, rest = request.partition(b"\r\n\r\n")
        sock = socket.create_connection(("127.0.0.1", api.port), timeout=10)
        try:
            sock.sendall(head + b"\r\n\r\n")
            status, headers, _ = _answer(sock)
            assert (status, headers["connection"]) == (503, "close")
            sock.sendall(rest)
            assert sock.recv(1) == b""  # the server's close, not a reset
        finally:
            sock.close()
