"""One scorer instance in a process of its own, as a Lambda instance is a sandbox of its own.

``LocalApi`` (the API Gateway stand-in: HTTP, admission, the queue) sends each admitted request
to the ``InstanceProcess`` at once, over a pipe; the child takes them in order and runs the real
handler (``local_stack.api.run_invocation``) one at a time, and a reader thread hands each answer
back. The handler then has an interpreter lock of its own: the event loop's parsing, refusing and
answering of requests (and the poller, updater and relay of ``fraudsys local up``) no longer take
it from the handler, and the child goes from one request to the next without waiting for the
API's process. Measured under overload (docs/benchmarks-http.md): the knee of one API process
rose from 462 to 656-672 answers/s, and at twice the knee it still answered 100 % of the knee's
in time (81 % with the handler on the API's thread).

Each request carries its deadline (``time.monotonic()``, the same clock in every process): the
child does not run one whose deadline passed while it waited (``expired``), nor one whose client
went away (``client_gone``: a flag per request in shared memory, ``cancel``), and the handler
sees both through its ``LocalContext`` (``handlers.deadline``: nothing more is read, scored or
published). A child that dies (kill -9, a crash in native code) is replaced by a new, warmed one;
the requests it held fail with ``InstanceCrashedError`` (the API answers 502, as API Gateway
answers a Lambda that crashed) and those that come while it restarts with
``InstanceUnavailableError`` (503 with ``Retry-After``).

Nothing heavy is imported here at import time: the child is a fresh interpreter (``main``) started
with the handlers' settings in its environment, which must be set before the handlers are imported.
"""

import contextlib
import mmap
import os
import signal
import socket
import subprocess  # nosec B404  # the instance: this interpreter
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

#: (status, body, headers, handlers.predict.last_timings, handler seconds): one invocation's answer
type Answer = tuple[int, bytes, dict[str, str], dict[str, float], float]
#: what the instance did with one request: when it took it (``time.monotonic()``), and its answer,
#: or why it did not run it: ``expired`` (its deadline passed while it waited) or ``client_gone``;
#: ``ERROR`` and a message when the handler raised
type Outcome = tuple[float, Answer | str]
#: called with the outcome, or with the exception that stopped the request (on the reader thread)
type Callback = Callable[[Outcome | BaseException], None]


#: the outcome of a request whose handler raised: this prefix, then the exception
ERROR = "error: "


def _flag(flags: Any, slot: int) -> bool:
    return bool(flags[slot])


class InstanceCrashedError(RuntimeError):
    """The instance process died while it held the request (a new one is being started)."""


class InstanceUnavailableError(RuntimeError):
    """No instance process to take the request: the last one died and its successor is starting."""


class InstanceError(RuntimeError):
    """The handler raised instead of answering (a Lambda error): its type and message."""


def main() -> None:
    """The child's entry point (``python -c``): its pipe's descriptor, the shared flags'
    descriptor, the number of slots and the GIL switch interval, as arguments."""
    conn_fd, flags_fd, slots, switch_interval = sys.argv[1:5]
    n = int(slots)
    flags = mmap.mmap(int(flags_fd), 2 * n)
    _instance(Connection(int(conn_fd)), float(switch_interval), _Flags(flags, 0), _Flags(flags, n))


class _Flags:
    """One byte per slot in the shared memory, from ``offset``."""

    def __init__(self, memory: mmap.mmap, offset: int) -> None:
        self.memory, self.offset = memory, offset

    def __getitem__(self, slot: int) -> int:
        return self.memory[self.offset + slot]

    def __setitem__(self, slot: int, value: int) -> None:
        self.memory[self.offset + slot] = value


def _instance(conn: Connection, switch_interval: float, gone: Any, taken: Any) -> None:
    """The child: warm up, say ready, then take requests in order until the pipe closes. Each
    request is checked when taken (its client gone, its deadline passed: not run), then run with
    its deadline and its ``gone`` slot."""
    # Ctrl-C reaches the whole process group: the API's process ends this one (``stop``: the
    # pipe closes) after the requests in flight, as it stops everything else
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.setswitchinterval(switch_interval)
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    from handlers import bootstrap
    from local_stack.api import run_invocation
    from local_stack.events import LocalContext, warm_instance

    warm_instance()  # no ColdStart EMF line on the terminal
    run_invocation("GET", "/health", None, {}, LocalContext("fraudsys-scorer"))  # champion, Redis
    bootstrap.publisher().warm()
    conn.send(("ready", os.getpid()))
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:
                return
            if message is None:
                return
            slot, method, path, body, headers, deadline = message
            taken[slot] = 1  # before looking at its flag: the API answers it itself only until now
            started = time.monotonic()
            outcome: Any
            if gone[slot]:
                outcome = (started, "client_gone")
            elif deadline is not None and started >= deadline:
                outcome = (started, "expired")
            else:
                context = LocalContext("fraudsys-scorer", deadline=deadline, gone=partial(_flag, gone, slot))
                try:
                    outcome = (started, run_invocation(method, path, body, headers, context))
                except Exception as exc:  # the handler failed: a Lambda error, reported to the caller
                    outcome = (started, f"{ERROR}{type(exc).__name__}: {exc}"[:500])
            conn.send(outcome)
    finally:
        bootstrap.publisher().close()


class InstanceProcess:
    """A scorer instance in a child process (spawned, warmed before ``start`` returns).

    ``submit`` sends a request at once, without waiting for the ones before it: the child takes
    them in order from the pipe, so it goes from one invocation to the next without waiting for
    this process (whose event loop may be busy refusing an overload). Answers come back in the same
    order to a reader thread, which hands each to its request's callback. ``slots`` bounds the
    requests sent and not answered (each has a "client gone" flag in shared memory)."""

    def __init__(
        self,
        env: Mapping[str, str],
        switch_interval: float = 0.0005,
        name: str = "fraudsys-scorer",
        slots: int = 4096,
    ) -> None:
        self.env = dict(env)
        self.switch_interval = switch_interval
        self.name = name
        self.slots = slots
        # the flags in memory shared with the child (a memfd it maps): no multiprocessing
        # resource tracker, whose process would outlive a stack stopped with Ctrl-C
        self._flags_fd = os.memfd_create(f"{name}-flags")
        os.ftruncate(self._flags_fd, 2 * slots)
        self._flags = mmap.mmap(self._flags_fd, 2 * slots)
        self._gone, self._taken = _Flags(self._flags, 0), _Flags(self._flags, slots)
        self._lock = threading.Lock()  # the pipe's sending end and the pending callbacks
        self._pending: deque[Callback] = deque()
        self._next = 0
        self._conn: Connection | None = None
        self._reader: threading.Thread | None = None
        self._stopping = False
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self, timeout: float = 180.0) -> "InstanceProcess":
        conn, process = self._spawn(timeout)
        with self._lock:
            self._conn, self.process = conn, process
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-answers", daemon=True)
        self._reader.start()
        return self

    def _spawn(self, timeout: float) -> tuple[Connection, subprocess.Popen[bytes]]:
        """A new child: this interpreter running ``main``, with the handlers' environment, one
        end of a socket pair as its pipe and the flags' memfd; returned once it has warmed up."""
        parent, child = socket.socketpair()
        argv = [sys.executable, "-c", "from local_stack.instance import main; main()"]
        argv += [str(child.fileno()), str(self._flags_fd), str(self.slots), str(self.switch_interval)]
        process = subprocess.Popen(  # nosec B603  # this interpreter, our own module
            argv, env={**os.environ, **self.env}, pass_fds=(child.fileno(), self._flags_fd)
        )
        child.close()
        conn = Connection(parent.detach())
        deadline = time.monotonic() + timeout
        while not conn.poll(0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                code = process.wait(5)
                conn.close()
                raise RuntimeError(f"scorer instance {self.name} did not start (exit code {code})")
        conn.recv()  # ("ready", pid)
        return conn, process

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def submit(
        self,
        method: str,
        path: str,
        body: str | None,
        headers: Mapping[str, str],
        deadline: float | None,
        callback: Callback,
    ) -> int:
        """Send one request; ``callback`` gets its outcome later. Returns its slot (``cancel``)."""
        with self._lock:
            if self._conn is None or len(self._pending) >= self.slots:
                raise InstanceUnavailableError(f"the scorer instance {self.name} is starting")
            slot = self._next % self.slots
            self._next += 1
            self._gone[slot] = self._taken[slot] = 0
            try:
                self._conn.send((slot, method, path, body, dict(headers), deadline))
            except OSError as exc:  # it died: the reader thread replaces it
                raise InstanceUnavailableError(f"the scorer instance {self.name} is restarting") from exc
            self._pending.append(callback)
        return slot

    def taken(self, slot: int) -> bool:
        """Whether the instance has taken the request (to run it, or to skip it)."""
        return bool(self._taken[slot])

    def cancel(self, slot: int) -> None:
        """The request's client has gone away: not run if not yet taken, else stopped at the
        handler's next deadline check (``handlers.deadline``)."""
        self._gone[slot] = 1

    def invoke(
        self,
        method: str,
        path: str,
        body: str | None,
        headers: Mapping[str, str],
        deadline: float | None = None,
    ) -> Answer:
        """One request, waited for (warm-up checks and tools; the API uses ``submit``)."""
        done: Future[Outcome] = Future()

        def settle(outcome: Outcome | BaseException) -> None:
            if isinstance(outcome, BaseException):
                done.set_exception(outcome)
            else:
                done.set_result(outcome)

        self.submit(method, path, body, headers, deadline, settle)
        _, answer = self.checked(done.result())
        if isinstance(answer, str):
            raise InstanceUnavailableError(f"{method} {path} not run: {answer}")
        return answer

    @staticmethod
    def checked(outcome: Outcome) -> tuple[float, Answer | str]:
        """``outcome`` with a handler failure raised as ``InstanceError``."""
        started, answer = outcome
        if isinstance(answer, str) and answer.startswith(ERROR):
            raise InstanceError(answer.removeprefix(ERROR))
        return started, answer

    def _read(self) -> None:
        """The reader thread: each answer to its request's callback, in order; when the child
        dies, every request it held fails (``InstanceCrashedError``) and a new one is started."""
        while True:
            conn = self._conn
            if conn is None:
                return
            try:
                outcome = conn.recv()
            except (EOFError, OSError):
                if self._stopping:
                    return
                self._crashed(conn)
                continue
            with self._lock:
                callback = self._pending.popleft()
            callback(outcome)

    def _crashed(self, conn: Connection) -> None:
        with self._lock:
            self._conn = None
            pending, self._pending = list(self._pending), deque()
        conn.close()
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(1)
        for callback in pending:
            callback(InstanceCrashedError(f"the scorer instance {self.name} died: restarting it"))
        while not self._stopping:
            try:
                new_conn, process = self._spawn(180.0)
            except RuntimeError:
                time.sleep(1.0)
                continue
            with self._lock:
                self._conn, self.process = new_conn, process
                self.restarts += 1
            return

    def stop(self) -> None:
        self._stopping = True
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.send(None)
        if self.process is not None:
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if conn is not None:
            conn.close()
        if self._reader is not None:
            self._reader.join(5)
