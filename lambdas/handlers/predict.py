"""API Gateway -> Lambda: ``POST /predict``, ``GET /health`` and ``POST /labels`` (``handlers.labels``).

Parses and validates the request, calls the scorer, formats the answer, publishes the
transaction to the stream. Redis unreachable, or the feature store without its fill marker
(``fraud_adapters.store_marker``: its data was lost): the request-only baseline model answers
with ``degraded: true`` (timeouts are ``REDIS_TIMEOUT_MS``); no champion: 503. A request past its
deadline (``handlers.deadline``) is dropped before the feature read or the publish: 503 with
``Retry-After``; so is a scored transaction that could not be recorded (the stream, the producer
journal and the outbox all failed: ``ON_UNRECORDED``), as it was not acknowledged. ``GET /health``
probes each dependency: Redis, the store's marker, the stream, the model store and the champion.
"""

import gc
import json
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
from aws_lambda_powertools.event_handler.middlewares.openapi_validation import (
    OpenAPIRequestValidationMiddleware,
)
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from fraud_adapters.publisher import JournalWriteError, Publisher
from fraud_adapters.store_marker import EMPTY, MarkerCheck
from fraud_core import timeguard
from fraud_core.schemas import (
    DependencyStatus,
    HealthResponse,
    PredictRequest,
    PredictResponse,
    TransactionEvent,
    epoch_seconds,
)
from fraud_core.spec import FEATURE_SPEC_VERSION
from handlers import bootstrap, deadline, labels
from handlers.errors import error_body, error_response, json_position, route_not_found
from handlers.observability import logger, mask_card, metrics, tracer
from handlers.scoring import FeatureStoreUnavailableError, ModelCache, ModelUnavailableError, Scorer
from handlers.settings import settings

#: the longest a synchronous publish waits for the broker's acknowledgement (less if the request's
#: deadline comes first)
PUBLISH_TIMEOUT_SECONDS = 2.0
#: with an outbox, the publish leaves this much of the invocation's time for writing to it (SQS
#: client: 0.25 s connect, 0.5 s read timeouts, 2 attempts at most; ``fraud_adapters.outbox``)
OUTBOX_RESERVE_SECONDS = 1.5
#: each probe of ``GET /health`` that has its own timeout (the stream's metadata round trip)
HEALTH_PROBE_TIMEOUT_SECONDS = 0.25


def json_body(text: str) -> Any:
    """The request body as JSON. A body the parser cannot take (nesting deeper than Python's
    recursion limit, an integer of more than 4,300 digits) is a JSON error like any other
    malformed body (a 4xx naming the problem), not an exception that fails the invocation."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError as exc:
        raise json.JSONDecodeError("nested too deeply", text, 0) from exc
    except ValueError as exc:  # int digits limit
        raise json.JSONDecodeError(f"unreadable value: {str(exc)[:120]}", text, 0) from exc


app = APIGatewayRestResolver(enable_validation=True, json_body_deserializer=json_body)
app.configure_openapi(
    title="FraudSys scoring API",
    version="1.0.0",
    summary="Real-time credit-card fraud scoring",
    description="Scores a card transaction with point-in-time rolling features and the champion model; "
    "takes labels (chargebacks and their reversals) for scored transactions.",
)
app.include_router(labels.router)  # POST /labels


#: The timings of the last score on this thread (``score_ms``, ``model_ms``, ``read_ms``), for
#: long-lived local servers to report (``local_stack.api``: ``Server-Timing``); a Lambda never reads them.
last_timings = threading.local()


@lru_cache(maxsize=1)
def freeze_startup_objects() -> None:
    """Once, after the first scored request (imports, champion, clients: the cold start): move
    every live object to the collector's permanent generation, so that later full collections
    skip the ~200k objects of xgboost, numpy, pydantic and Powertools. Measured: the 0.1 s
    pauses of full collections disappear and p99 drops ~20 % (docs/benchmarks.md)."""
    gc.freeze()


@lru_cache(maxsize=1)
def scorer() -> Scorer:
    cfg = settings()
    models = ModelCache(
        bootstrap.model_store(),
        cfg.model_pointer_ttl_seconds,
        cfg.reasons_method == "approx",
        label_delay=cfg.label_delay_seconds,
    )
    marker = MarkerCheck(bootstrap.store_marker(), cfg.store_marker_ttl_seconds)
    return Scorer(bootstrap.feature_store(), models, cfg.label_delay_seconds, marker)


_error = error_response


def _json_error(err: Mapping[str, Any], document: Any) -> dict[str, Any]:
    """Powertools reports a body that is not JSON at ``loc: ["body", <character offset>]``,
    which read as a field named by a number: say where it is, as line and column."""
    offset = err["loc"][1] if len(err["loc"]) > 1 and isinstance(err["loc"][1], int) else 0
    line, column = json_position(document if isinstance(document, str) else "", offset)
    reason = (err.get("ctx") or {}).get("error", "")
    msg = f"invalid JSON at line {line} column {column}" + (f" ({reason})" if reason else "")
    return {"loc": ["body"], "type": "json_invalid", "msg": msg}


@app.exception_handler(RequestValidationError)  # type: ignore[untyped-decorator]
def _invalid(exc: RequestValidationError) -> Response[Any]:
    detail = [
        _json_error(err, exc.body)
        if err["type"] == "json_invalid"
        else {"loc": [str(p) for p in err["loc"]], "type": err["type"], "msg": err.get("msg", "")}
        for err in exc.errors()
    ]
    message = "; ".join(
        f"{'.'.join(str(p) for p in d['loc'] if p != 'body') or 'body'}: {d['msg']}" for d in detail
    )
    metrics.add_metric(name="InvalidRequests", unit=MetricUnit.Count, value=1)
    return _error(HTTPStatus.UNPROCESSABLE_ENTITY, message or "invalid request", detail)


def _unsupported(content_type: str) -> tuple[str, list[dict[str, Any]]]:
    """The 415's message and detail (counted as an invalid request), whichever check found it."""
    content_type = content_type[:80] or "none"
    metrics.add_metric(name="InvalidRequests", unit=MetricUnit.Count, value=1)
    detail = [{"loc": ["body"], "type": "unsupported_content_type", "msg": f"Content-Type {content_type}"}]
    return f"unsupported Content-Type {content_type}: send application/json", detail


@app.exception_handler(RequestUnsupportedContentType)  # type: ignore[untyped-decorator]
def _unsupported_media_type(exc: RequestUnsupportedContentType) -> Response[Any]:
    content_type = app.current_event.headers.get("content-type", "") or ""
    return _error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, *_unsupported(content_type))


@app.not_found
def _not_found(exc: NotFoundError) -> Response[Any]:
    status, message, headers = route_not_found(app.current_event.http_method, app.current_event.path)
    return _error(status, message, headers=headers)


@app.exception_handler([ModelUnavailableError, FeatureStoreUnavailableError])  # type: ignore[untyped-decorator]
def _unavailable(exc: Exception) -> Response[Any]:
    logger.error("scoring unavailable", extra={"reason": str(exc)})
    metrics.add_metric(name="Unavailable", unit=MetricUnit.Count, value=1)
    return _error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))


@app.exception_handler(deadline.DeadlineExceededError)  # type: ignore[untyped-decorator]
def _past_deadline(exc: deadline.DeadlineExceededError) -> Response[Any]:
    logger.info("dropped past its deadline", extra={"step": exc.step, "path": app.current_event.path})
    metrics.add_metric(name="DeadlineExceeded", unit=MetricUnit.Count, value=1)
    return _error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc), headers=deadline.retry_after())


class UnrecordedError(RuntimeError):
    """The scored transaction reached neither the stream nor anything that sends it there later."""

    def __init__(self, transaction_id: str) -> None:
        super().__init__(
            f"transaction {transaction_id} could not be recorded (the stream refused it and neither "
            "the producer journal nor the publish outbox kept it): not acknowledged, retry later with "
            "the same transaction_id"
        )


@app.exception_handler(UnrecordedError)  # type: ignore[untyped-decorator]
def _unrecorded(exc: UnrecordedError) -> Response[Any]:
    metrics.add_metric(name="Unrecorded", unit=MetricUnit.Count, value=1)
    return _error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc), headers=deadline.retry_after())


class TimeGuardError(ValueError):
    """A request dated outside what the time guard accepts (``fraud_core.timeguard``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@app.exception_handler(TimeGuardError)  # type: ignore[untyped-decorator]
def _refused_time(exc: TimeGuardError) -> Response[Any]:
    metrics.add_metric(name="InvalidRequests", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="RefusedByTimeGuard", unit=MetricUnit.Count, value=1)
    detail = [{"loc": ["body", exc.field], "type": "time_guard", "msg": exc.message}]
    return _error(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc), detail)


#: Powertools' request validation, for every body ``_predict_request`` does not take itself
_validate_request = OpenAPIRequestValidationMiddleware()  # type: ignore[no-untyped-call]


def _predict_request(app: APIGatewayRestResolver, next_middleware: NextMiddleware) -> Response[Any]:
    """The body of ``POST /predict`` as a ``PredictRequest``, validated once (route middleware).

    A valid body is taken as Powertools' validation middleware takes it: the resolver's
    ``json_body`` validated by the model (``from_attributes``, as its ``ModelField.validate``),
    passed as ``request``; without the middleware's per-request walk over the path, query, header
    and cookie parameters this route does not have, nor the re-validation of the answer (the
    route returns the dict that serialization gave). Every other body (one that does not
    validate, a JSON list, another content type) goes through Powertools' middleware itself, so
    every 4xx and its message are Powertools' own (tests/handlers/test_predict_validation.py).
    """
    content_type = app.current_event.headers.get("content-type", "").strip()
    if not content_type or content_type.startswith(content_types.APPLICATION_JSON):
        try:
            request = PredictRequest.model_validate(app.current_event.json_body, from_attributes=True)
        except Exception:  # Powertools below answers it: the same 4xx as before
            return _validate_request.handler(app, next_middleware)
        app.context["_route_args"] = {"request": request}
        return next_middleware(app)
    return _validate_request.handler(app, next_middleware)


@app.post(
    "/predict",
    summary="Score one card transaction",
    responses={
        200: {"description": "Scored"},
        422: {"description": "Invalid request, or transaction_time outside the time guard"},
        503: {
            "description": "No champion model, the request's deadline passed, or the transaction "
            "could not be recorded (Retry-After)"
        },
    },
    enable_validation=False,  # _predict_request validates the body (the OpenAPI document is the same)
    middlewares=[_predict_request],
)
def predict(request: PredictRequest) -> Response[PredictResponse]:
    received = datetime.now(UTC)
    cfg = settings()
    refused = timeguard.request_refusal(
        epoch_seconds(request.transaction_time),
        int(received.timestamp()),
        cfg.max_clock_skew_seconds,
        cfg.max_request_age_seconds,
    )
    if refused is not None:
        raise TimeGuardError("transaction_time", refused)
    deadline.check(app.lambda_context, "the feature read")  # nothing read, scored or published
    scored = scorer().score(request)
    deadline.check(app.lambda_context, "publishing")  # scored, but neither published nor answered
    last_timings.score_ms, last_timings.read_ms = scored.total_ms, scored.read_ms
    last_timings.model_ms = scored.model_ms
    response = scored.response
    metrics.add_metric(name="ScoringLatency", unit=MetricUnit.Milliseconds, value=scored.total_ms)
    metrics.add_metric(name="FeatureReadLatency", unit=MetricUnit.Milliseconds, value=scored.read_ms)
    metrics.add_metric(name="Predictions", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="FraudDecisions", unit=MetricUnit.Count, value=int(response.is_fraud))
    metrics.add_metric(name="FraudProbability", unit=MetricUnit.NoUnit, value=response.fraud_probability)
    if response.degraded:
        metrics.add_metric(name="DegradedPredictions", unit=MetricUnit.Count, value=1)
    # one line per scored transaction at DEBUG: the decision is in the answer, the transaction in
    # the stream and the lake, the counts in the metrics; at INFO this line was ~0.3 ms of CPU per
    # request, half of the handler's own cost (docs/benchmarks.md). POWERTOOLS_LOG_LEVEL=DEBUG
    # logs every score.
    logger.debug(
        "scored",
        extra={
            "transaction_id": response.transaction_id,
            "card": mask_card(request.card_id),
            "probability": response.fraud_probability,
            "is_fraud": response.is_fraud,
            "model_version": response.model_version,
            "degraded": response.degraded,
            "latency_ms": round(scored.total_ms, 3),
        },
    )
    remaining = app.lambda_context.get_remaining_time_in_millis() / 1000
    if cfg.publish_outbox_queue_url:  # time left for the outbox write, should the publish fail
        remaining -= OUTBOX_RESERVE_SECONDS
    recorded = _publish(request, received, min(PUBLISH_TIMEOUT_SECONDS, remaining))
    freeze_startup_objects()
    if not recorded and cfg.on_unrecorded == "refuse":
        raise UnrecordedError(request.transaction_id)
    # the body as Powertools' response validation serialized the model (its dict for the JSON)
    body: Any = response.model_dump(mode="json")
    return Response(HTTPStatus.OK.value, content_types.APPLICATION_JSON, body)


def _publish(request: PredictRequest, received: datetime, timeout: float = PUBLISH_TIMEOUT_SECONDS) -> bool:
    """Send the scored transaction to the stream; whether it is recorded: acknowledged, or kept to
    be sent again. A failure is logged and counted. Locally the producer journal keeps what the
    broker did not take (its relay sends it again); on AWS (``PUBLISH_OUTBOX_QUEUE_URL``) the
    record goes to the publish outbox, which the relay (``handlers.relay_outbox``) sends to the
    stream; nothing is sent there when the publish succeeds."""
    publisher = bootstrap.publisher()
    event = request.to_event(received_at=received)
    failures = 0
    recorded = True
    try:
        publisher.publish([event], timeout=max(timeout, 0.001))
    except Exception as exc:
        logger.error("publish failed", extra={"transaction_id": request.transaction_id, "error": str(exc)})
        failures = 1
        kept = publisher.keeps_failed and not isinstance(exc, JournalWriteError)
        recorded = kept or _to_outbox(publisher, event)
    failures += publisher.take_late_failures()  # background mode: records refused since the last call
    if failures:
        metrics.add_metric(name="PublishFailures", unit=MetricUnit.Count, value=failures)
    return recorded


def _to_outbox(publisher: Publisher, event: TransactionEvent) -> bool:
    """Keep a record whose publish failed in the outbox (``OutboxWrites``); whether it is there.
    Without an outbox, or if SQS fails too, the transaction reaches neither the stream nor the
    lake: logged at error and counted (``OutboxFailures``, alarmed); the answer is then a 503
    (``ON_UNRECORDED=refuse``) or the score (``score``)."""
    try:
        outbox = bootstrap.outbox()  # its client is built on the first failed publish
        if outbox is None:
            raise RuntimeError("no publish outbox (PUBLISH_OUTBOX_QUEUE_URL) to keep it")
        outbox.put([publisher.record(event)])
    except Exception as exc:
        logger.error(
            "outbox write failed: the transaction is in neither the stream nor the outbox",
            extra={"transaction_id": event.trans_num, "error": f"{type(exc).__name__}: {exc}"[:300]},
        )
        metrics.add_metric(name="OutboxFailures", unit=MetricUnit.Count, value=1)
        return False
    logger.warning("sent to the publish outbox", extra={"transaction_id": event.trans_num})
    metrics.add_metric(name="OutboxWrites", unit=MetricUnit.Count, value=1)
    return True


def _probe(check: Callable[[], str]) -> DependencyStatus:
    """One dependency: ``check`` returns what it found, or raises what is wrong."""
    started = time.perf_counter()
    try:
        detail = check()
    except Exception as exc:
        return DependencyStatus(ok=False, detail=f"{type(exc).__name__}: {exc}"[:300])
    return DependencyStatus(ok=True, detail=detail, latency_ms=(time.perf_counter() - started) * 1000)


def _store_filled() -> str:
    filled = bootstrap.store_marker().read()
    if filled is None:
        raise RuntimeError(EMPTY)
    return f"filled by {filled.by} at {datetime.fromtimestamp(filled.at, UTC).isoformat()}"


def _champion_pointer() -> str:
    store = bootstrap.model_store()
    version = store.champion_version()
    return f"{store.blobs.uri}: champion {version}" if version else f"{store.blobs.uri}: no champion"


@app.get("/health", summary="Dependency status")
def health() -> Response[Any]:
    """Each dependency probed now: ``redis`` (PING), ``store`` (the fill marker: a store that lost
    its data says ``empty (run fraudsys backfill)``), ``broker`` (a metadata round trip to the
    stream), ``model_store`` (the champion pointer) and ``model`` (the champion served). ``down``
    (503) when no champion can answer; ``degraded`` when anything else is not ok."""
    deps: dict[str, DependencyStatus] = {
        "redis": _probe(lambda: "PONG" if bootstrap.feature_store().ping() else "")
    }
    deps["store"] = (
        _probe(_store_filled)
        if deps["redis"].ok
        else DependencyStatus(ok=False, detail="unknown: redis unreachable")
    )
    deps["broker"] = _probe(lambda: bootstrap.publisher().check(HEALTH_PROBE_TIMEOUT_SECONDS))
    deps["model_store"] = _probe(_champion_pointer)
    version: str | None = None
    try:
        version = scorer().models.get().manifest.version
        deps["model"] = DependencyStatus(ok=True, detail=f"champion {version}")
    except Exception as exc:
        deps["model"] = DependencyStatus(ok=False, detail=str(exc))
    status = "ok" if all(d.ok for d in deps.values()) else ("degraded" if deps["model"].ok else "down")
    body = HealthResponse(
        status=status,
        model_version=version,
        feature_spec_version=FEATURE_SPEC_VERSION,
        dependencies=deps,
    )
    code = HTTPStatus.SERVICE_UNAVAILABLE if status == "down" else HTTPStatus.OK
    return Response(code.value, content_types.APPLICATION_JSON, body.model_dump(mode="json"))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    refused = non_json_refusal(event)
    if refused is not None:
        return refused
    return app.resolve(event, context)


def non_json_refusal(event: dict[str, Any]) -> dict[str, Any] | None:
    """A request with a body must send it as JSON (``application/json`` or ``+json``): any other
    media type (a form, a multipart body with or without its boundary) is a 415 naming the
    header, before the router's validation would try to parse it."""
    if not event.get("body"):
        return None
    headers = {str(k).lower(): v for k, v in (event.get("headers") or {}).items()}
    media = str(headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if not media or media == "application/json" or media.endswith("+json"):
        return None
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    return {
        "statusCode": status.value,
        "headers": {"Content-Type": content_types.APPLICATION_JSON},
        "body": json.dumps(error_body(status, *_unsupported(media))),
        "isBase64Encoded": False,
    }
