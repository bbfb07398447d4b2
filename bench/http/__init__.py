"""The HTTP benchmarks' parts: ``server`` (the API process with the local stack), ``client``
(open- and closed-loop clients, freshness), ``analysis`` (percentiles, tables, Server-Timing).
The commands are ``bench.http_latency`` and ``bench.load``."""
