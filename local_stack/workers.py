"""Local worker processes: N scorer processes behind one port, like Lambda's concurrency, and
the archiver, the lake's own consumer of the stream, like its own function.

One Lambda instance (and one ``LocalApi``) runs one invocation at a time under one GIL, so it
uses at most one core. API Gateway scales out by running more instances; locally, ``ApiWorkers``
starts ``count`` processes, each a ``LocalApi`` with its own handler, Redis and Kafka clients,
all bound to the same port with ``SO_REUSEPORT`` (the kernel spreads connections over them); each
runs its handler in a scorer instance process of its own (``local_stack.instance``, unless
``instance_process`` is off), as the one API process of the default stack does.

Each worker warms up before it binds (``GET /health``: the champion model, Redis and the Kafka
producer), like provisioned concurrency, and ``GET /metrics`` aggregates every worker
(Prometheus multiprocess mode in ``run_dir``). This module imports nothing heavy at import time:
the workers are spawned, fresh interpreters whose environment must be set before
``prometheus_client`` is imported.

``PollerWorker`` runs a consumer of the stream, a local MSK event source (``local_stack.poller``)
in front of its handler, in a process of its own: the updater (``handlers.update_features``,
consumer group ``fraudsys-updater``) and the archiver (``handlers.archive_events``,
``fraudsys-archiver``, on the same topics). On AWS each is a function of its own with its own
event source mapping, so neither shares the scorer's interpreter: the updater's record decoding
and Redis writes held the API process's GIL and filled its collector's young generation, which
doubled the refusal p99 at 4x the knee (docs/benchmarks-http.md); the archiver's Parquet encoding
(docs/benchmarks.md, the event lake). The updater's poller metrics reach ``GET /metrics``
through a text file it rewrites (``UPDATER_METRICS_ENV``).
"""

import contextlib
import logging
import multiprocessing
import os
import shutil
import subprocess  # nosec B404  # the archiver's process: this interpreter
import sys
import threading
import time
import warnings
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import TYPE_CHECKING, Any

from local_stack.services import ServiceError

if TYPE_CHECKING:
    from local_stack.poller import PollerConfig

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
log = logging.getLogger(__name__)


def _serve(
    port: int,
    env: dict[str, str],
    switch_interval: float,
    admission: tuple[float, int],
    instance_process: bool,
    ready: Event,
    stop: Event,
) -> None:
    os.environ.update(env)
    sys.setswitchinterval(switch_interval)
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    from local_stack import freeze_heap
    from local_stack.api import LocalApi
    from local_stack.instance import InstanceProcess

    deadline_ms, max_queue = admission
    # each worker's handler in a scorer instance of its own, as with one API process
    instance = InstanceProcess(env, switch_interval) if instance_process else None
    api = LocalApi(
        port=port,
        reuse_port=True,
        bind=False,
        deadline_ms=deadline_ms,
        max_queue=max_queue,
        instance=instance,
    )
    api.warm()  # before binding: the kernel hands connections only to warm workers
    api.bind()
    api.start()
    freeze_heap()  # as the stack's own process does (local_stack.stack): no full-collection stalls
    ready.set()
    try:
        stop.wait()
    finally:
        api.stop()
        from handlers import bootstrap

        bootstrap.publisher().close()


class ApiWorkers:
    def __init__(
        self,
        port: int,
        count: int,
        env: dict[str, str],
        metrics_dir: Path,
        switch_interval: float,
        deadline_ms: float = 250.0,
        max_queue: int = 128,
        instance_process: bool = True,
    ) -> None:
        if count < 1:
            raise ValueError("at least one API worker")
        self.port = port
        self.count = count
        self.env = {**env, METRICS_DIR_ENV: str(metrics_dir)}
        self.metrics_dir = metrics_dir
        self.switch_interval = switch_interval
        self.admission = (deadline_ms, max_queue)  # each worker's (local_stack.api.Admission)
        self.instance_process = instance_process  # each worker's handler in its own process
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
                args=(
                    self.port,
                    self.env,
                    self.switch_interval,
                    self.admission,
                    self.instance_process,
                    ready,
                    self._stop,
                ),
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


#: a poller process's handler, configuration and metrics file (JSON), in its environment
POLLER_ENV = "FRAUDSYS_POLLER"
#: where the updater's poller process writes its metrics (Prometheus text), for ``GET /metrics``
UPDATER_METRICS_ENV = "FRAUDSYS_UPDATER_METRICS"
#: how often a poller process writes its metrics file and reports its count (seconds)
REPORT_EVERY = 0.2


def _write_metrics(path: Path) -> None:
    """The process's poller metrics (``local_stack.metrics.POLLER_REGISTRY``) as a Prometheus text
    file, replaced whole (a reader never sees half of it): node_exporter's textfile convention."""
    from prometheus_client import write_to_textfile

    from local_stack import metrics

    write_to_textfile(str(path), metrics.POLLER_REGISTRY)


def poller_main() -> None:
    """A poller process (the updater's, the archiver's): its local MSK event source in front of its
    handler until its stdin closes (the stack asks it to stop, or the stack is gone). Reports
    ``ready`` and then ``processed <n>`` lines on stdout."""
    import importlib
    import json

    warnings.filterwarnings("ignore", message="No application metrics to publish")
    spec = json.loads(os.environ[POLLER_ENV])
    for module in spec["warm"]:  # imports the first batch would pay (pyarrow.parquet: ~0.2-0.5 s)
        importlib.import_module(module)
    handler = importlib.import_module(spec["handler"]).handler

    from local_stack import freeze_heap
    from local_stack.poller import KafkaPoller, PollerConfig, dead_letter_batch

    fields = spec["config"]
    cfg = PollerConfig(**{**fields, "topics": tuple(fields["topics"])})
    metrics_file = Path(spec["metrics"]) if spec["metrics"] else None
    stop = threading.Event()

    def until_stdin_closes() -> None:
        sys.stdin.buffer.read()
        stop.set()

    threading.Thread(target=until_stdin_closes, name="stdin", daemon=True).start()
    poller = KafkaPoller(cfg, handler, dead_letter_batch).start()
    freeze_heap()  # the imports are never garbage: no full-collection stalls between batches
    print("ready", flush=True)

    def report() -> None:
        if metrics_file is not None:
            _write_metrics(metrics_file)
        print(f"processed {poller.processed}", flush=True)

    try:
        while not stop.wait(REPORT_EVERY):
            report()
    finally:
        poller.stop()  # the batch under way is handled and committed
        report()


class PollerWorker:
    """A local MSK event source and its handler in a process of its own (``python -c
    ...poller_main()``, in a session of its own: the terminal's Ctrl-C reaches the stack, which
    stops it): on AWS each consumer is a function of its own with its own event source mapping.
    The updater runs in one (its decoding and Redis writes never share the API's interpreter: its
    GIL, its garbage collector), the archiver in another (its Parquet encoding).

    ``handler``: the module whose ``handler`` is invoked; ``warm``: modules imported before the
    first batch; ``metrics``: the file the process keeps its poller metrics in (else none).
    ``processed`` counts the records it has handled (or dead-lettered) and committed,
    redeliveries included; ``start`` again after ``stop`` (or a crash) resumes from the group's
    committed offsets and counts on."""

    def __init__(
        self,
        cfg: "PollerConfig",
        env: dict[str, str],
        handler: str,
        warm: tuple[str, ...] = (),
        metrics: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.env = env
        self.handler = handler
        self.warm = warm
        self.metrics = metrics
        self.name = f"fraudsys-{cfg.name}"
        self.process: subprocess.Popen[bytes] | None = None
        self._before = 0  # processed by the earlier processes
        self._processed = 0
        self._reader: threading.Thread | None = None

    @property
    def processed(self) -> int:
        return self._before + self._processed

    def start(self, timeout: float = 120.0) -> "PollerWorker":
        import dataclasses
        import json

        if self.process is not None and self.process.poll() is None:
            raise ServiceError(f"the {self.cfg.name} runs already (pid {self.process.pid})")
        self._before, self._processed = self.processed, 0
        ready = threading.Event()
        spec = {
            "handler": self.handler,
            "warm": list(self.warm),
            "config": dataclasses.asdict(self.cfg),
            "metrics": str(self.metrics) if self.metrics else "",
        }
        env = {**os.environ, **self.env, POLLER_ENV: json.dumps(spec)}
        env.pop(METRICS_DIR_ENV, None)  # its metrics are its file's, not the API workers' shared ones
        process = subprocess.Popen(  # this interpreter, fixed arguments  # nosec B603
            # the last argument only names the process (ps, bench.common.process_label)
            [sys.executable, "-c", "from local_stack.workers import poller_main; poller_main()", self.name],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        self.process = process

        def read() -> None:
            # drains the pipe until the process ends, whatever a line holds: a reader that stopped
            # would leave the process blocked on its next write once the pipe is full
            for line in process.stdout or ():
                word, _, count = line.decode(errors="replace").partition(" ")
                if word.strip() == "ready":
                    ready.set()
                elif word == "processed" and count.strip().isdigit():
                    self._processed = int(count)
                else:  # the handler's own output (Powertools' JSON log lines): the stack's stdout
                    out = getattr(sys.stdout, "buffer", None)
                    with contextlib.suppress(Exception):
                        if out is not None:
                            out.write(line)
                            out.flush()

        self._reader = threading.Thread(target=read, name=f"{self.name}-stdout", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                code = process.poll()
                self.stop()
                raise ServiceError(f"the {self.cfg.name} did not start (exit code {code})")
        return self

    def dead(self) -> list[str]:
        return [self.name] if self.process is not None and self.process.poll() is not None else []

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the process to finish its batch and stop (its stdin closes); kill it after
        ``timeout`` seconds."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if self._reader is not None:
            self._reader.join(5)
