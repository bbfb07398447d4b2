"""Shared bench helpers: timing statistics, result tables, JSON output, the Lambda environment,
and the processes of a process tree (from /proc)."""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
PAGE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Timing:
    """Latency summary of one measured operation, in milliseconds."""

    name: str
    n: int
    p50: float
    p90: float
    p99: float
    max: float
    mean: float
    cpu_p50: float | None = None  # CPU time of the calling thread: less sensitive to a busy machine

    @classmethod
    def of(cls, name: str, samples: "Samples | Sequence[int]") -> "Timing":
        wall = samples.wall if isinstance(samples, Samples) else samples
        ms = np.asarray(wall, dtype=np.float64) / 1e6
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        cpu = None
        if isinstance(samples, Samples) and samples.cpu:
            cpu = float(np.median(np.asarray(samples.cpu, dtype=np.float64))) / 1e6
        return cls(name, len(ms), float(p50), float(p90), float(p99), float(ms.max()), float(ms.mean()), cpu)

    def as_dict(self) -> dict[str, float | int | str | None]:
        return {
            "name": self.name,
            "n": self.n,
            "p50_ms": self.p50,
            "p90_ms": self.p90,
            "p99_ms": self.p99,
            "max_ms": self.max,
            "mean_ms": self.mean,
            "thread_cpu_p50_ms": self.cpu_p50,
        }


@dataclass
class Samples:
    """Per-call wall-clock and calling-thread CPU times, in nanoseconds."""

    wall: list[int] = field(default_factory=list)
    cpu: list[int] = field(default_factory=list)

    def __iadd__(self, other: "Samples") -> "Samples":
        self.wall += other.wall
        self.cpu += other.cpu
        return self


def time_each[T](fn: Callable[[T], object], items: Sequence[T]) -> Samples:
    """Wall-clock and thread CPU time of ``fn(item)`` for each item, in nanoseconds."""
    out = Samples()
    wall, cpu = time.perf_counter_ns, time.thread_time_ns
    for item in items:
        started, started_cpu = wall(), cpu()
        fn(item)
        out.cpu.append(cpu() - started_cpu)
        out.wall.append(wall() - started)
    return out


@dataclass
class Report:
    """What a bench prints and writes: latency rows, scalar results, free-form details."""

    title: str
    command: str = field(default_factory=lambda: "uv run python -m " + " ".join(_argv()))
    timings: list[Timing] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, name: str, samples: Samples | Sequence[int]) -> Timing:
        timing = Timing.of(name, samples)
        self.timings.append(timing)
        return timing

    def target(self, name: str, measured: float, limit: float, unit: str, higher_is_better: bool) -> None:
        met = measured > limit if higher_is_better else measured < limit
        op = ">" if higher_is_better else "<"
        self.targets[name] = {
            "measured": measured,
            "target": f"{op} {limit:g} {unit}",
            "met": bool(met),
        }

    def render(self) -> str:
        lines = [f"## {self.title}", f"command: {self.command}", f"date: {environment()['date']}", ""]
        if self.timings:
            width = max(len(t.name) for t in self.timings)
            heads = "".join(f"  {h:>8}" for h in ("p50 ms", "p90 ms", "p99 ms", "max ms", "cpu p50"))
            lines.append(f"{'operation':<{width}}  {'n':>6}{heads}")
            for t in self.timings:
                cells = "".join(f"  {v:>8.3f}" for v in (t.p50, t.p90, t.p99, t.max))
                cpu = f"  {t.cpu_p50:>8.3f}" if t.cpu_p50 is not None else ""
                lines.append(f"{t.name:<{width}}  {t.n:>6}{cells}{cpu}")
            lines.append("")
        for key, value in self.values.items():
            lines.append(f"{key}: {_fmt(value)}")
        for key, result in self.targets.items():
            verdict = "MET" if result["met"] else "MISSED"
            lines.append(f"target {key}: {_fmt(result['measured'])} ({result['target']}) {verdict}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "command": self.command,
            "environment": environment(),
            "timings": [t.as_dict() for t in self.timings],
            "values": self.values,
            "targets": self.targets,
        }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def load_average() -> str:
    """The 1/5/15-minute load average now, as the reports print it (``1.2 / 0.9 / 0.7``)."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def _argv() -> list[str]:
    module = sys.modules["__main__"].__spec__
    name = module.name if module is not None else Path(sys.argv[0]).stem
    return [name, *sys.argv[1:]]


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces a run: ``argv`` when given (run_all), else this process's."""
    args = list(argv) if argv is not None else sys.argv[1:]
    return " ".join(["uv run python -m", module, *args])


def environment() -> dict[str, Any]:
    try:
        # (not chained: bandit would see the nosec on the .stdout.strip() nodes too, and warn)
        done = subprocess.run(  # git from PATH, fixed arguments  # nosec B603, B607
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        commit = done.stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {_cpu_model()}, {os.cpu_count()} cores",
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    p.add_argument("--seed", type=int, default=7)
    return p


def finish(report: Report, json_path: Path | None) -> dict[str, Any]:
    print(report.render(), flush=True)
    return write_json(json_path, report.as_dict())


def write_json(json_path: Path | None, data: dict[str, Any]) -> dict[str, Any]:
    """Write the results to ``json_path`` (``--json``) when given; return them."""
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(data, indent=2, default=str))
    return data


@contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send fd 1 to /dev/null: Powertools logs and EMF metrics are still formatted and written."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(devnull)
        os.close(saved)


@contextmanager
def lambda_env(redis_port: int, workdir: Path, label_delay: int, timeout_ms: int) -> Iterator[dict[str, str]]:
    """Environment of the handlers (docs/architecture.md) pointing at a local redis and folders."""
    from handlers import bootstrap, predict

    env = {
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "REDIS_TIMEOUT_MS": str(timeout_ms),
        "MODEL_STORE_URI": str(workdir / "models"),
        "DEAD_LETTER_URI": str(workdir / "dead"),
        "LABEL_DELAY_SECONDS": str(label_delay),
        "STREAM_KIND": "none",
        "POWERTOOLS_SERVICE_NAME": "fraudsys",
        "POWERTOOLS_METRICS_NAMESPACE": "FraudSys",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    bootstrap.reset()
    predict.scorer.cache_clear()
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        bootstrap.reset()
        predict.scorer.cache_clear()


def _proc_stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (``fields[1]`` is the parent's pid,
    ``fields[11:13]`` user and system CPU ticks); OSError when the process is gone."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants, following each process's parent link in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            children.setdefault(int(_proc_stat(int(entry))[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def parent_pid(pid: int) -> int | None:
    try:
        return int(_proc_stat(pid)[1])
    except (OSError, IndexError, ValueError):
        return None


def process_usage(pid: int) -> tuple[int, float] | None:
    """(RSS bytes, user + system CPU seconds of all its threads) of one process; None if gone."""
    try:
        fields = _proc_stat(pid)
        with open(f"/proc/{pid}/statm") as statm:
            rss = int(statm.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None
    return rss, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


# What a process of the local stack is, from its command line: (label, a word of its argv).
_STACK_PROCESSES = (
    ("redis-server", "redis-server"),
    ("broker (tansu)", "tansu"),
    ("S3 (moto)", "moto.server"),
    ("S3 (local, on disk)", "local_stack.s3_server"),
    ("scorer instance", "local_stack.instance"),
    ("MLflow", "mlflow"),
    ("updater", "fraudsys-updater"),
    ("archiver", "fraudsys-archiver"),
    ("API worker", "multiprocessing.spawn"),
    ("multiprocessing resource tracker", "resource_tracker"),
    ("API process (bench server)", "--serve"),
)


def process_label(pid: int) -> str:
    """A readable name of a local-stack process (``_STACK_PROCESSES``), else its executable's."""
    argv = process_cmdline(pid)
    for label, word in _STACK_PROCESSES:
        if any(word in part for part in argv):
            return label
    return Path(argv[0]).name if argv else "?"
