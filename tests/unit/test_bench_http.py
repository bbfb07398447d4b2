"""The HTTP benchmark's reading of ``Server-Timing`` and its per-phase split (pure functions)."""

import math

import numpy as np
import pytest

from bench.http.analysis import Run, server_timing
from bench.http.server import refused_server_env


def test_server_timing_reads_each_duration_and_skips_what_it_cannot_read() -> None:
    assert server_timing(b"handler;dur=2.5, score;dur=1.25, read;dur=0.5") == {
        "handler": 2.5,
        "score": 1.25,
        "read": 0.5,
    }
    assert server_timing(b"cache;desc=hit, handler; dur = 3") == {"handler": 3.0}
    assert server_timing(b"handler;dur=abc, read;dur=0.1") == {"read": 0.1}
    assert server_timing(b"") == {}


def test_a_phase_splits_latency_by_server_timing_over_answered_requests_only() -> None:
    # given 100 answers whose handler took 1 ms (score 0.6, read 0.2) and the client saw 1.5 ms,
    # one more answer without the header, and one error
    run = Run("phase")
    for i in range(100):
        t = float(i)
        run.record(t, t, t + 0.0015, "200", {"handler": 1.0, "score": 0.6, "read": 0.2})
    run.record(100.0, 100.0, 100.002, "200")
    run.record(101.0, 101.0, 101.5, "TimeoutError")

    summary = run.summary()

    # then the split covers the answers that carry it, and the time outside is the rest
    assert summary["errors"] == 1
    assert summary["handler_p99_ms"] == pytest.approx(1.0)
    assert summary["score_p50_ms"] == pytest.approx(0.6)
    assert summary["read_p99_ms"] == pytest.approx(0.2)
    assert summary["outside_handler_p99_ms"] == pytest.approx(0.5)


def test_a_phase_without_server_timing_reports_no_split() -> None:
    run = Run("phase")
    run.record(0.0, 0.0, 0.001, "200")
    summary = run.summary()
    assert "handler_p99_ms" not in summary
    assert math.isclose(summary["p50_ms"], 1.0)
    assert not np.isnan(summary["p99_ms"])


def test_server_env_may_not_set_what_the_stack_sets_for_the_handlers() -> None:
    given = ["PUBLISH_MODE=background", "STREAM_KIND=none", "OMP_NUM_THREADS=1"]  # pragma: allowlist secret
    assert refused_server_env(given) == ["PUBLISH_MODE", "STREAM_KIND"]
    assert refused_server_env(["POWERTOOLS_LOG_LEVEL=DEBUG", "OMP_NUM_THREADS=1"]) == []
