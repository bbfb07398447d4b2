"""The e2e tests' ``wait_until``: a probe that raises is tried again, not the end of the test."""

import urllib.error

import pytest
import redis

from tests.e2e.test_local_stack import wait_until


def test_a_probe_that_raises_is_retried_until_it_succeeds() -> None:
    errors: list[Exception] = [
        urllib.error.URLError(ConnectionRefusedError(111, "refused")),
        TimeoutError("timed out"),
        urllib.error.URLError(TimeoutError("read timed out")),
        ConnectionResetError(104, "reset"),
        redis.TimeoutError("Timeout reading from socket"),
    ]
    calls = 0

    def probe() -> bool:
        nonlocal calls
        calls += 1
        if errors:
            raise errors.pop(0)
        return True

    wait_until(probe, timeout=10, what="the probe")
    assert calls == 6


def test_the_last_error_is_named_when_it_never_succeeds() -> None:
    def probe() -> bool:
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(AssertionError, match=r"waiting for the API \(last error: ConnectionRefusedError"):
        wait_until(probe, timeout=0.5, what="the API")


def test_other_errors_are_not_swallowed() -> None:
    def probe() -> bool:
        raise KeyError("a bug in the test, not a slow machine")

    with pytest.raises(KeyError):
        wait_until(probe, timeout=5, what="the probe")
