"""Scoring latency over HTTP through the local API Gateway, and end-to-end feature freshness.

The API process (``bench.http.server``: a child process, so that the load client never shares
its interpreter lock) runs ``LocalStack`` (redis-server, the tansu Kafka broker, moto S3, the
local API Gateway in front of the real scorer handler, and the local MSK poller in front of the
real updater), trains
a real champion with ``training.pipeline.run_pipeline`` (small tuning config; ``--model test``
publishes ``tests.support.models.publish_test_model_to`` instead) on a simulated stream of
1,200 cards x 45 days, and fills Redis with that stream: directly through
``RedisFeatureStore.apply`` in 500-event batches (``--fill direct``, the default) or by replaying
it into the broker for the poller and the updater handler (``--fill broker``).

The client (``bench.http.client``: this process, asyncio on uvloop, keep-alive HTTP/1.1 connections)
then measures:

* open loop: requests sent on a fixed schedule at ``--rate`` per second for ``--duration`` s,
  whatever the answers do (no coordinated omission); latency from send to the full answer, and
  from the scheduled time (adds client lag and waiting for a free connection); each answer's
  ``Server-Timing`` splits it into the handler (in it ``Scorer.score``, in that the Redis read)
  and the time outside the handler;
* saturation: closed loop with N concurrent clients, each sending its next request as soon as
  the previous one is answered;
* freshness: a transaction scored with ``POST /predict`` (the scorer publishes it to Kafka,
  before answering with ``--publish-mode sync``, within ``PUBLISH_LINGER_MS`` after with
  ``background``) -> poller -> updater -> Redis; time until ``RedisFeatureStore.read`` for
  the next request sees the card's count rise, polled every 2 ms, one sample at a time with a
  random pause between samples (so samples fall anywhere in the poller's batching window).

Every scored request is a new transaction at a time after the filled history; the scorer
publishes it, so the updater is applying the live stream during the measurements too.

    uv run python -m bench.http_latency [--api-workers 2] [--publish-mode background]
        [--rate 200] [--duration 60] [--json out.json]
"""

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from bench.common import write_json
from bench.http.analysis import LATENCY_KEYS, machine, phase_row, table
from bench.http.client import closed_loop, measure_freshness, open_loop, run_client, warm_up
from bench.http.server import add_server_args, api_server, rss_mb, server_options, workdir_of

TARGET_P99_MS = 5.0


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rate", type=float, default=200.0, help="open-loop requests per second")
    p.add_argument("--duration", type=float, default=60.0, help="open-loop seconds (at most 600)")
    p.add_argument("--concurrency", default="1,4,16", help="closed-loop client counts")
    p.add_argument(
        "--rate-sweep", default="", help="extra open-loop rates, e.g. 50,100 (--sweep-seconds each)"
    )
    p.add_argument("--sweep-seconds", type=float, default=20.0)
    p.add_argument("--saturation-seconds", type=float, default=15.0)
    p.add_argument("--freshness-samples", type=int, default=100)
    add_server_args(p)
    args = p.parse_args(argv)
    duration = min(args.duration, 600.0)
    results: dict[str, Any] = {
        "machine": machine(),
        "command": "uv run python -m bench.http_latency " + " ".join(sys.argv[1:]),
    }
    with workdir_of(args) as workdir, api_server(server_options(args, workdir)) as server:
        results["setup"] = server.info
        print("setup:", json.dumps(server.info, indent=1), flush=True)
        warm_up(server)
        rows = []
        run = run_client(open_loop(server, f"open loop {args.rate:g}/s", args.rate, duration))
        rows.append(phase_row(run))
        results["open_loop_windows"] = run.windows(10.0)
        for rate in (float(r) for r in str(args.rate_sweep).split(",") if r):
            rows.append(
                phase_row(run_client(open_loop(server, f"open loop {rate:g}/s", rate, args.sweep_seconds)))
            )
        for clients in (int(c) for c in str(args.concurrency).split(",") if c):
            run = run_client(
                closed_loop(server, f"closed loop x{clients}", clients, min(args.saturation_seconds, 120.0))
            )
            rows.append(phase_row(run))
        results["phases"] = rows
        results["rss_mb_after"] = rss_mb(server.pid)
        results["freshness"] = measure_freshness(server, args.freshness_samples, seed=args.seed)
    open_p99 = rows[0].get("p99_ms", float("inf"))
    results["target"] = {
        "what": f"HTTP p99 < {TARGET_P99_MS} ms at {args.rate:g} req/s",
        "measured_p99_ms": open_p99,
        "met": bool(open_p99 < TARGET_P99_MS and rows[0]["errors"] == 0),
    }
    print(table(rows, LATENCY_KEYS))
    print("open loop per 10 s:")
    window_keys = (
        *("window", "requests", "errors", "p50_ms", "p99_ms", "max_ms"),
        *("handler_p99_ms", "score_p99_ms", "read_p99_ms", "outside_handler_p99_ms"),
    )
    print(table(results["open_loop_windows"], window_keys))
    print("freshness:", json.dumps(results["freshness"]))
    print("target:", json.dumps(results["target"]))
    return write_json(args.json, results)


if __name__ == "__main__":
    main()
