"""Load test of the local API at twice the target rate (default 400 requests/s for 3 minutes).

The same setup as ``bench.http_latency`` (API process with the local stack, a trained champion,
Redis holding ~1,200 cards), then one open-loop run at ``--rate`` on keep-alive connections.
Reported: errors (must be 0, including requests never sent because every connection was still
busy at the end), achieved rate, latency percentiles per ``--window`` seconds (must stay stable),
and the RSS and CPU of the API process sampled every ``--rss-interval`` seconds (must not grow).

With ``--profile-seconds N`` (default 20) and py-spy on the PATH
(``uv run --with py-spy python -m bench.load``), py-spy samples the threads of the API process
that hold the GIL for N seconds in the middle of the run, and the report shows where that time
goes (share of GIL samples per function, inclusive) -- the API process can use at most one core.

    uv run --with py-spy python -m bench.load [--rate 400] [--minutes 3] [--json out.json]
"""

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import write_json
from bench.http_latency import (
    add_server_args,
    api_server,
    cpu_seconds,
    machine,
    open_loop,
    phase_row,
    rss_mb,
    server_options,
    table,
    warm_up,
    workdir_of,
)

MAX_MINUTES = 15.0
RSS_GROWTH_LIMIT_MB = 20.0  # from the end of the first window to the end of the run
# Where the API process spends its GIL time: (label, frame name as printed by py-spy).
PROFILE_GROUPS = (
    (
        "HTTP request threads, total (handle_one_request)",
        "BaseHTTPRequestHandler.handle_one_request",
    ),
    ("handler invocation incl. Powertools wrappers", "LocalApi.invoke"),
    (
        "  Powertools resolver + OpenAPI validation (whole route)",
        "OpenAPIRequestValidationMiddleware.handler",
    ),
    ("  predict route body", "predict (handlers/predict.py)"),
    ("    Scorer.score", "Scorer.score"),
    ("      RedisFeatureStore.read (round trip + decode)", "RedisFeatureStore.read"),
    ("        decode_card_events", "decode_card_events"),
    ("      request_features (feature math)", "request_features"),
    ("      LoadedModel.predict (XGBoost)", "LoadedModel.predict"),
    ("        RowContributions (XGBoost C API)", "RowContributions.__call__"),
    ("    _publish (KafkaPublisher.publish: send + flush)", "_publish (handlers/predict.py)"),
    ("    logger.info (scored)", "Logger.info"),
    ("local MSK poller + updater handler", "KafkaPoller._run"),
)


class Sampler:
    """RSS and CPU time of a process every ``interval`` seconds, in a thread."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._t0 = time.perf_counter()

    def _run(self) -> None:
        while True:
            self.samples.append(
                {
                    "t_s": time.perf_counter() - self._t0,
                    "rss_mb": rss_mb(self.pid),
                    "cpu_s": cpu_seconds(self.pid),
                }
            )
            if self._stop.wait(self.interval):
                return

    def start(self) -> "Sampler":
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def summary(self, first_window: float) -> dict[str, Any]:
        t = np.array([s["t_s"] for s in self.samples])
        rss = np.array([s["rss_mb"] for s in self.samples])
        cpu = np.array([s["cpu_s"] for s in self.samples])
        if len(t) < 2:
            return {"samples": len(t)}
        after = rss[t >= first_window]
        baseline = float(after[0]) if len(after) else float(rss[0])
        slope = float(np.polyfit(t[t >= first_window], after, 1)[0] * 60) if len(after) >= 3 else float("nan")
        return {
            "samples": len(t),
            "interval_s": self.interval,
            "rss_start_mb": float(rss[0]),
            "rss_after_first_window_mb": baseline,
            "rss_end_mb": float(rss[-1]),
            "rss_max_mb": float(rss.max()),
            "rss_growth_after_first_window_mb": float(rss[-1]) - baseline,
            "rss_slope_after_first_window_mb_per_min": slope,
            "cpu_pct_mean": float(100 * (cpu[-1] - cpu[0]) / (t[-1] - t[0])),
        }


def profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy on the API process, GIL holders only, raw collapsed stacks; None without py-spy."""
    binary = shutil.which("py-spy")
    if binary is None or seconds <= 0:
        return None
    argv = [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200"]
    argv += ["--gil", "--threads", "--nonblocking", "--format", "raw", "--output", str(out)]
    # a fixed argv list, no shell
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # nosec B603


def summarize_profile(raw: Path, top: int = 25) -> dict[str, Any]:
    """Share of GIL samples per function (inclusive), per thread kind, and for PROFILE_GROUPS."""
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    stacks: list[tuple[str, int]] = []
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        stacks.append((re.sub(r":\d+\)", ")", stack), n))
        frames = stack.split(";")
        thread = re.sub(r"Thread-\d+", "Thread-N", re.sub(r"\s*\(\d+\)", "", frames[0]))
        threads[thread.removeprefix("thread").strip(" :")] += n
        for frame in {re.sub(r":\d+\)$", ")", f) for f in frames[1:]}:
            inclusive[frame] += n
    if total == 0:
        return {"samples": 0}

    def share(pattern: str) -> float:
        return 100 * sum(n for stack, n in stacks if pattern in stack) / total

    skip = ("threading.py", "socketserver.py", "__init__ (__init__)")
    top_rows = [(f, n) for f, n in inclusive.most_common() if not any(s in f for s in skip)][:top]
    return {
        "samples": total,
        "threads_pct": {k: 100 * v / total for k, v in threads.most_common()},
        "groups_pct": {label: share(pattern) for label, pattern in PROFILE_GROUPS},
        "top_inclusive_pct": {f: 100 * n / total for f, n in top_rows},
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rate", type=float, default=400.0, help="open-loop requests per second")
    p.add_argument("--minutes", type=float, default=3.0, help=f"duration (at most {MAX_MINUTES:g})")
    p.add_argument("--window", type=float, default=30.0, help="seconds per latency window")
    p.add_argument("--rss-interval", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--connections", type=int, default=64, help="keep-alive connections of the client")
    p.add_argument("--profile-seconds", type=float, default=20.0, help="py-spy sampling (0: off)")
    add_server_args(p)
    args = p.parse_args(argv)
    duration = 60 * min(args.minutes, MAX_MINUTES)
    results: dict[str, Any] = {
        "machine": machine(),
        "command": "uv run python -m bench.load " + " ".join(sys.argv[1:]),
    }
    with workdir_of(args) as workdir, api_server(server_options(args, workdir)) as server:
        results["setup"] = server.info
        print("setup:", json.dumps(server.info), flush=True)
        warm_up(server)
        sampler = Sampler(server.pid, args.rss_interval).start()
        raw = workdir / "profile.raw"
        spy: subprocess.Popen[bytes] | None = None

        def start_profile() -> None:
            nonlocal spy
            spy = profile(server.pid, min(args.profile_seconds, duration / 2), raw)

        timer = threading.Timer(min(30.0, duration / 4), start_profile)
        timer.start()

        def tick(elapsed: float) -> None:
            if int(elapsed) % 30 == 0:
                print(f"  {elapsed:.0f} s, rss {rss_mb(server.pid):.0f} MB", flush=True)

        try:
            run = asyncio.run(
                open_loop(
                    server, f"open loop {args.rate:g}/s", args.rate, duration, args.connections, on_tick=tick
                )
            )
        finally:
            timer.cancel()
            sampler.stop()
        if spy is not None:
            spy.wait(60)
        results["overall"] = phase_row(run)
        results["windows"] = run.windows(args.window)
        results["rss"] = sampler.summary(args.window)
        results["rss_samples"] = sampler.samples
        results["profile"] = summarize_profile(raw) if raw.exists() else {"samples": 0, "note": "no py-spy"}
        results["server_log_tail"] = server.log.read_text(errors="replace").splitlines()[-5:]
    overall, windows, rss = results["overall"], results["windows"], results["rss"]
    p99s = [w["p99_ms"] for w in windows if "p99_ms" in w]
    results["verdict"] = {
        "sustained_rate": bool(overall["achieved_rps"] >= 0.98 * args.rate),
        "zero_errors": overall["errors"] == 0,
        "rss_flat": bool(
            abs(rss.get("rss_growth_after_first_window_mb", float("inf"))) < RSS_GROWTH_LIMIT_MB
        ),
        "latency_stable": bool(p99s and max(p99s) < 2 * min(p99s) + 1.0),
    }
    print(
        table(
            [overall],
            (
                "phase",
                "requests",
                "errors",
                "unsent",
                "achieved_rps",
                "p50_ms",
                "p99_ms",
                "max_ms",
                "server_cpu_pct",
                "server_cpu_ms_per_req",
            ),
        )
    )
    print(f"per {args.window:g} s window:")
    print(
        table(
            windows, ("window", "requests", "errors", "achieved_rps", "p50_ms", "p95_ms", "p99_ms", "max_ms")
        )
    )
    print("rss:", json.dumps(rss))
    prof = results["profile"]
    if prof.get("samples"):
        print(f"GIL profile ({prof['samples']} samples): share of GIL time")
        for label, pct in prof["groups_pct"].items():
            print(f"  {pct:5.1f}%  {label}")
        for thread, pct in prof["threads_pct"].items():
            print(f"  {pct:5.1f}%  thread {thread}")
    print("verdict:", json.dumps(results["verdict"]))
    return write_json(args.json, results)


if __name__ == "__main__":
    main()
