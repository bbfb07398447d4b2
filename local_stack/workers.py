"""Local API worker processes: N scorer processes behind one port, like Lambda's concurrency.

One Lambda instance (and one ``LocalApi``) runs one invocation at a time under one GIL, so it
uses at most one core. API Gateway scales out by running more instances; locally, ``ApiWorkers``
starts ``count`` processes, each a ``LocalApi`` with its own handler, Redis and Kafka clients,
all bound to the same port with ``SO_REUSEPORT`` (the kernel spreads connections over them).

Each worker warms up before it binds (``GET /health``: the champion model, Redis and the Kafka
producer), like provisioned concurrency, and ``GET /metrics`` aggregates every worker
(Prometheus multiprocess mode in ``run_dir``). This module imports nothing heavy at import time:
the workers are spawned, fresh interpreters whose environment must be set before
``prometheus_client`` is imported.
"""

import multiprocessing
import os
import shutil
import sys
import time
import warnings
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _serve(
    port: int,
    env: dict[str, str],
    switch_interval: float,
    admission: tuple[float, int],
    ready: Event,
    stop: Event,
) -> None:
    os.environ.update(env)
    sys.setswitchinterval(switch_interval)
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    from local_stack.api import LocalApi

    deadline_ms, max_queue = admission
    api = LocalApi(port=port, reuse_port=True, bind=False, deadline_ms=deadline_ms, max_queue=max_queue)
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
        self,
        port: int,
        count: int,
        env: dict[str, str],
        metrics_dir: Path,
        switch_interval: float,
        deadline_ms: float = 250.0,
        max_queue: int = 128,
    ) -> None:
        if count < 1:
            raise ValueError("at least one API worker")
        self.port = port
        self.count = count
        self.env = {**env, METRICS_DIR_ENV: str(metrics_dir)}
        self.metrics_dir = metrics_dir
        self.switch_interval = switch_interval
        self.admission = (deadline_ms, max_queue)  # each worker's (local_stack.api.Admission)
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
                args=(self.port, self.env, self.switch_interval, self.admission, ready, self._stop),
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
