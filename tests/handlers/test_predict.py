"""The scorer handler through API Gateway REST proxy events."""

import gc
import json
from pathlib import Path
from typing import Any

import pytest
import redis

from handlers import predict
from tests.support.events import FakeContext, api_gateway_event
from tests.support.models import publish_test_model

pytestmark = pytest.mark.integration

VALID: dict[str, Any] = {
    "transaction_id": "tx-1",
    "cc_num": "4111111111111111",
    "merchant_name": "fraud_Rippin, Kub and Mann",
    "category": "misc_net",
    "amount_usd": 42.5,
    "transaction_time": "2020-06-21T12:14:25Z",
    "lat": 36.08,
    "long": -81.18,
    "city_pop": 3495,
    "merch_lat": 36.01,
    "merch_long": -82.05,
}


def call(method: str, path: str, body: Any = None, raw: str | None = None) -> tuple[int, dict[str, Any]]:
    response = predict.handler(api_gateway_event(method, path, body, raw), FakeContext())
    return int(response["statusCode"]), json.loads(response["body"] or "{}")


def test_scores_a_valid_transaction(lambda_env: Path) -> None:
    publish_test_model(str(lambda_env / "models"), version="3", threshold=0.4)
    status, body = call("POST", "/predict", VALID)
    assert status == 200, body
    assert set(body) >= {
        "transaction_id",
        "is_fraud",
        "fraud_probability",
        "threshold",
        "model_version",
        "reasons",
        "timestamp",
    }
    assert body["transaction_id"] == "tx-1"
    assert body["model_version"] == "3"
    assert body["threshold"] == 0.4
    assert body["is_fraud"] == (body["fraud_probability"] >= 0.4)
    assert body["degraded"] is False
    assert [r["feature"] for r in body["reasons"]]
    assert all({"feature", "value", "contribution"} <= set(r) for r in body["reasons"])


def test_transaction_id_is_generated_when_omitted(lambda_env: Path) -> None:
    publish_test_model(str(lambda_env / "models"))
    status, body = call("POST", "/predict", {k: v for k, v in VALID.items() if k != "transaction_id"})
    assert status == 200
    assert len(body["transaction_id"]) == 32


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount_usd": -1}, "amount_usd"),
        ({"amount_usd": "lots"}, "amount_usd"),
        ({"category": "casino"}, "category"),
        ({"lat": 123.0}, "lat"),
        ({"transaction_time": "yesterday"}, "transaction_time"),
        ({"merchant_name": "a\x1fb"}, "merchant_name"),
        ({"cc_num": None}, "cc_num"),  # neither card id
        ({"customer_id": "c-1"}, "cc_num"),  # both card ids
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(lambda_env: Path, change: dict[str, Any], field: str) -> None:
    publish_test_model(str(lambda_env / "models"))
    body = {**VALID, **change}
    if change.get("cc_num", "") is None:
        del body["cc_num"]
    status, answer = call("POST", "/predict", body)
    assert status == 422, answer
    assert field in answer["message"] or any(field in ".".join(d["loc"]) for d in answer["detail"])
    assert all("input" not in d for d in answer["detail"])  # values are not echoed back (PII)


def test_missing_field_is_named(lambda_env: Path) -> None:
    status, answer = call("POST", "/predict", {k: v for k, v in VALID.items() if k != "merchant_name"})
    assert status == 422
    assert "merchant_name" in answer["message"]


def test_malformed_json_is_a_422(lambda_env: Path) -> None:
    status, answer = call("POST", "/predict", raw="{not json")
    assert status == 422
    assert answer["message"]


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 100_000 + "]" * 100_000,  # nested beyond Python's recursion limit
        '{"a":' * 5_000 + "1" + "}" * 5_000,
        json.dumps(VALID)[:-1] + ', "extra": ' + "9" * 5_000 + "}",  # beyond int's 4,300 digits
        json.dumps(VALID).replace('"amount_usd": 42.5', '"amount_usd": ' + "9" * 5_000),
    ],
    ids=["deep array", "deep object", "5000-digit extra", "5000-digit amount"],
)
@pytest.mark.parametrize("path", ["/predict", "/labels"])
def test_hostile_json_is_a_4xx_with_a_message(lambda_env: Path, raw: str, path: str) -> None:
    publish_test_model(str(lambda_env / "models"))
    assert len(raw) > 5_000  # each variant really is hostile
    status, body = call("POST", path, raw=raw)
    assert status == 422, body
    assert body["statusCode"] == 422
    assert body["message"]


@pytest.mark.parametrize(
    "media", ["multipart/form-data", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded"]
)
def test_a_body_that_is_not_json_is_a_415_naming_the_header(lambda_env: Path, media: str) -> None:
    event = api_gateway_event("POST", "/predict", raw_body="a=1")
    event["headers"]["Content-Type"] = media
    out = predict.handler(event, FakeContext())
    assert out["statusCode"] == 415
    body = json.loads(out["body"])
    assert body["statusCode"] == 415
    assert "Content-Type" in body["message"]


def test_no_champion_is_a_503_with_a_reason(lambda_env: Path) -> None:
    status, answer = call("POST", "/predict", VALID)
    assert status == 503
    assert "no champion" in answer["message"]


def test_unknown_route_is_a_404(lambda_env: Path) -> None:
    status, _ = call("GET", "/nope")
    assert status == 404


def test_redis_unreachable_gives_a_degraded_answer(lambda_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from handlers import bootstrap

    publish_test_model(str(lambda_env / "models"))
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    bootstrap.reset()
    predict.scorer.cache_clear()
    status, body = call("POST", "/predict", VALID)
    assert status == 200
    assert body["degraded"] is True
    assert body["model_version"].endswith("-baseline")
    status, health = call("GET", "/health")
    assert status == 200
    assert health["status"] == "degraded"
    assert health["dependencies"]["redis"]["ok"] is False


@pytest.mark.parametrize("kind", ["card", "label", "wrong type"])
def test_unreadable_feature_state_gives_a_degraded_answer(lambda_env: Path, kind: str) -> None:
    from handlers import bootstrap

    # given a card set or a merchant's label arrival index holding a member no FraudSys code wrote, or a
    # card key of another type (Redis answers the read with an error reply, WRONGTYPE)
    publish_test_model(str(lambda_env / "models"))
    store = bootstrap.feature_store()
    t = 1_592_741_665  # VALID's transaction_time
    card_set = store.card_keys(store.hasher(VALID["cc_num"]))[0]
    if kind == "card":
        store.client.zadd(card_set, {b"short": t - 60})
    elif kind == "wrong type":
        store.client.set(card_set, b"not a sorted set")
    else:
        arrivals = store.merchant_keys(VALID["merchant_name"])[3]  # read from the request time on
        store.client.zadd(arrivals, {b"no-arrival-time": t + 60})

    # when the transaction is scored, then it is answered from the request alone, not a 500
    status, body = call("POST", "/predict", VALID)
    assert status == 200, body
    assert body["degraded"] is True
    assert body["model_version"].endswith("-baseline")


def test_health_ok_and_openapi_document(lambda_env: Path) -> None:
    publish_test_model(str(lambda_env / "models"), version="5")
    status, health = call("GET", "/health")
    assert status == 200
    assert health["status"] == "ok"
    assert health["model_version"] == "5"
    schema = predict.app.get_openapi_schema().model_dump(by_alias=True, exclude_none=True)
    assert "/predict" in schema["paths"]
    assert "PredictRequest" in json.dumps(schema)


def test_champion_reload_without_restart(lambda_env: Path) -> None:
    publish_test_model(str(lambda_env / "models"), version="1")
    assert call("POST", "/predict", VALID)[1]["model_version"] == "1"
    publish_test_model(str(lambda_env / "models"), version="2", seed=1)
    assert call("POST", "/predict", VALID)[1]["model_version"] == "2"


def test_the_cold_start_objects_are_frozen_after_the_first_score(lambda_env: Path) -> None:
    # given a fresh container (the freeze happens once per process)
    predict.freeze_startup_objects.cache_clear()
    gc.unfreeze()
    publish_test_model(str(lambda_env / "models"))

    # when a request is rejected, nothing is frozen yet; when one is scored, the heap is
    assert call("POST", "/predict", {**VALID, "amount_usd": -1})[0] == 422
    assert gc.get_freeze_count() == 0
    assert call("POST", "/predict", VALID)[0] == 200
    assert gc.get_freeze_count() > 10_000


def test_a_warm_score_reads_redis_in_one_round_trip(
    lambda_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis.connection

    # given a warm container (champion loaded, connection open)
    publish_test_model(str(lambda_env / "models"))
    assert call("POST", "/predict", {**VALID, "transaction_id": "warm-1"})[0] == 200
    sent: list[bytes] = []
    send: Any = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(b"".join(command) if isinstance(command, list) else bytes(command))
        send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)

    # when one more transaction is scored
    status, body = call("POST", "/predict", {**VALID, "transaction_id": "warm-2"})

    # then the scorer sent Redis one request: the read script
    assert status == 200, body
    assert len(sent) == 1
    assert b"EVALSHA" in sent[0].upper()


def test_health_names_each_dependency(lambda_env: Path) -> None:
    publish_test_model(str(lambda_env / "models"), version="5")
    status, health = call("GET", "/health")
    assert status == 200, health
    deps = health["dependencies"]
    assert set(deps) == {"redis", "store", "broker", "model_store", "model"}
    assert all(d["ok"] for d in deps.values()), deps
    assert deps["store"]["detail"].startswith("filled by tests")
    assert deps["broker"]["detail"] == "no stream (STREAM_KIND=none)"
    assert deps["model_store"]["detail"].endswith("champion 5")


def test_a_store_that_lost_its_data_answers_degraded_and_health_says_why(
    lambda_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fraud_adapters.store_marker import EMPTY
    from handlers import bootstrap

    monkeypatch.setenv("STORE_MARKER_TTL_SECONDS", "0")  # the scorer re-reads the marker every request
    bootstrap.reset()
    predict.scorer.cache_clear()
    publish_test_model(str(lambda_env / "models"), version="7")
    assert call("POST", "/predict", VALID)[1]["degraded"] is False

    # when Redis loses its data (a restart without persistence, a flush)
    bootstrap.feature_store().client.flushall()

    # then the answers come from the request alone, flagged, and /health says what to do
    status, body = call("POST", "/predict", {**VALID, "transaction_id": "tx-after-loss"})
    assert status == 200, body
    assert body["degraded"] is True
    assert body["model_version"] == "7-baseline"
    status, health = call("GET", "/health")
    assert status == 200
    assert health["status"] == "degraded"
    assert health["dependencies"]["redis"]["ok"] is True
    assert health["dependencies"]["store"] == {
        "ok": False,
        "detail": f"RuntimeError: {EMPTY}",
        "latency_ms": None,
    }

    # and once the store is filled again (fraudsys backfill writes the marker), full features again
    bootstrap.store_marker().mark("fraudsys backfill")
    assert call("POST", "/predict", {**VALID, "transaction_id": "tx-refilled"})[1]["degraded"] is False
    assert call("GET", "/health")[1]["status"] == "ok"


@pytest.mark.parametrize(
    ("path", "body", "step"),
    [
        ("/predict", VALID, "the feature read"),
        ("/labels", {"transaction_id": "tx-1", "is_fraud": True}, "the index read"),
    ],
)
def test_a_request_past_its_deadline_is_dropped_with_a_503_and_retry_after(
    lambda_env: Path, path: str, body: dict[str, Any], step: str
) -> None:
    import time

    from local_stack.events import LocalContext

    publish_test_model(str(lambda_env / "models"))
    late = LocalContext("fraudsys-test", deadline=time.monotonic() - 0.001)  # nothing left of it

    response = predict.handler(api_gateway_event("POST", path, body), late)

    assert response["statusCode"] == 503
    headers = {k: v[0] for k, v in (response.get("multiValueHeaders") or {}).items()}
    assert headers["Retry-After"] == "1"
    assert json.loads(response["body"]) == {
        "statusCode": 503,
        "message": f"deadline exceeded before {step}: not done, retry later",
    }


def test_a_stalled_redis_costs_one_timeout_not_a_chain_of_retries(
    lambda_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalled Redis costs each request its timeout, not more: the handlers' clients
    (``Redis.from_url`` without a retry policy) never retry a timeout, where ``redis.Redis()``'s
    default (10 retries, a backoff up to 1 s) makes a stalled GET or PING take ~5 s."""
    import os
    import signal
    import time

    from fraud_adapters.store_marker import StoreMarker
    from handlers import bootstrap
    from tests.support.services import redis_server

    publish_test_model(str(lambda_env / "models"))
    with redis_server() as stalled:
        StoreMarker(redis.Redis(port=stalled.port)).mark("tests")
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{stalled.port}/0")
        monkeypatch.setenv("REDIS_TIMEOUT_MS", "200")
        monkeypatch.setenv("STORE_MARKER_TTL_SECONDS", "0")  # a GET of the fill marker per request
        bootstrap.reset()
        predict.scorer.cache_clear()
        assert call("POST", "/predict", VALID)[1]["degraded"] is False  # connected, marker read
        os.kill(stalled.process.pid, signal.SIGSTOP)
        answers, took = [], []
        try:
            for i in range(2):  # the first times out on its pooled connection, the next must reconnect
                started = time.monotonic()
                answers.append(call("POST", "/predict", {**VALID, "transaction_id": f"tx-stalled-{i}"}))
                took.append(time.monotonic() - started)
            started = time.monotonic()
            health = call("GET", "/health")
            took.append(time.monotonic() - started)
        finally:
            os.kill(stalled.process.pid, signal.SIGCONT)
    assert [status for status, _ in answers] == [200, 200], answers
    assert all(body["degraded"] for _, body in answers)
    assert health[1]["dependencies"]["redis"]["ok"] is False
    # each: a 200 ms timeout or two (the fill marker's GET, the state's pipeline); with redis-py's
    # default retries a GET or a PING takes ~5 s. Generous for a busy machine.
    assert max(took) < 3.0, took


def test_after_a_redis_restart_the_next_answer_has_full_features(
    lambda_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The pooled connection to the old process is closed: the pool replaces it before the read
    (redis-py checks a pooled connection for unread data, here the server's close), so the
    first answer after the restart is not degraded. The supervised local stack relies on it."""
    from fraud_adapters.store_marker import StoreMarker
    from handlers import bootstrap
    from local_stack.services import free_port, start_redis

    publish_test_model(str(lambda_env / "models"))
    port = free_port()
    server = start_redis(port, tmp_path / "redis", appendonly=True)  # the marker survives the restart
    try:
        StoreMarker(redis.Redis(port=port)).mark("tests")
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/0")
        bootstrap.reset()
        predict.scorer.cache_clear()
        assert call("POST", "/predict", VALID)[1]["degraded"] is False
        server.stop()
        server = start_redis(port, tmp_path / "redis", appendonly=True)

        status, body = call("POST", "/predict", {**VALID, "transaction_id": "tx-after-restart"})

        assert status == 200, body
        assert body["degraded"] is False
    finally:
        server.stop()
