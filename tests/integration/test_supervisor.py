"""The local stack's supervisor (``local_stack.services.Supervisor``) on real redis-server
processes: a killed service is restarted on its port (and keeps its data with the append-only
file), one restarted from outside is used as it is, a service that keeps failing is given up
after the cap, and one stopped on purpose stays down. Rounds are driven by ``poll()`` here."""

import itertools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from local_stack.services import (
    RedisTls,
    Service,
    ServiceError,
    Supervisor,
    free_port,
    port_open,
    start_redis,
)

pytestmark = pytest.mark.integration


def poll_until(
    supervisor: Supervisor, condition: Callable[[], bool], what: str, timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: {supervisor.states()}")
        supervisor.poll()
        time.sleep(0.05)


def test_a_killed_service_is_restarted_on_its_port_with_its_data(tmp_path: Path) -> None:
    port = free_port()

    def start() -> Service:
        return start_redis(port, tmp_path / "redis", tmp_path / "logs", appendonly=True)

    restarted: list[int] = []
    supervisor = Supervisor()
    first = supervisor.add(start(), "redis", start, after_restart=lambda: restarted.append(port))
    client = redis.Redis(port=port, socket_timeout=5)
    try:
        client.set("card", "state")
        # when redis-server is killed
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)

        # then the supervisor starts it again on its port, runs what follows a restart, and the
        # append-only file brought its data back; the client reconnects by itself
        poll_until(
            supervisor,
            lambda: supervisor.states() == {"redis": "up"} and supervisor.services["redis"] is not first,
            "the restart",
        )
        assert restarted == [port]
        assert supervisor.entries["redis"].restarts == 1
        assert client.get("card") == b"state"
        assert supervisor.check() == []
    finally:
        client.close()
        supervisor.stop()
    assert not port_open(port)


def test_a_service_restarted_from_outside_is_used_then_replaced_when_it_goes(tmp_path: Path) -> None:
    port = free_port()

    def start() -> Service:
        return start_redis(port, tmp_path / "ours", tmp_path / "logs")

    supervisor = Supervisor()
    ours = supervisor.add(start(), "redis", start)
    outside: Service | None = None
    try:
        # when redis-server dies and someone starts another one on its port before the next round
        os.kill(ours.process.pid, signal.SIGKILL)
        ours.process.wait(10)
        outside = start_redis(port, tmp_path / "outside", tmp_path / "logs")
        supervisor.poll()

        # then the supervisor sees the new process (not the dead one) and uses it as it is
        assert supervisor.states() == {"redis": "external"}
        assert "redis" not in supervisor.services  # not ours: never stopped by the stack
        assert redis.Redis(port=port).ping()

        # and when that one goes too, the supervisor starts its own again
        outside.stop()
        poll_until(supervisor, lambda: supervisor.states() == {"redis": "up"}, "its own restart")
        assert supervisor.services["redis"].process.poll() is None
    finally:
        supervisor.stop()
        if outside is not None:
            outside.stop()


def test_a_service_that_keeps_failing_is_given_up_after_the_cap_with_backoff(tmp_path: Path) -> None:
    port = free_port()
    attempts: list[float] = []

    missing = tmp_path / "no-such-file.pem"

    def broken() -> Service:  # a redis-server whose TLS files do not exist: it exits at once
        attempts.append(time.monotonic())
        return start_redis(
            port, tmp_path / "redis", tmp_path / "logs", tls=RedisTls(missing, missing, missing)
        )

    supervisor = Supervisor(max_restarts=3)
    first = supervisor.add(start_redis(port, tmp_path / "redis", tmp_path / "logs"), "redis", broken)
    try:
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
        poll_until(supervisor, lambda: supervisor.states() == {"redis": "failed"}, "giving up")
        assert supervisor.check() == ["redis"]
        assert len(attempts) == 3
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert gaps[0] >= 0.5
        assert gaps[1] >= 1.0
        with pytest.raises(ServiceError):
            broken()
    finally:
        supervisor.stop()


def test_a_service_held_down_on_purpose_is_not_restarted(tmp_path: Path) -> None:
    port = free_port()

    def start() -> Service:
        return start_redis(port, tmp_path / "redis", tmp_path / "logs")

    supervisor = Supervisor()
    supervisor.add(start(), "redis", start)
    try:
        supervisor.hold("redis")
        for _ in range(5):
            supervisor.poll()
        assert supervisor.states() == {"redis": "held"}
        assert not port_open(port)
        supervisor.resume("redis")
        assert supervisor.states() == {"redis": "up"}
        assert redis.Redis(port=port).ping()
    finally:
        supervisor.stop()


class Sleeper:
    """A process that serves no port, as a stream consumer's (``local_stack.workers.PollerWorker``):
    started again in place, stopped by ``stop``."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> "Sleeper":
        self.process = subprocess.Popen(["sleep", "600"])  # nosec B603 B607
        self.starts += 1
        return self

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait(timeout)


def test_a_process_without_a_port_is_restarted_given_up_and_held_like_a_service() -> None:
    supervisor = Supervisor(max_restarts=2)
    consumer, other = Sleeper().start(), Sleeper().start()
    supervisor.add_process("consumer", consumer, consumer.start)
    supervisor.add_process("other", other, other.start)
    try:
        # a consumer process that exits is started again, in place, at once
        assert consumer.process is not None
        first = consumer.process
        first.kill()
        first.wait(10)
        poll_until(supervisor, lambda: consumer.starts == 2, "the first restart")
        assert consumer.process is not None
        assert consumer.process.pid != first.pid
        assert consumer.process.poll() is None
        assert supervisor.states() == {"consumer": "up", "other": "up"}
        assert supervisor.services == {}  # the services by port: a consumer is none

        # past the cap (2 restarts in the window) it is given up, and check names it
        def kill() -> None:
            assert consumer.process is not None
            consumer.process.kill()
            consumer.process.wait(10)

        kill()
        poll_until(supervisor, lambda: consumer.starts == 3, "the second restart")
        kill()
        poll_until(supervisor, lambda: supervisor.states()["consumer"] == "failed", "giving up")
        assert consumer.starts == 3
        assert supervisor.check() == ["consumer"]

        # one held on purpose is stopped and stays down
        assert other.process is not None
        held = other.process
        supervisor.hold("other")
        assert held.poll() is not None
        for _ in range(5):
            supervisor.poll()
        assert other.process is None
        assert other.starts == 1
        assert supervisor.states()["other"] == "held"
    finally:
        supervisor.stop()
        consumer.stop()
        other.stop()


def test_a_process_stopped_on_purpose_is_not_restarted_and_a_restart_does_not_block_the_others() -> None:
    supervisor = Supervisor()
    consumer = Sleeper().start()
    supervisor.add_process("consumer", consumer, consumer.start)
    try:
        # a consumer stopped by its owner (no process) is not taken for one that exited
        consumer.stop()
        for _ in range(5):
            supervisor.poll()
        assert consumer.starts == 1
        assert supervisor.states() == {"consumer": "up"}

        # a slow restart runs without the supervisor's lock: states answer meanwhile, and a hold
        # that came during the restart waits for it and stops what it started
        consumer.start()
        gate = threading.Event()

        def slow_start() -> Sleeper:
            gate.wait(30)
            return consumer.start()

        supervisor.entries["consumer"].start = slow_start
        assert consumer.process is not None
        consumer.process.kill()
        consumer.process.wait(10)
        rounds = threading.Thread(target=supervisor.poll)
        rounds.start()
        poll_until(supervisor, lambda: supervisor.states()["consumer"] == "starting", "the restart", 10)
        threading.Timer(0.5, gate.set).start()
        supervisor.hold("consumer")
        rounds.join(30)
        assert supervisor.states() == {"consumer": "held"}
        assert consumer.process is None  # what the restart started was stopped
    finally:
        supervisor.stop()
        consumer.stop()
