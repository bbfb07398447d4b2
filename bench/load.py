"""Load test of the local API at twice the target rate (default 400 requests/s for 3 minutes),
or (``--sweep``) an overload sweep: open-loop phases at each rate, then a burst and a probe.

The same setup as ``bench.http_latency`` (``bench.http.server``: the API process with the local
stack, a trained champion, Redis holding ~1,200 cards), then one open-loop run at ``--rate`` on
keep-alive connections. Reported: errors (must be 0, including requests never sent because
every connection was still busy at the end), achieved rate, latency percentiles per ``--window``
seconds (HTTP from send, and the handler's own time from the answers' ``Server-Timing``; must
stay stable), and the RSS and CPU of every process of the stack -- the API process and all its
descendants (redis-server, the tansu broker, the moto S3 server, the archiver, API workers,
MLflow if any), found by their parent links in /proc at each sample -- every
``--rss-interval`` seconds (must not grow).

The rules, fixed before any run:

* a process's memory is *flat* when the least-squares slope of its RSS over the last
  ``FLAT_MINUTES`` (20) minutes of the run (over all of it after the first window when the run is
  shorter than that plus one window), times that span, is less than ``FLAT_SHARE`` (5 %) of its
  mean RSS over the span, or less than ``FLAT_FLOOR_MB`` (5 MB) when that is larger; reported per
  process: RSS at the end of the first window and at the end, growth between them, slope (MB/min);
* the handler p99 is *flat* when no window after the first has a handler p99 above
  ``P99_FLAT_FACTOR`` (1.5) times the median window's, plus 1 ms (the first window holds the
  warm-up of a fresh process); the HTTP p99's verdict (``latency_stable``) is max < 2 x min + 1 ms.

The soak (issue 19's proof: 30 minutes at a rate well below the knee of one API process)::

    uv run python -m bench.load --rate 100 --minutes 30 --window 300 --api-workers 1 \
        --publish-mode background --profile-seconds 0 --json soak.json

With ``--profile-seconds N`` (default 20) and py-spy on the PATH
(``uv run --with py-spy python -m bench.load``), py-spy samples the threads of the API process
that hold the GIL for N seconds in the middle of the run, and the report shows where that time
goes (share of GIL samples per function, inclusive) -- the API process can use at most one core.

    uv run --with py-spy python -m bench.load [--rate 400] [--minutes 3] [--json out.json]

The sweep (``--sweep 100,200,400,800``): one open-loop phase of ``--phase-seconds`` per rate,
``--pause-seconds`` apart, then a burst (``--burst RATE:SECONDS``) and, from the burst's end, a
probe at ``--probe RATE:SECONDS`` on its own connections (another client). Per phase: goodput
(answers 200 per second of the phase), p50/p99 of the 200s (from send), the 503s (the API
shedding load) and the p99 of their latency, and every other error (timeouts, connections that
never freed up). Recovery: the time from the burst's end until the probe's last bad answer (not
a 200, or slower than ``--good-ms`` from its scheduled time); 0 when the probe never saw one.

    uv run python -m bench.load --sweep 100,200,400,800 --connections 256 --json sweep.json
"""

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import redis

from bench.common import environment, process_label, process_tree, process_usage, write_json
from bench.http.analysis import Run, machine, phase_row, table
from bench.http.client import CLIENT_LOOPS, open_loop, run_client, warm_up
from bench.http.server import Server, add_server_args, api_server, rss_mb, server_options, workdir_of

MAX_MINUTES = 60.0
FLAT_MINUTES = 20.0  # memory: the slope is taken over the run's last 20 minutes
FLAT_SHARE = 0.05  # ... and times that span must stay under 5 % of the level
FLAT_FLOOR_MB = 5.0  # ... or under 5 MB, whichever is larger
P99_FLAT_FACTOR = 1.5  # handler p99: no window after the first above 1.5 x the median window + 1 ms
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
    ("        PathShap (the exact SHAP path table)", "PathShap.__call__"),
    ("        RowContributions (XGBoost C API, until the table is built)", "RowContributions.__call__"),
    ("    _publish (KafkaPublisher.publish: send + flush)", "_publish (handlers/predict.py)"),
    ("    logger.info (scored)", "Logger.info"),
)


class Sampler:
    """RSS and CPU time of every process in the tree under ``root`` (the API process and all its
    descendants) every ``interval`` seconds, in a thread; the 1-minute load average; and, with
    ``redis_port``, the size of redis-server's data (``INFO memory``: ``used_memory_dataset``), so
    that its RSS can be told apart into the data the stream adds and the rest."""

    def __init__(self, root: int, interval: float, redis_port: int | None = None) -> None:
        self.root, self.interval = root, interval
        self.redis = None if redis_port is None else redis.Redis(port=redis_port, socket_timeout=2)
        self.redis_data: list[dict[str, float]] = []  # t_s, dataset_mb, rss_mb (redis-server's)
        self.series: dict[int, dict[str, Any]] = {}  # pid -> label, t_s, rss_mb, cpu_s
        self.samples: list[dict[str, float]] = []  # the API process and its API workers, summed
        self.loadavg: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._t0 = time.perf_counter()

    def _sample(self) -> None:
        t = time.perf_counter() - self._t0
        api_rss = api_cpu = 0.0
        for pid in process_tree(self.root):
            usage = process_usage(pid)
            if usage is None:
                continue
            series = self.series.get(pid)
            if series is None:
                series = {"pid": pid, "label": process_label(pid), "t_s": [], "rss_mb": [], "cpu_s": []}
                self.series[pid] = series
            series["t_s"].append(t)
            series["rss_mb"].append(usage[0] / 2**20)
            series["cpu_s"].append(usage[1])
            if pid == self.root or series["label"] == "API worker":
                api_rss += usage[0] / 2**20
                api_cpu += usage[1]
        self.samples.append({"t_s": t, "rss_mb": api_rss, "cpu_s": api_cpu})
        self.loadavg.append(os.getloadavg()[0])
        if self.redis is not None:
            try:
                memory = self.redis.info("memory")
            except redis.RedisError:  # this sample has no data-set figure; the others stand
                return
            rss = float(memory["used_memory_rss"]) / 2**20
            self.redis_data.append(
                {"t_s": t, "dataset_mb": int(memory["used_memory_dataset"]) / 2**20, "rss_mb": rss}
            )

    def _run(self) -> None:
        while True:
            self._sample()
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
        """The API process with its workers (``rss``), every process (``processes``), the load."""
        t = [s["t_s"] for s in self.samples]
        processes = [
            {"label": s["label"], "pid": s["pid"]}
            | memory_summary(s["t_s"], s["rss_mb"], s["cpu_s"], first_window)
            for s in sorted(self.series.values(), key=lambda s: (s["label"], s["pid"]))
        ]
        load = np.asarray(self.loadavg) if self.loadavg else np.asarray([np.nan])
        data: dict[str, Any] = {}
        if len(self.redis_data) >= 2:
            first, last = self.redis_data[0], self.redis_data[-1]
            t_r = [s["t_s"] for s in self.redis_data]
            outside = [s["rss_mb"] - s["dataset_mb"] for s in self.redis_data]
            data = {
                "dataset_start_mb": first["dataset_mb"],
                "dataset_end_mb": last["dataset_mb"],
                "dataset_growth_mb": last["dataset_mb"] - first["dataset_mb"],
                # redis-server's RSS but its data set: overhead, buffers, fragmentation
                "rss_outside_data": memory_summary(t_r, outside, [0.0] * len(t_r), first_window),
            }
        return {
            "redis_data": data,
            "rss": memory_summary(
                t, [s["rss_mb"] for s in self.samples], [s["cpu_s"] for s in self.samples], first_window
            ),
            "processes": processes,
            "loadavg_1m": {
                "first": float(load[0]),
                "median": float(np.median(load)),
                "max": float(load.max()),
                "last": float(load[-1]),
            },
        }


def memory_summary(
    times: Sequence[float], rss_mb: Sequence[float], cpu_s: Sequence[float], first_window: float
) -> dict[str, Any]:
    """RSS at the end of the first window, at the end, the growth between, the slope over the last
    ``FLAT_MINUTES`` and whether it is flat (the module's rule); mean CPU."""
    t, rss, cpu = (np.asarray(a, dtype=np.float64) for a in (times, rss_mb, cpu_s))
    if len(t) < 2:
        return {"samples": len(t)}
    after = t >= min(first_window, t[-1])
    baseline = float(rss[after][0])
    span = (t >= max(first_window, t[-1] - 60 * FLAT_MINUTES)) if t[-1] > first_window else after
    out: dict[str, Any] = {
        "samples": len(t),
        "seen_s": [float(t[0]), float(t[-1])],
        "rss_start_mb": float(rss[0]),
        "rss_after_first_window_mb": baseline,
        "rss_end_mb": float(rss[-1]),
        "rss_max_mb": float(rss.max()),
        "rss_growth_after_first_window_mb": float(rss[-1]) - baseline,
        "cpu_pct_mean": float(100 * (cpu[-1] - cpu[0]) / (t[-1] - t[0])),
    }
    if span.sum() >= 3:
        minutes = float(t[span][-1] - t[span][0]) / 60
        slope = float(np.polyfit(t[span] / 60, rss[span], 1)[0])  # MB per minute
        limit = max(FLAT_SHARE * float(rss[span].mean()), FLAT_FLOOR_MB)
        out |= {
            "slope_span_min": minutes,
            "rss_slope_mb_per_min": slope,
            "flat_limit_mb": limit,
            "flat": bool(abs(slope) * minutes < limit),
        }
    return out


def handler_p99_flat(windows: Sequence[dict[str, Any]]) -> bool | None:
    """The module's rule on the handler p99 per window; None without two windows that have it."""
    p99s = [w["handler_p99_ms"] for w in windows if "handler_p99_ms" in w]
    if len(p99s) < 2:
        return None
    return bool(max(p99s[1:]) <= P99_FLAT_FACTOR * float(np.median(p99s)) + 1.0)


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


def overload_row(run: Run, seconds: float, good_ms: float) -> dict[str, Any]:
    """One sweep phase: goodput, latency of the 200s, the 503s and the other errors."""
    status = np.asarray(run.status)
    sched, sent, done = (np.asarray(a, dtype=np.float64) for a in (run.scheduled, run.sent, run.done))
    ok = status == "200"
    refused = status == "503"
    latency = (done - sent) * 1000
    row: dict[str, Any] = {
        "phase": run.name,
        "requests": len(status),
        "ok": int(ok.sum()),
        "goodput_rps": float(ok.sum()) / seconds if seconds > 0 else float("nan"),
        "ok_in_time": int((ok & ((done - sched) * 1000 <= good_ms)).sum()),
        "refused_503": int(refused.sum()),
        "other_errors": int((~ok & ~refused).sum()),
        "statuses": dict(run.statuses),
        # share of one core over the phase: the API (front and instance) and the client
        "api_cpu_pct": 100 * run.server_cpu_s / seconds if seconds > 0 else float("nan"),
        "client_cpu_pct": 100 * run.client_cpu_s / seconds if seconds > 0 else float("nan"),
    }
    if ok.any():
        p50, p99 = np.percentile(latency[ok], [50, 99])
        row |= {"p50_ok_ms": float(p50), "p99_ok_ms": float(p99), "max_ok_ms": float(latency[ok].max())}
        for name in ("queue", "handler"):  # Server-Timing of the 200s: the wait, the invocation
            values = np.array([run.timings[i].get(name, np.nan) for i in np.flatnonzero(ok)])
            if len(values) and not np.isnan(values).all():
                p50, p99 = np.nanpercentile(values, [50, 99])
                row |= {f"{name}_p50_ms": float(p50), f"{name}_p99_ms": float(p99)}
    if refused.any():
        row["refusal_p50_ms"], row["refusal_p99_ms"] = (
            float(v) for v in np.percentile(latency[refused], [50, 99])
        )
    return row


def recovery_seconds(probe: Run, burst_end: float, good_ms: float) -> float:
    """Seconds from the burst's end until the probe's last bad answer (not a 200, or answered
    more than ``good_ms`` after its scheduled time); 0.0 if every probe answer was good."""
    bad = [
        done - burst_end
        for sched, done, status in zip(probe.scheduled, probe.done, probe.status, strict=True)
        if status != "200" or (done - sched) * 1000 > good_ms
    ]
    return max(max(bad, default=0.0), 0.0)


def rate_and_seconds(text: str) -> tuple[float, float]:
    rate, _, seconds = text.partition(":")
    return float(rate), float(seconds)


async def sweep(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """The overload sweep (see the module's docstring)."""
    rows = []
    for rate in (float(r) for r in str(args.sweep).split(",") if r):
        run = await open_loop(server, f"{rate:g}/s", rate, args.phase_seconds, args.connections)
        rows.append(overload_row(run, args.phase_seconds, args.good_ms))
        print(table([rows[-1]], SWEEP_KEYS).splitlines()[-1], flush=True)
        await asyncio.sleep(args.pause_seconds)
    burst_rate, burst_seconds = rate_and_seconds(args.burst)
    probe_rate, probe_seconds = rate_and_seconds(args.probe)
    burst_task = asyncio.create_task(
        open_loop(server, f"burst {burst_rate:g}/s", burst_rate, burst_seconds, args.connections)
    )
    await asyncio.sleep(burst_seconds + 0.01)  # open_loop starts 10 ms after it is called
    probe = await open_loop(server, f"probe {probe_rate:g}/s", probe_rate, probe_seconds, 8)
    burst = await burst_task
    burst_end = burst.started + burst_seconds
    rows.append(overload_row(burst, burst_seconds, args.good_ms))
    rows.append(overload_row(probe, probe_seconds, args.good_ms))
    return {
        "phases": rows,
        "recovery_s": recovery_seconds(probe, burst_end, args.good_ms),
        "good_ms": args.good_ms,
    }


SWEEP_KEYS = (
    "phase",
    "requests",
    "ok",
    "goodput_rps",
    "ok_in_time",
    "p50_ok_ms",
    "p99_ok_ms",
    "refused_503",
    "refusal_p99_ms",
    "other_errors",
    "queue_p50_ms",
    "handler_p50_ms",
    "handler_p99_ms",
    "api_cpu_pct",
    "client_cpu_pct",
)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rate", type=float, default=400.0, help="open-loop requests per second")
    p.add_argument("--minutes", type=float, default=3.0, help=f"duration (at most {MAX_MINUTES:g})")
    p.add_argument("--window", type=float, default=30.0, help="seconds per latency window")
    p.add_argument("--rss-interval", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--connections", type=int, default=64, help="keep-alive connections of the client")
    p.add_argument("--profile-seconds", type=float, default=20.0, help="py-spy sampling (0: off)")
    p.add_argument("--sweep", default="", help="overload sweep: open-loop rates, e.g. 100,200,400,800")
    p.add_argument("--phase-seconds", type=float, default=30.0, help="sweep: seconds per rate")
    p.add_argument("--pause-seconds", type=float, default=5.0, help="sweep: pause between phases")
    p.add_argument("--burst", default="800:10", help="sweep: the burst, RATE:SECONDS")
    p.add_argument("--probe", default="100:30", help="sweep: the probe after the burst, RATE:SECONDS")
    p.add_argument("--good-ms", type=float, default=250.0, help="sweep: a good answer is a 200 within this")
    p.add_argument("--client-loop", choices=CLIENT_LOOPS, default="uvloop", help="the client's event loop")
    add_server_args(p)
    args = p.parse_args(argv)
    if args.minutes > MAX_MINUTES:
        p.error(f"--minutes: at most {MAX_MINUTES:g}")
    with started(args) as (workdir, server, results):
        if args.sweep:
            results.update(run_client(sweep(server, args), args.client_loop))
        else:
            results.update(soak(server, workdir, args))
        results["loadavg_1m_at_end"] = os.getloadavg()[0]
        results["server_log_tail"] = server.log.read_text(errors="replace").splitlines()[-5:]
    if args.sweep:
        print(table(results["phases"], SWEEP_KEYS))
        recovery = results["recovery_s"]
        print(f"recovery after the burst: {recovery:.2f} s (good: a 200 within {args.good_ms:g} ms)")
    else:
        report(results, args)
    return write_json(args.json, results)


@contextlib.contextmanager
def started(args: argparse.Namespace) -> Iterator[tuple[Path, Server, dict[str, Any]]]:
    """The API process with the local stack, ready and warmed up, and the results' header."""
    results: dict[str, Any] = {
        "machine": machine(),
        "commit": environment()["commit"],
        "command": "uv run python -m bench.load " + " ".join(sys.argv[1:]),
        "client_loop": args.client_loop,
    }
    with workdir_of(args) as workdir, api_server(server_options(args, workdir)) as server:
        results["setup"] = server.info
        print("setup:", json.dumps(server.info), flush=True)
        warm_up(server)
        yield workdir, server, results


def soak(server: Server, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One open-loop run at ``--rate`` for ``--minutes``, the stack's processes sampled."""
    duration = 60 * args.minutes
    sampler = Sampler(server.pid, args.rss_interval, int(server.info["redis_port"])).start()
    raw = workdir / "profile.raw"
    spy: subprocess.Popen[bytes] | None = None

    def start_profile() -> None:
        nonlocal spy
        spy = profile(server.pid, min(args.profile_seconds, duration / 2), raw)

    timer = threading.Timer(min(30.0, duration / 4), start_profile)
    timer.start()
    every = 30 if duration <= 600 else 60

    def tick(elapsed: float) -> None:
        if int(elapsed) % every == 0:
            load = os.getloadavg()[0]
            print(f"  {elapsed:.0f} s, API rss {rss_mb(server.pid):.0f} MB, load {load:.2f}", flush=True)

    try:
        name = f"open loop {args.rate:g}/s"
        run = run_client(
            open_loop(server, name, args.rate, duration, args.connections, on_tick=tick), args.client_loop
        )
    finally:
        timer.cancel()
        sampler.stop()
    if spy is not None:
        spy.wait(60)
    results: dict[str, Any] = {"overall": phase_row(run), "windows": run.windows(args.window)}
    results |= sampler.summary(args.window)
    results["rss_samples"] = sampler.samples
    results["process_samples"] = list(sampler.series.values())
    results["profile"] = summarize_profile(raw) if raw.exists() else {"samples": 0, "note": "no py-spy"}
    overall, windows = results["overall"], results["windows"]
    p99s = [w["p99_ms"] for w in windows if "p99_ms" in w]
    memory = [results["rss"], *results["processes"]]
    data = results["redis_data"]
    scored = int(overall["statuses"].get("200", 0))
    if data and scored:  # each 200 is a new transaction the updater adds to the store
        data["bytes_per_scored_transaction"] = 2**20 * data["dataset_growth_mb"] / scored
    # redis-server's RSS grows with its data while every transaction stays in its windows (the
    # label delay + 30 days): what must not grow is the rest of it
    but_data = [m for m in memory if m.get("label") != "redis-server"]
    but_data.append(data.get("rss_outside_data", {}))
    results["verdict"] = {
        "sustained_rate": bool(overall["achieved_rps"] >= 0.98 * args.rate),
        "zero_errors": overall["errors"] == 0,
        "rss_flat": all(m.get("flat", False) for m in memory),
        "rss_flat_but_redis_data": all(m.get("flat", False) for m in but_data),
        "latency_stable": bool(p99s and max(p99s) < 2 * min(p99s) + 1.0),
        "handler_p99_flat": handler_p99_flat(windows),
    }
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    overall_keys = (
        *("phase", "requests", "errors", "unsent", "achieved_rps", "p50_ms", "p99_ms", "max_ms"),
        *("handler_p99_ms", "server_cpu_pct", "server_cpu_ms_per_req"),
    )
    print(table([results["overall"]], overall_keys))
    print(f"per {args.window:g} s window:")
    window_keys = (
        *("window", "requests", "errors", "achieved_rps", "p50_ms", "p95_ms", "p99_ms", "max_ms"),
        *("handler_p50_ms", "handler_p99_ms"),
    )
    print(table(results["windows"], window_keys))
    print("API process and its workers:", json.dumps(results["rss"]))
    print("every process of the stack (RSS in MB, slope over the last minutes in MB/min):")
    process_keys = (
        *("label", "pid", "rss_after_first_window_mb", "rss_end_mb", "rss_growth_after_first_window_mb"),
        *("rss_slope_mb_per_min", "slope_span_min", "flat_limit_mb", "flat", "cpu_pct_mean"),
    )
    print(table(results["processes"], process_keys))
    data = results.get("redis_data") or {}
    if data:
        outside = data["rss_outside_data"]
        print(
            f"redis-server's data set: {data['dataset_start_mb']:.1f} -> {data['dataset_end_mb']:.1f} MB"
            f" ({data.get('bytes_per_scored_transaction', float('nan')):.0f} bytes per scored transaction);"
            f" its RSS outside the data: {outside.get('rss_after_first_window_mb', float('nan')):.1f} ->"
            f" {outside.get('rss_end_mb', float('nan')):.1f} MB, slope"
            f" {outside.get('rss_slope_mb_per_min', float('nan')):.2f} MB/min, flat: {outside.get('flat')}"
        )
    print("load average (1 min) over the run:", json.dumps(results["loadavg_1m"]))
    prof = results["profile"]
    if prof.get("samples"):
        print(f"GIL profile ({prof['samples']} samples): share of GIL time")
        for label, pct in prof["groups_pct"].items():
            print(f"  {pct:5.1f}%  {label}")
        for thread, pct in prof["threads_pct"].items():
            print(f"  {pct:5.1f}%  thread {thread}")
    print("verdict:", json.dumps(results["verdict"]))


if __name__ == "__main__":
    main()
