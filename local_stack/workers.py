"""Local worker processes: N scorer processes behind one port, like Lambda's concurrency, and
the archiver, the lake's own consumer of the stream, like its own function.

One Lambda instance (and one ``LocalApi``) runs one invocation at a time under one GIL, so it
uses at most one core. API Gateway scales out by running more instances; locally, ``ApiWorkers``
starts ``count`` processes, each a ``LocalApi`` with its own handler, Redis and Kafka clients,
all bound to the same port with ``SO_REUSEPORT`` (the kernel spreads connections over them).

Each worker warms up before it binds (``GET /health``: the champion model, Redis and the Kafka
producer), like provisioned concurrency, and ``GET /metrics`` aggregates every worker
(Prometheus multiprocess mode in ``run_dir``). This module imports nothing heavy at import time:
the workers are spawned, fresh interpreters whose environment must be set before
``prometheus_client`` is imported.

``ArchiverWorker`` runs the archiver (``handlers.archive_events``) behind its own local MSK event
source (``local_stack.poller``, consumer group ``fraudsys-archiver`` on the updater's topics) in a
process of its own: on AWS it is a second function with its own event source mapping, so its
Parquet encoding never shares the updater's interpreter (docs/benchmarks.md, the event lake).
"""

import multiprocessing
import os
import shutil
import signal
import sys
import time
import warnings
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from local_stack.poller import PollerConfig

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _serve(port: int, env: dict[str, str], switch_interval: float, ready: Event, stop: Event) -> None:
    os.environ.update(env)
    sys.setswitchinterval(switch_interval)
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    from local_stack.api import LocalApi

    api = LocalApi(port=port, reuse_port=True, bind=False)
    api.warm()  # before binding: the kernel hands connections only to warm workers
    api.bind()
    api.start()
    ready.set()
    try:
        stop.wait()
    finally:
        api.stop()
        from handlers import bootstrap

        bootstrap.publisher().close()


class ApiWorkers:
    def __init__(
        self, port: int, count: int, env: dict[str, str], metrics_dir: Path, switch_interval: float
    ) -> None:
        if count < 1:
            raise ValueError("at least one API worker")
        self.port = port
        self.count = count
        self.env = {**env, METRICS_DIR_ENV: str(metrics_dir)}
        self.metrics_dir = metrics_dir
        self.switch_interval = switch_interval
        self._context = multiprocessing.get_context("spawn")
        self._stop = self._context.Event()
        self.processes: list[Any] = []

    def start(self, timeout: float = 180.0) -> "ApiWorkers":
        shutil.rmtree(self.metrics_dir, ignore_errors=True)  # stale samples of earlier runs
        self.metrics_dir.mkdir(parents=True)
        readies = []
        for i in range(self.count):
            ready = self._context.Event()
            process = self._context.Process(
                target=_serve,
                args=(self.port, self.env, self.switch_interval, ready, self._stop),
                name=f"fraudsys-api-{i}",
                daemon=True,
            )
            process.start()
            self.processes.append(process)
            readies.append(ready)
        deadline = time.monotonic() + timeout
        for process, ready in zip(self.processes, readies, strict=True):
            while not ready.wait(0.2):
                if not process.is_alive() or time.monotonic() > deadline:
                    self.stop()
                    code = process.exitcode
                    raise RuntimeError(f"API worker {process.name} did not start (exit code {code})")
        return self

    def dead(self) -> list[str]:
        return [p.name for p in self.processes if not p.is_alive()]

    def stop(self) -> None:
        self._stop.set()
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(5)
        self.processes.clear()


_STOP, _PROCESSED = 0, 1


def _archive(parent: int, env: dict[str, str], cfg: "PollerConfig", shared: Any, ready: Event) -> None:
    # The stack stops this process (``stop``) after the updater and before it saves the local S3:
    # Ctrl-C in the terminal must not end it half-way through a batch, out of that order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(env)
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    import pyarrow.parquet  # noqa: F401  # the import the first batch would pay (~0.2-0.5 s)

    from handlers.archive_events import handler
    from local_stack.poller import KafkaPoller, dead_letter_batch

    before = shared[_PROCESSED]  # a restarted archiver counts on
    poller = KafkaPoller(cfg, handler, dead_letter_batch).start()
    ready.set()
    try:
        while not shared[_STOP] and os.getppid() == parent:  # an orphan stops too
            shared[_PROCESSED] = before + poller.processed
            time.sleep(0.2)
    finally:
        poller.stop()  # the batch under way is archived and committed
        shared[_PROCESSED] = before + poller.processed


class ArchiverWorker:
    """The archiver's poller in a process of its own; ``processed`` counts the records it has
    archived (or skipped as poison) and committed, redeliveries included. ``start`` again after
    ``stop`` (or a crash) resumes from the group's committed offsets."""

    def __init__(self, cfg: "PollerConfig", env: dict[str, str]) -> None:
        self.cfg = cfg
        self.env = env
        self._context = multiprocessing.get_context("spawn")
        # [stop flag, records processed]: shared memory without a lock (one writer each), which a
        # killed archiver cannot leave held (a multiprocessing Event or locked Value can be)
        self._shared = self._context.RawArray("q", 2)
        self.process: Any = None

    @property
    def processed(self) -> int:
        return int(self._shared[_PROCESSED])

    def start(self, timeout: float = 120.0) -> "ArchiverWorker":
        self._shared[_STOP] = 0
        ready = self._context.Event()
        self.process = self._context.Process(
            target=_archive,
            args=(os.getpid(), self.env, self.cfg, self._shared, ready),
            name="fraudsys-archiver",
            daemon=True,
        )
        self.process.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.2):
            if not self.process.is_alive() or time.monotonic() > deadline:
                code = self.process.exitcode
                self.stop()
                raise RuntimeError(f"the archiver did not start (exit code {code})")
        return self

    def dead(self) -> list[str]:
        return [self.process.name] if self.process is not None and not self.process.is_alive() else []

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the archiver to finish its batch and stop; kill it after ``timeout`` seconds."""
        self._shared[_STOP] = 1
        if self.process is None:
            return
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.process = None
