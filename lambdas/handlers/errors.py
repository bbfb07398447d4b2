"""The one body of every non-2xx answer, from the Lambda and from the local API alike::

    {"statusCode": 422, "message": "amount_usd: Input should be greater than 0", "detail": [...]}

``statusCode`` repeats the HTTP status, ``message`` is for people (for a 422 it names each field:
``field: problem; ...``), ``detail`` (validation errors only) lists ``{loc, type, msg}``.
"""

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler import Response, content_types

# The API's routes and their methods: another method on a known path is a 405 with ``Allow``.
ROUTES: Mapping[str, tuple[str, ...]] = {"/predict": ("POST",), "/labels": ("POST",), "/health": ("GET",)}


def error_body(status: int, message: str, detail: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"statusCode": int(status), "message": message}
    if detail is not None:
        body["detail"] = detail
    return body


def error_response(
    status: HTTPStatus,
    message: str,
    detail: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response[Any]:
    return Response(
        status_code=status.value,
        content_type=content_types.APPLICATION_JSON,
        body=error_body(status.value, message, detail),
        headers=dict(headers or {}),
    )


def json_position(document: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset, as ``json.JSONDecodeError`` counts them."""
    offset = max(0, min(offset, len(document)))
    line = document.count("\n", 0, offset) + 1
    column = offset - (document.rfind("\n", 0, offset) + 1) + 1
    return line, column


def route_not_found(method: str, path: str) -> tuple[HTTPStatus, str, dict[str, str]]:
    """404, or 405 with ``Allow`` when the path exists with other methods."""
    allowed = ROUTES.get(path)
    if allowed:
        status = HTTPStatus.METHOD_NOT_ALLOWED
        return (
            status,
            f"{method} {path}: {status.phrase} (allowed: {', '.join(allowed)})",
            {"Allow": ", ".join(allowed)},
        )
    return HTTPStatus.NOT_FOUND, f"{method} {path}: {HTTPStatus.NOT_FOUND.phrase}", {}
