"""The HTTP benchmark's reading of ``Server-Timing`` and its per-phase split, the soak's memory and
handler-p99 rules (pure functions), and the process-tree walk."""

import math
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest
import redis

from bench.common import parent_pid, process_tree, process_usage
from bench.http.analysis import Run, server_timing
from bench.http.server import refused_server_env
from bench.load import handler_p99_flat, memory_summary


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


def test_the_soak_calls_memory_flat_by_its_slope_over_the_last_20_minutes() -> None:
    # given 30 minutes of samples every 5 s: a process at 100 MB growing 0.1 MB/min (2 MB in 20
    # minutes, under 5 % of the level), and one growing 9 MB/min (the broker without retention)
    t = [5.0 * i for i in range(361)]
    steady = [100.0 + 0.1 * s / 60 for s in t]
    leaking = [20.0 + 9.0 * s / 60 for s in t]

    flat = memory_summary(t, steady, [0.0] * len(t), first_window=300.0)
    growing = memory_summary(t, leaking, [0.0] * len(t), first_window=300.0)

    # then the slope is measured over the last 20 minutes and only the first process is flat
    assert flat["slope_span_min"] == pytest.approx(20.0)
    assert flat["rss_slope_mb_per_min"] == pytest.approx(0.1)
    assert flat["flat"] is True
    assert growing["rss_slope_mb_per_min"] == pytest.approx(9.0)
    assert growing["rss_growth_after_first_window_mb"] == pytest.approx(9.0 * 25)
    assert growing["flat"] is False


def test_the_handler_p99_is_flat_unless_a_later_window_is_half_again_above_the_median() -> None:
    def windows(*p99s: float) -> list[dict[str, Any]]:
        return [{"handler_p99_ms": p} for p in p99s]

    assert handler_p99_flat(windows(30.0, 8.0, 9.0, 8.5, 9.5, 10.0)) is True  # the warm-up window
    assert handler_p99_flat(windows(8.0, 8.0, 9.0, 8.5, 9.5, 25.0)) is False
    assert handler_p99_flat(windows(8.0)) is None


def test_the_process_tree_holds_a_child_of_this_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        tree = process_tree(os.getpid())
        assert tree[0] == os.getpid()
        assert child.pid in tree
        assert parent_pid(child.pid) == os.getpid()
        usage = process_usage(child.pid)
        assert usage is not None
        assert usage[0] > 0
    finally:
        child.communicate(b"")


def test_the_soak_tells_redis_servers_data_from_the_rest_of_its_memory() -> None:
    from bench.load import Sampler
    from tests.support.services import redis_server

    with redis_server() as service:
        client = redis.Redis(port=service.port)
        sampler = Sampler(service.process.pid, interval=3600.0, redis_port=service.port)
        sampler._sample()
        # when the store gets ~8 MB of data between two samples
        client.mset({f"k{i}": b"x" * 1000 for i in range(8_000)})
        time.sleep(0.5)  # redis-server refreshes its RSS figure in its cron (10 times a second)
        sampler._sample()
        data = sampler.summary(first_window=0.0)["redis_data"]
        client.close()

    # then the growth is counted as redis-server's data set, not as the rest of its memory
    assert 7.0 < data["dataset_growth_mb"] < 10.0
    assert data["dataset_end_mb"] > data["dataset_start_mb"]
    assert abs(data["rss_outside_data"]["rss_growth_after_first_window_mb"]) < 5.0
