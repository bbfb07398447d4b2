"""``POST /predict`` validates its body itself (``handlers.predict._predict_request``, the warm
path's cost: docs/benchmarks.md): it must take every body exactly as Powertools' own request
validation does, and leave every other one to it.

Two resolvers with the route's signature, one validated by Powertools, the other as
``/predict`` is: for each body and content type, both give the route the same request or raise
the same validation error."""

import json
from collections.abc import Iterator
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)

from fraud_core.schemas import PredictRequest
from handlers import predict
from local_stack.events import api_gateway_event
from tests.handlers.test_predict import VALID
from tests.support.events import FakeContext

JUNK: list[Any] = [None, "", " ", "x", "12,5", "12.5", " 7 ", -1, 0, 1.5, 10**30, "1e309", True, [], {}, [1]]


def echo_app(fast_path: bool) -> APIGatewayRestResolver:
    app = APIGatewayRestResolver(enable_validation=True, json_body_deserializer=predict.json_body)
    options: dict[str, Any] = {"enable_validation": False, "middlewares": [predict._predict_request]}

    @app.post("/predict", **(options if fast_path else {}))
    def echo(request: PredictRequest) -> Response[Any]:
        given = sorted(request.model_fields_set)  # a transaction_id not given is a new uuid each time
        fields = request.model_dump(exclude=None if "transaction_id" in given else {"transaction_id"})
        return Response(200, content_types.APPLICATION_JSON, {"request": repr(fields), "given": given})

    @app.exception_handler([RequestValidationError, RequestUnsupportedContentType])  # type: ignore[untyped-decorator]
    def refused(exc: RequestValidationError) -> Response[Any]:
        errors = [{k: v for k, v in e.items() if k != "url"} for e in exc.errors()]
        body = {"errors": repr(errors), "kind": type(exc).__name__}
        return Response(422, content_types.APPLICATION_JSON, body)

    return app


def bodies() -> Iterator[str | None]:
    yield json.dumps(VALID)
    yield json.dumps({k: v for k, v in VALID.items() if k != "transaction_id"} | {"customer_id": "c-1"})
    yield json.dumps(VALID | {"customer_id": "c-1"})  # both card ids
    yield json.dumps(VALID | {"dob": "1980-02-29", "transaction_time": "2020-06-21T12:14:25"})
    yield json.dumps(VALID | {"transaction_time": "2020-06-21T14:14:25+02:00", "merchant_name": "  padded  "})
    yield json.dumps(VALID | {"extra": 1})
    for field in VALID:
        yield json.dumps({k: v for k, v in VALID.items() if k != field})
        for junk in JUNK:
            yield json.dumps(VALID | {field: junk})
    yield json.dumps([VALID])  # Powertools takes a list's first item for a model body
    yield json.dumps([VALID, {}])
    yield json.dumps([])
    yield from ("null", "1", '"text"', "true", "{}")
    yield ""
    yield None
    yield '{"amount_usd": 1,'  # not JSON
    yield "[" * 5000 + "]" * 5000  # nested deeper than the parser can go
    yield '{"city_pop": ' + "9" * 5000 + "}"  # an integer over the digit limit


CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    " application/json ",
    "",
    "text/plain",
]


def answers(app: APIGatewayRestResolver) -> list[dict[str, Any]]:
    out = []
    for body in bodies():
        for content_type in CONTENT_TYPES:
            headers = {"Content-Type": content_type} if content_type else {}
            event = api_gateway_event("POST", "/predict", body, headers, stage="prod")
            out.append(app.resolve(event, FakeContext()))
    return out


def test_predict_takes_every_body_as_powertools_validation_does() -> None:
    fast, reference = answers(echo_app(fast_path=True)), answers(echo_app(fast_path=False))
    assert len(fast) == len(reference) > 700
    assert sum(a["statusCode"] == 200 for a in reference) > 20  # valid bodies were taken
    assert sum(a["statusCode"] == 422 for a in reference) > 500  # and invalid ones refused
    for got, expected in zip(fast, reference, strict=True):
        assert got == expected
