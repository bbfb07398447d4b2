"""The Docker-free local stack: the services and the serverless parts of FraudSys on one machine."""

import gc

#: records the in-memory broker's log holds before the relay rolls it (``StackConfig``'s
#: ``broker_roll_records``; here so the CLI's defaults need not import the stack)
DEFAULT_BROKER_ROLL_RECORDS = 100_000


def freeze_heap() -> None:
    """Collect, then move every object this process holds now (its imports, handlers, clients,
    a caller's own data) out of the collector's sight: a full collection over them stalled a
    long-lived API's event loop for 0.1-0.35 s under load (docs/benchmarks-http.md). Collected
    first, so that no garbage is kept for good."""
    gc.collect()
    gc.freeze()
