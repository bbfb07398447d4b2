"""The feature store's fill marker: one key saying the store holds its whole history.

The online store is complete only when it was filled from the event log: by ``fraudsys
backfill`` (go-live, after a Redis loss, after a layout change), or, for a new system whose lake
is still empty, when it was started empty (the local stack). The stream updater alone does not
make a store complete (a store wiped an hour ago and refilled by the stream since holds one hour
of the 30 days its features count), so it never writes the marker.

Redis losing its data (a restart without persistence, a flush, a node replaced empty) loses the
marker with it: the scorer then answers from the request-only baseline, ``degraded: true``, and
``GET /health`` says ``store: empty (run fraudsys backfill)``, instead of scoring with features
that are all wrong. The scorer reads the marker at most once every ``ttl`` seconds per process
(``MarkerCheck``): one ``GET`` a second, not one per request.

==============================  ======  ===============================================
key                             type    content
==============================  ======  ===============================================
``<p>:{meta}:filled``           string  JSON ``{"at": <epoch s>, "by": "<who filled it>"}``
==============================  ======  ===============================================

No TTL: a ``volatile-*`` eviction policy (ElastiCache's default) never evicts it. Its hash tag
puts it in one slot, so it works on Redis Cluster too.
"""

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from redis.cluster import RedisCluster

log = logging.getLogger(__name__)

#: what ``GET /health`` and the logs tell the operator when the marker is missing
EMPTY = "empty (run fraudsys backfill)"


@dataclass(frozen=True)
class Filled:
    at: int  # epoch seconds
    by: str


class StoreMarker:
    def __init__(self, client: "redis.Redis | RedisCluster", prefix: str = "fs") -> None:
        self.client = client
        self.key = f"{prefix}:{{meta}}:filled"

    def mark(self, by: str, at: int | None = None) -> Filled:
        """Record that the store is complete now (``at``, default now), filled by ``by``."""
        filled = Filled(int(time.time()) if at is None else at, by)
        self.client.set(self.key, json.dumps({"at": filled.at, "by": filled.by}))
        return filled

    def read(self) -> Filled | None:
        """The marker, or None when the store holds none (never filled, or its data was lost)."""
        raw = self.client.get(self.key)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return Filled(int(data["at"]), str(data["by"]))
        except (ValueError, KeyError, TypeError):  # a value no FraudSys code wrote: still a marker
            return Filled(0, "unknown")


class MarkerCheck:
    """Whether the store holds its marker, read at most once every ``ttl`` seconds. ``filled()``:
    True or False, or None when Redis could not be asked (the read that follows fails the same
    way and decides). Logs once each time the answer changes. Thread-safe."""

    def __init__(
        self, marker: StoreMarker, ttl: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.marker = marker
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self._filled: bool | None = None

    def filled(self) -> bool | None:
        with self._lock:
            now = self._clock()
            if self._checked_at is not None and now - self._checked_at < self.ttl:
                return self._filled
            self._checked_at = now
            try:
                filled: bool | None = self.marker.read() is not None
            except redis.RedisError:
                return None  # unknown: keep the last answer for when Redis is back
            if filled is False and self._filled is not False:
                log.error("the feature store holds no fill marker (%s): answers are degraded", EMPTY)
            elif filled and self._filled is False:
                log.warning("the feature store's fill marker is back: full features again")
            self._filled = filled
            return filled
