"""One error shape for every non-2xx answer of the Lambda (issue 15 B3):
``{"statusCode": <the status>, "message": "...", "detail"?: [...]}``; numbers as strings."""

import json
from pathlib import Path
from typing import Any

import pytest

from handlers import predict
from local_stack.events import api_gateway_event as raw_event
from tests.handlers.test_predict import VALID, call
from tests.support.events import FakeContext
from tests.support.models import publish_test_model

pytestmark = pytest.mark.integration


def lambda_answer(
    method: str, path: str, body: str | None = None, content_type: str = "application/json"
) -> tuple[int, dict[str, str], dict[str, Any]]:
    event = raw_event(method, path, body, {"Content-Type": content_type}, stage="prod")
    response = predict.handler(event, FakeContext())
    headers = {k: v[0] for k, v in (response.get("multiValueHeaders") or {}).items()}
    headers.update(response.get("headers") or {})
    return int(response["statusCode"]), headers, json.loads(response["body"])


def assert_error_shape(status: int, body: dict[str, Any]) -> None:
    assert body["statusCode"] == status, body
    assert isinstance(body["message"], str)
    assert body["message"].strip()
    assert set(body) <= {"statusCode", "message", "detail"}, body


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", "/predict", 405, "POST"),
        ("DELETE", "/labels", 405, "POST"),
        ("POST", "/health", 405, "GET"),
        ("GET", "/admin", 404, None),
    ],
)
def test_routes_answer_404_or_405_with_allow(
    lambda_env: Path, method: str, path: str, status: int, allow: str | None
) -> None:
    code, headers, body = lambda_answer(method, path)
    assert code == status, body
    assert_error_shape(code, body)
    assert headers.get("Allow") == allow


def test_another_content_type_is_a_415_with_a_message(lambda_env: Path) -> None:
    code, _, body = lambda_answer("POST", "/predict", "amount=1", "text/plain")
    assert code == 415, body
    assert_error_shape(code, body)
    assert "application/json" in body["message"]


@pytest.mark.parametrize(
    ("raw", "line", "column"),
    [('{"cc_num": "4111", ', 1, 20), ('{\n  "lat": 40.7,\n  "long": -74.0\n  "x": 1\n}', 4, 3), (" ", 1, 2)],
)
def test_a_json_decode_error_names_line_and_column(
    lambda_env: Path, raw: str, line: int, column: int
) -> None:
    code, _, body = lambda_answer("POST", "/predict", raw)
    assert code == 422, body
    assert_error_shape(code, body)
    assert f"invalid JSON at line {line} column {column}" in body["message"], body
    assert body["detail"][0]["loc"] == ["body"]
    assert body["detail"][0]["type"] == "json_invalid"


def test_validation_and_unavailable_answers_keep_the_shape(lambda_env: Path) -> None:
    status, body = call("POST", "/predict", {**VALID, "amount_usd": -1})
    assert status == 422
    assert_error_shape(status, body)
    assert body["message"].startswith("amount_usd:")
    status, body = call("POST", "/predict", VALID)  # no champion published
    assert status == 503
    assert_error_shape(status, body)


def test_a_number_given_as_a_string_is_accepted_as_that_number(lambda_env: Path) -> None:
    # The documented decision (README, "Using it"): JSON numbers may come as strings holding a
    # number, as payment systems often send amounts; anything else in them is a 422.
    publish_test_model(str(lambda_env / "models"), version="3")
    as_number = call("POST", "/predict", {**VALID, "transaction_id": "n"})
    as_string = call("POST", "/predict", {**VALID, "transaction_id": "s", "amount_usd": "42.5"})
    assert as_number[0] == as_string[0] == 200, (as_number, as_string)
    assert as_string[1]["fraud_probability"] == as_number[1]["fraud_probability"]
    for bad in ("42,5", "42.5 USD", "NaN", ""):
        status, body = call("POST", "/predict", {**VALID, "amount_usd": bad})
        assert status == 422, (bad, body)
        assert body["message"].startswith("amount_usd:"), body
    # but a card number must be a string: a JSON number loses leading zeros and digits
    status, body = call("POST", "/predict", {**VALID, "cc_num": 4111111111111111})
    assert status == 422
    assert body["message"].startswith("cc_num:"), body
