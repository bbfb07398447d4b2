"""Label intake: ``POST /labels`` (a router of the scorer's API) and the logic behind it, which
``fraudsys labels import`` calls too.

A label names a transaction by its id. The intake resolves the transaction's merchant and time
through the transaction index (``fraud_adapters.tx_index``, written by the updater), stamps the
receipt time as the label's arrival (``label_time``, whole seconds, UTC) and publishes one
``LabelEvent`` per label to the labels topic. A label whose transaction is not in the index is
an ``unknown_transaction``: nothing is published, so no feature changes, online or offline.

A retried request publishes the same labels again with a later ``label_time``; under the rule of
``LabelEvent`` (the latest label by arrival holds from its arrival on) a label of the same value
changes no feature. Card numbers are neither received nor logged.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Annotated, Any, Final

import redis
from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body
from aws_lambda_powertools.metrics import MetricUnit

from fraud_adapters.publisher import Publisher
from fraud_adapters.tx_index import TransactionIndex
from fraud_core.schemas import (
    LabelBatchRequest,
    LabelEvent,
    LabelOutcome,
    LabelRequest,
    LabelsBody,
    LabelsResponse,
)
from handlers import bootstrap, deadline
from handlers.errors import error_response
from handlers.observability import logger, metrics

router = Router()  # type: ignore[no-untyped-call]
UNKNOWN: Final = "unknown_transaction"


class LabelIntakeUnavailableError(RuntimeError):
    """The transaction index or the labels stream failed: nothing is known to be published; the
    caller retries (safe: see the module docstring)."""


@dataclass(frozen=True)
class LabelIntake:
    """Resolve labels through the index and publish them: the one path of the API and the CLI."""

    index: TransactionIndex
    publisher: Publisher
    #: below the scorer Lambda's 5 s timeout, so a stuck broker gives a 503 rather than a timeout
    publish_timeout: float = 3.0

    def submit(
        self,
        labels: Sequence[LabelRequest],
        received_at: datetime | None = None,
        before_publish: Callable[[], None] | None = None,
    ) -> LabelsResponse:
        """Publish the labels whose transaction is indexed, as arrived at ``received_at`` (default:
        now); the outcome of each label in order. Raises ``LabelIntakeUnavailableError``, and
        whatever ``before_publish`` (called once the index is read) raises to stop there."""
        label_time = (received_at or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        try:
            found = self.index.get(label.transaction_id for label in labels)
        except redis.RedisError as exc:
            raise LabelIntakeUnavailableError(f"transaction index unavailable: {exc}") from exc
        events: list[LabelEvent] = []
        results: list[LabelOutcome] = []
        for label in labels:
            tx = found.get(label.transaction_id)
            if tx is None:
                results.append(LabelOutcome(transaction_id=label.transaction_id, status=UNKNOWN))
                continue
            events.append(
                LabelEvent(
                    trans_num=tx.trans_num,
                    merchant=tx.merchant,
                    transaction_time=datetime.fromtimestamp(tx.transaction_time, UTC),
                    label_time=label_time,
                    is_fraud=label.is_fraud,
                    reported_at=label.reported_at,
                )
            )
            results.append(LabelOutcome(transaction_id=label.transaction_id, status="accepted"))
        if events and before_publish is not None:
            before_publish()
        if events:
            try:
                self.publisher.publish(events, timeout=self.publish_timeout)
            except Exception as exc:
                raise LabelIntakeUnavailableError(f"labels stream unavailable: {exc}") from exc
        return LabelsResponse(
            label_time=label_time, accepted=len(events), unknown=len(results) - len(events), results=results
        )


def intake(timeout_ms: int | None = None, publish_timeout: float = 3.0) -> LabelIntake:
    """The intake wired from the handlers' settings (``bootstrap``; its adapters are cached):
    ``timeout_ms`` for Redis (default ``REDIS_TIMEOUT_MS``), ``publish_timeout`` in seconds."""
    return LabelIntake(bootstrap.transaction_index(timeout_ms), bootstrap.publisher(), publish_timeout)


@router.post(
    "/labels",
    summary="Report labels (chargebacks or their reversals) for scored transactions",
    description='One label `{transaction_id, is_fraud, reported_at?}` or `{"labels": [...]}` (up to '
    "500). Each label is resolved to its transaction and published to the labels stream; the "
    "label's arrival time is the receipt time. A transaction unknown to the index is reported as "
    "`unknown_transaction` and changes nothing. Retrying is safe.",
    responses={
        202: {
            "description": "Accepted: the outcome of each label",
            "content": {"application/json": {"model": LabelsResponse}},
        },
        503: {
            "description": "The transaction index or the labels stream is unavailable, or the "
            "request's deadline passed: retry"
        },
    },
)
def post_labels(body: Annotated[LabelsBody, Body()]) -> Response[Any]:
    labels = body.labels if isinstance(body, LabelBatchRequest) else [body]
    deadline.check(router.lambda_context, "the index read")
    try:
        answer = intake().submit(
            labels, before_publish=lambda: deadline.check(router.lambda_context, "publishing")
        )
    except LabelIntakeUnavailableError as exc:
        logger.error("label intake unavailable", extra={"reason": str(exc), "labels": len(labels)})
        metrics.add_metric(name="Unavailable", unit=MetricUnit.Count, value=1)
        return error_response(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
    metrics.add_metric(name="LabelsAccepted", unit=MetricUnit.Count, value=answer.accepted)
    metrics.add_metric(name="LabelsUnknown", unit=MetricUnit.Count, value=answer.unknown)
    logger.info(
        "labels received",
        extra={
            "labels": len(labels),
            "accepted": answer.accepted,
            "unknown": answer.unknown,
            "reversals": sum(not label.is_fraud for label in labels),
            "label_time": answer.label_time.isoformat(),
        },
    )
    return _json(HTTPStatus.ACCEPTED, answer.model_dump(mode="json"))


def _json(status: HTTPStatus, body: dict[str, Any]) -> Response[Any]:
    return Response(status_code=status.value, content_type=content_types.APPLICATION_JSON, body=body)
