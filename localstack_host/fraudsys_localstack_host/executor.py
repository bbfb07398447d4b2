"""A LocalStack Lambda runtime executor that runs each execution environment as a host process.

LocalStack's only executor (``docker``) starts a container per environment; this one starts
``python -I -S runtime.py`` instead (``runtime.py`` beside this file), with the function's
unzipped code, its layers' ``python/`` folders and a runtime folder holding boto3 on ``sys.path``,
in that order, as the python3.x runtime of AWS Lambda has them (``/var/task``, ``/opt/python``,
``/var/runtime``). The process speaks LocalStack's executor protocol (``ExecutorEndpoint``): it
reports itself ready, takes ``POST /invoke`` on its own port and posts each result back.

Selected with ``LAMBDA_RUNTIME_EXECUTOR=fraudsys-host`` (the entry point in pyproject.toml).
Python runtimes only; the host's interpreter (3.13) runs every ``python3.*`` function.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path
from typing import Any

from localstack import config
from localstack.services.lambda_.invocation.executor_endpoint import ExecutorEndpoint
from localstack.services.lambda_.invocation.lambda_models import FunctionVersion, InvocationResult
from localstack.services.lambda_.invocation.plugins import RuntimeExecutorPlugin
from localstack.services.lambda_.invocation.runtime_executor import (
    LambdaRuntimeException,
    RuntimeExecutor,
)

LOG = logging.getLogger(__name__)

RUNTIME_SCRIPT = Path(__file__).with_name("runtime.py")
#: what the Lambda python runtime provides besides the standard library (/var/runtime)
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six.py", "urllib3")
#: the host environment a function process keeps (everything else comes from LocalStack)
HOST_VARIABLES = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "SYSTEMROOT")
_runtime_dir_lock = threading.Lock()
_runtime_dir: Path | None = None


def runtime_dir() -> Path:
    """A folder with links to this interpreter's boto3 and its dependencies, and nothing else."""
    global _runtime_dir  # noqa: PLW0603 - one folder per LocalStack process
    with _runtime_dir_lock:
        if _runtime_dir is None:
            folder = Path(tempfile.mkdtemp(prefix="fraudsys-lambda-runtime-"))
            site = Path(sysconfig.get_paths()["purelib"])
            for name in RUNTIME_PACKAGES:
                if (site / name).exists():
                    (folder / name).symlink_to(site / name)
            _runtime_dir = folder
        return _runtime_dir


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HostRuntimeExecutor(RuntimeExecutor):
    """One execution environment: one host process, one invocation at a time."""

    def __init__(self, id: str, function_version: FunctionVersion) -> None:
        super().__init__(id=id, function_version=function_version)
        self.port = free_port()
        self.executor_endpoint = ExecutorEndpoint(
            self.id, container_address="127.0.0.1", container_port=self.port
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.gettempdir()) / "fraudsys-lambda-logs" / f"{self._name()}-{self.id}.log"

    def _name(self) -> str:
        return str(self.function_version.id.function_name)

    def start(self, env_vars: dict[str, str]) -> None:
        runtime = str(self.function_version.config.runtime or "")
        if not runtime.startswith("python3"):
            raise LambdaRuntimeException(f"the host executor runs Python functions only, not {runtime!r}")
        code = self.function_version.config.code
        if code is None:
            raise LambdaRuntimeException("container image functions are not supported by the host executor")
        layers = [
            str(layer.code.get_unzipped_code_location() / "python")
            for layer in self.function_version.config.layers
            if layer.code is not None
        ]
        task_root = str(code.get_unzipped_code_location())
        environment = {name: os.environ[name] for name in HOST_VARIABLES if name in os.environ}
        environment.update({key: str(value) for key, value in env_vars.items()})
        environment.update(
            {
                "LAMBDA_TASK_ROOT": task_root,
                "FRAUDSYS_LAMBDA_LAYERS": os.pathsep.join(layers),
                "FRAUDSYS_LAMBDA_RUNTIME_DIR": str(runtime_dir()),
                "FRAUDSYS_LAMBDA_PORT": str(self.port),
                "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        self.executor_endpoint.start()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", str(RUNTIME_SCRIPT)],
                cwd=task_root,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # in LocalStack's process group: stopping LocalStack's group ends every function
        LOG.debug("started %s (pid %s) for %s", self.id, self.process.pid, self._name())
        threading.Thread(target=self._watch, name=f"lambda-host-{self.id}", daemon=True).start()
        self.executor_endpoint.wait_for_startup()

    def _watch(self) -> None:
        """A process that exits before it reported ready fails the start instead of a timeout."""
        process = self.process
        if process is None:
            return
        code = process.wait()
        future = self.executor_endpoint.startup_future
        if future is not None and not future.done():
            future.set_exception(
                LambdaRuntimeException(
                    f"runtime process exited with {code} during init: {self.get_logs()[-2000:]}"
                )
            )

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        try:
            self.executor_endpoint.shutdown()
        except Exception as exc:
            LOG.debug("executor endpoint of %s not shut down cleanly: %s", self.id, exc)

    def get_address(self) -> str:
        return "127.0.0.1"

    def get_endpoint_from_executor(self) -> str:
        return "127.0.0.1"

    def get_runtime_endpoint(self) -> str:
        port = config.GATEWAY_LISTEN[0].port
        return f"http://127.0.0.1:{port}{self.executor_endpoint.get_endpoint_prefix()}"

    def invoke(self, payload: dict[str, Any]) -> InvocationResult:
        return self.executor_endpoint.invoke(payload)

    def get_logs(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    @classmethod
    def prepare_version(cls, function_version: FunctionVersion) -> None:
        if function_version.config.code:
            function_version.config.code.prepare_for_execution()
        for layer in function_version.config.layers:
            if layer.code is not None:
                layer.code.prepare_for_execution()

    @classmethod
    def cleanup_version(cls, function_version: FunctionVersion) -> None:
        pass

    @classmethod
    def validate_environment(cls) -> bool:
        if shutil.which(sys.executable) is None and not Path(sys.executable).exists():
            LOG.warning("the host executor needs its interpreter %s", sys.executable)
            return False
        return True


class HostRuntimeExecutorPlugin(RuntimeExecutorPlugin):
    name = "fraudsys-host"

    def load(self, *args: Any, **kwargs: Any) -> type[RuntimeExecutor]:
        return HostRuntimeExecutor
