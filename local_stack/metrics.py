"""Prometheus metrics of the local stack (``GET /metrics`` on the local API)."""

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry()

REQUEST_LATENCY = Histogram(
    "fraudsys_request_latency_seconds",
    "Local API request latency (handler invocation, server side)",
    ["route", "status"],
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY,
)
DECISIONS = Counter(
    "fraudsys_decisions_total", "Scoring decisions", ["is_fraud", "degraded"], registry=REGISTRY
)
FRAUD_PROBABILITY = Histogram(
    "fraudsys_fraud_probability",
    "Fraud probability of scored transactions",
    buckets=(0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0),
    registry=REGISTRY,
)
SHED = Counter(
    "fraudsys_shed_requests_total",
    "Requests the local API answered 503 without invoking the handler: refused at admission "
    "(queue full, or its deadline out of reach), expired while queued, or its client gone",
    ["route", "reason"],
    registry=REGISTRY,
)
#: The poller's metrics, in the updater's process (``local_stack.workers.PollerWorker``), which
#: writes them to a file that ``exposition`` appends (the two registries share no family).
POLLER_REGISTRY = CollectorRegistry()
CONSUMER_LAG = Gauge(
    "fraudsys_consumer_lag",
    "Records behind the end of each topic-partition",
    ["partition"],
    registry=POLLER_REGISTRY,
)
BATCHES = Counter(
    "fraudsys_updater_batches_total",
    "Updater invocations by the poller",
    ["outcome"],
    registry=POLLER_REGISTRY,
)
RECORDS = Counter("fraudsys_updater_records_total", "Records handed to the updater", registry=POLLER_REGISTRY)
DEAD_LETTERED_BATCHES = Counter(
    "fraudsys_updater_dead_lettered_batches_total",
    "Batches dead-lettered after the retries",
    registry=POLLER_REGISTRY,
)


def exposition() -> bytes:
    """The Prometheus text of this process, or of every API worker (``local_stack.workers``), and
    the updater's poller metrics from the file its process keeps
    (``local_stack.workers.UPDATER_METRICS_ENV``)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry) + _updater_metrics(multiprocess=True)
    return generate_latest(REGISTRY) + _updater_metrics(multiprocess=False)


def _updater_metrics(multiprocess: bool) -> bytes:
    from local_stack.workers import UPDATER_METRICS_ENV

    path = os.environ.get(UPDATER_METRICS_ENV)
    if not path:  # no updater process: a poller of this process (tests), if any
        return b"" if multiprocess else generate_latest(POLLER_REGISTRY)
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:  # the updater has not written it yet
        return b""
