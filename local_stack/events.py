"""The event shapes AWS hands to the Lambdas, built locally: API Gateway REST proxy and MSK."""

import base64
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

MSK_SOURCE_ARN = "arn:aws:kafka:us-east-1:000000000000:cluster/fraudsys-local/local"


class LocalContext(LambdaContext):
    """A Lambda context for local invocations. Its remaining time is what is left until
    ``deadline`` (``time.monotonic()`` seconds; the local API sets one per request), 0 once
    ``gone()`` says the client has gone away; without a deadline, a minute (a Lambda's timeout)."""

    def __init__(
        self,
        function_name: str = "fraudsys-local",
        memory_mb: int = 1024,
        deadline: float | None = None,
        gone: Callable[[], bool] | None = None,
    ) -> None:
        self.deadline = deadline
        self.gone = gone
        self._function_name = function_name
        self._function_version = "$LATEST"
        self._memory_limit_in_mb = memory_mb
        self._invoked_function_arn = f"arn:aws:lambda:us-east-1:000000000000:function:{function_name}"
        self._aws_request_id = str(uuid.uuid4())
        self._log_group_name = f"/aws/lambda/{function_name}"
        self._log_stream_name = "local"

    # Powertools' typing stub declares a staticmethod; the Lambda runtime's context has a method
    def get_remaining_time_in_millis(self) -> int:  # type: ignore[override]
        if self.gone is not None and self.gone():
            return 0
        if self.deadline is None:
            return 60_000
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def api_gateway_event(
    method: str,
    path: str,
    body: str | None = None,
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None,
    stage: str = "local",
) -> dict[str, Any]:
    """A REST API (v1) Lambda proxy integration event."""
    header_map = dict(headers or {})
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": header_map,
        "multiValueHeaders": {k: [v] for k, v in header_map.items()},
        "queryStringParameters": dict(query) if query else None,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": path,
            "httpMethod": method,
            "path": f"/{stage}{path}",
            "stage": stage,
            "requestId": str(uuid.uuid4()),
            "identity": {"sourceIp": "127.0.0.1"},
            "accountId": "000000000000",
            "apiId": "local",
        },
        "body": body,
        "isBase64Encoded": False,
    }


@dataclass(frozen=True, slots=True)
class StreamRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes


def msk_event(records: Iterable[StreamRecord], bootstrap_servers: str = "127.0.0.1:9092") -> dict[str, Any]:
    """An MSK event source mapping event: records grouped by ``topic-partition``, base64 payloads."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        grouped.setdefault(f"{r.topic}-{r.partition}", []).append(
            {
                "topic": r.topic,
                "partition": r.partition,
                "offset": r.offset,
                "timestamp": r.timestamp_ms,
                "timestampType": "CREATE_TIME",
                "key": base64.b64encode(r.key).decode() if r.key is not None else None,
                "value": base64.b64encode(r.value).decode(),
                "headers": [],
            }
        )
    return {
        "eventSource": "aws:kafka",
        "eventSourceArn": MSK_SOURCE_ARN,
        "bootstrapServers": bootstrap_servers,
        "records": grouped,
    }


def warm_instance() -> None:
    """The local API's handlers run in an instance warmed before it serves, as Lambda's
    provisioned concurrency does: Powertools emits no ``ColdStart`` metric there. Its cold-start
    metric is printed as a raw EMF line even with POWERTOOLS_METRICS_DISABLED (it goes through
    ``single_metric``, which ignores the setting); locally that line landed in the terminal, in
    the middle of the demo's table. Powertools reads AWS_LAMBDA_INITIALIZATION_TYPE once, at
    import: this sets the flag it derives from it."""
    from aws_lambda_powertools.metrics.provider import cold_start

    os.environ["AWS_LAMBDA_INITIALIZATION_TYPE"] = "provisioned-concurrency"
    cold_start.is_cold_start = False


def quiet_lambda_metrics() -> None:
    """Locally, metrics go to Prometheus (``/metrics``), not to EMF lines on stdout: Powertools
    with POWERTOOLS_METRICS_DISABLED still prints when 100 values pile up, so drop them."""
    from handlers.observability import metrics

    metrics.clear_metrics()
