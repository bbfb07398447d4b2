"""What the HTTP benchmarks compute from their requests: ``Server-Timing`` parsing, per-phase and
per-window percentiles (``Run``), result tables, the machine's description."""

import math
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np


def server_timing(value: bytes) -> dict[str, float]:
    """``handler;dur=1.2, read;dur=0.3`` (``Server-Timing``) -> ``{"handler": 1.2, "read": 0.3}``;
    entries without a readable ``dur`` are left out."""
    out: dict[str, float] = {}
    for metric in value.split(b","):
        name, *params = (part.strip() for part in metric.split(b";"))
        for param in params:
            key, _, number = param.partition(b"=")
            if key.strip() == b"dur" and name:
                try:
                    out[name.decode("latin-1")] = float(number)
                except ValueError:
                    continue
    return out


@dataclass
class Run:
    """Per-request results of one load phase (times in seconds from ``time.perf_counter``)."""

    name: str
    scheduled: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)
    ok: list[bool] = field(default_factory=list)
    status: list[str] = field(default_factory=list)  # each request's status code, or the error's name
    timings: list[dict[str, float]] = field(default_factory=list)  # Server-Timing of each answer
    statuses: Counter[str] = field(default_factory=Counter)
    started: float = 0.0
    finished: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0  # this process (the client's event loop), while the run lasted
    unsent: int = 0

    def record(
        self, scheduled: float, sent: float, done: float, status: str, timing: dict[str, float] | None = None
    ) -> None:
        self.scheduled.append(scheduled)
        self.timings.append(timing or {})
        self.sent.append(sent)
        self.done.append(done)
        self.ok.append(status == "200")
        self.status.append(status)
        self.statuses[status] += 1

    @property
    def errors(self) -> int:
        return self.ok.count(False)

    def summary(self, select: "Sequence[int] | np.typing.NDArray[np.int64] | None" = None) -> dict[str, Any]:
        idx = np.arange(len(self.done)) if select is None else np.asarray(select, dtype=np.int64)
        if len(idx) == 0:
            return {"requests": 0}
        done, sent, sched = (np.asarray(a)[idx] for a in (self.done, self.sent, self.scheduled))
        ok = np.asarray(self.ok)[idx]
        service = (done - sent)[ok] * 1000
        from_schedule = (done - sched)[ok] * 1000
        lag = (sent - sched) * 1000
        span = float(sched.max() - sched.min()) if len(idx) > 1 else 0.0
        wall = float(done.max() - sched.min())
        out: dict[str, Any] = {
            "requests": len(idx),
            "errors": int((~ok).sum()),
            "achieved_rps": int(ok.sum()) / wall if wall > 0 else float("nan"),  # answered 200 per second
            "offered_rps": (len(idx) - 1) / span if span > 0 else float("nan"),
        }
        if len(service):
            p50, p95, p99, p999 = np.percentile(service, [50, 95, 99, 99.9])
            out |= {"p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "p99.9_ms": p999, "max_ms": service.max()}
            s50, s99 = np.percentile(from_schedule, [50, 99])
            out |= {
                "from_schedule_p50_ms": s50,
                "from_schedule_p99_ms": s99,
                "from_schedule_max_ms": from_schedule.max(),
            }
            out["client_lag_p99_ms"] = float(np.percentile(lag, 99))
            out |= self._server_timing(idx[ok], service)
        return {k: float(v) if isinstance(v, np.floating) else v for k, v in out.items()}

    def _server_timing(
        self, idx: "np.typing.NDArray[np.int64]", service: "np.typing.NDArray[np.float64]"
    ) -> dict[str, float]:
        """p50/p99 of each ``Server-Timing`` duration (``handler``, ``score``, ``read``), and the
        p99 of the time outside the handler (HTTP, queueing, the client) over the same answers."""
        out: dict[str, float] = {}
        for name in ("handler", "score", "read"):
            values = np.array([self.timings[i].get(name, math.nan) for i in idx], dtype=np.float64)
            if len(values) and not np.isnan(values).all():
                p50, p99 = np.nanpercentile(values, [50, 99])
                out |= {f"{name}_p50_ms": float(p50), f"{name}_p99_ms": float(p99)}
                if name == "handler":
                    out["outside_handler_p99_ms"] = float(np.nanpercentile(service - values, 99))
        return out

    def windows(self, seconds: float) -> list[dict[str, Any]]:
        sched = np.asarray(self.scheduled)
        if len(sched) == 0:
            return []
        t0 = self.started
        bucket = ((sched - t0) // seconds).astype(int)
        out = []
        for b in range(int(bucket.max()) + 1):
            select = np.flatnonzero(bucket == b).astype(np.int64)
            out.append({"window": f"{b * seconds:.0f}-{(b + 1) * seconds:.0f} s"} | self.summary(select))
        return out


def fmt(row: dict[str, Any], keys: Sequence[str]) -> str:
    cells = []
    for key in keys:
        value = row.get(key, "")
        cells.append(f"{value:,.2f}" if isinstance(value, float) else str(value))
    return "| " + " | ".join(cells) + " |"


def table(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return "\n".join([*lines, *(fmt(r, keys) for r in rows)])


LATENCY_KEYS = (
    "phase",
    "requests",
    "errors",
    "achieved_rps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "p99.9_ms",
    "max_ms",
    "from_schedule_p99_ms",
    "handler_p99_ms",
    "outside_handler_p99_ms",
    "server_cpu_pct",
    "server_cpu_ms_per_req",
)


def phase_row(run: Run) -> dict[str, Any]:
    row = {"phase": run.name} | run.summary()
    wall = run.finished - run.started
    row["server_cpu_pct"] = 100 * run.server_cpu_s / wall if wall > 0 else float("nan")
    answered = sum(run.ok)  # CPU time of the API process per request answered 200
    row["server_cpu_ms_per_req"] = 1000 * run.server_cpu_s / max(answered, 1)
    row["unsent"] = run.unsent
    row["statuses"] = dict(run.statuses)
    return row


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": load[0],
        "python": sys.version.split()[0],
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
