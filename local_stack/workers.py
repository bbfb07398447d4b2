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

``ArchiverWorker`` runs the archiver (``handlers.archive_events``) behind its own local MSK event
source (``local_stack.poller``, consumer group ``fraudsys-archiver`` on the updater's topics) in a
process of its own: on AWS it is a second function with its own event source mapping, so its
Parquet encoding never shares the updater's interpreter (docs/benchmarks.md, the event lake).
"""

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

if TYPE_CHECKING:
    from local_stack.poller import PollerConfig

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


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


#: the archiver process's configuration (its ``PollerConfig`` as JSON), in its environment
ARCHIVER_CONFIG_ENV = "FRAUDSYS_ARCHIVER_POLLER"


def archiver_main() -> None:
    """The archiver process: its poller until its stdin closes (the stack asks it to stop, or the
    stack is gone). Reports ``ready`` and then ``processed <n>`` lines on stdout."""
    import json

    warnings.filterwarnings("ignore", message="No application metrics to publish")
    import pyarrow.parquet  # noqa: F401  # the import the first batch would pay (~0.2-0.5 s)

    from handlers.archive_events import handler
    from local_stack.poller import KafkaPoller, PollerConfig, dead_letter_batch

    fields = json.loads(os.environ[ARCHIVER_CONFIG_ENV])
    cfg = PollerConfig(**{**fields, "topics": tuple(fields["topics"])})
    stop = threading.Event()

    def until_stdin_closes() -> None:
        sys.stdin.buffer.read()
        stop.set()

    threading.Thread(target=until_stdin_closes, name="stdin", daemon=True).start()
    poller = KafkaPoller(cfg, handler, dead_letter_batch).start()
    print("ready", flush=True)
    try:
        while not stop.wait(0.2):
            print(f"processed {poller.processed}", flush=True)
    finally:
        poller.stop()  # the batch under way is archived and committed
        print(f"processed {poller.processed}", flush=True)


class ArchiverWorker:
    """The archiver's poller in a process of its own (``python -c ...archiver_main()``, in a session
    of its own: the terminal's Ctrl-C reaches the stack, which stops it after the updater and
    before it saves the local S3). ``processed`` counts the records it has archived (or skipped
    as poison) and committed, redeliveries included; ``start`` again after ``stop`` (or a crash)
    resumes from the group's committed offsets and counts on."""

    def __init__(self, cfg: "PollerConfig", env: dict[str, str]) -> None:
        self.cfg = cfg
        self.env = env
        self.name = "fraudsys-archiver"
        self.process: subprocess.Popen[bytes] | None = None
        self._before = 0  # processed by the earlier processes
        self._processed = 0
        self._reader: threading.Thread | None = None

    @property
    def processed(self) -> int:
        return self._before + self._processed

    def start(self, timeout: float = 120.0) -> "ArchiverWorker":
        import dataclasses
        import json

        self._before, self._processed = self.processed, 0
        ready = threading.Event()
        config = json.dumps(dataclasses.asdict(self.cfg))
        process = subprocess.Popen(  # this interpreter, fixed arguments  # nosec B603
            [sys.executable, "-c", "from local_stack.workers import archiver_main; archiver_main()"],
            env={**os.environ, **self.env, ARCHIVER_CONFIG_ENV: config},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        self.process = process

        def read() -> None:
            for line in process.stdout or ():
                word, _, count = line.decode().partition(" ")
                if word.strip() == "ready":
                    ready.set()
                elif word == "processed":
                    self._processed = int(count)

        self._reader = threading.Thread(target=read, name="archiver-stdout", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                code = process.poll()
                self.stop()
                raise RuntimeError(f"the archiver did not start (exit code {code})")
        return self

    def dead(self) -> list[str]:
        return [self.name] if self.process is not None and self.process.poll() is not None else []

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the archiver to finish its batch and stop (its stdin closes); kill it after
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
