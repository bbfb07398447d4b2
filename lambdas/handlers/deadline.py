"""Request deadlines in the handler path: work nobody waits for any more is dropped.

A request's deadline is its invocation's: ``context.get_remaining_time_in_millis()``. On AWS that
is the Lambda's remaining time (its timeout); the local API (``local_stack.api``) gives every
request a deadline counted from its arrival (``--deadline-ms``, default 250 ms), and 0 once the
client has gone away. The routes check it where they orchestrate, before each step that costs
or commits something: ``/predict`` before the feature read (nothing read, scored or published)
and before the publish (scored, but neither published nor answered); ``/labels`` before the
index read and before the publish. A request past its deadline is answered 503 with
``Retry-After`` in the API's one error body: the client (if it still listens) may retry.
"""

from http import HTTPStatus
from typing import Protocol

#: ``Retry-After`` (seconds) of every 503 that sheds load: the handler's, and the local API's own
RETRY_AFTER_SECONDS = 1


class RemainingTime(Protocol):
    def get_remaining_time_in_millis(self) -> int: ...


class DeadlineExceededError(RuntimeError):
    """The request's deadline passed (or its client left) before ``step``: the step is not done."""

    status = HTTPStatus.SERVICE_UNAVAILABLE

    def __init__(self, step: str) -> None:
        super().__init__(f"deadline exceeded before {step}: not done, retry later")
        self.step = step


def check(context: RemainingTime | None, step: str) -> None:
    """Raise ``DeadlineExceededError`` when ``context`` has no time left for ``step``."""
    if context is not None and context.get_remaining_time_in_millis() <= 0:
        raise DeadlineExceededError(step)


def retry_after() -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER_SECONDS)}
