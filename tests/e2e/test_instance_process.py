"""The scorer instance in a process of its own (``local_stack.instance``) behind the local API.

A real redis-server, a published test champion, the real handler in a spawned child process:
answers come from the child (this process never builds a scorer), a request whose deadline has
passed before the child takes it is not run, and a child killed with SIGKILL in the middle of
scoring is replaced: the requests it held are answered 502 (as API Gateway answers a crashed
Lambda) or 503, never left hanging, and the API scores again within seconds.
"""

import http.client
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import redis

from bench.http.analysis import server_timing
from fraud_adapters.store_marker import StoreMarker
from handlers import predict
from local_stack.api import LocalApi
from local_stack.instance import InstanceProcess, Outcome
from local_stack.services import free_port
from tests.support.events import a_request
from tests.support.models import publish_test_model
from tests.support.services import Service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def instance_env(redis_service: Service, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    models = tmp_path_factory.mktemp("instance-models")
    publish_test_model(str(models), version="5")
    StoreMarker(redis.Redis(port=redis_service.port)).mark("tests: a new store")
    return {
        "REDIS_URL": f"redis://127.0.0.1:{redis_service.port}/0",
        "MODEL_STORE_URI": str(models),
        "DEAD_LETTER_URI": str(tmp_path_factory.mktemp("instance-dead")),
        "STREAM_KIND": "none",
        "POWERTOOLS_LOG_LEVEL": "ERROR",
    }


@pytest.fixture
def api(instance_env: dict[str, str]) -> Iterator[LocalApi]:
    local = LocalApi(port=free_port(), bind=False, instance=InstanceProcess(instance_env))
    local.warm()  # starts the instance: spawned and warmed before the port opens
    local.bind()
    local.start()
    try:
        yield local
    finally:
        local.stop()


def _score(api: LocalApi, transaction_id: str) -> tuple[int, dict[str, Any], bytes]:
    """One ``POST /predict``: status, JSON answer, ``Server-Timing`` header."""
    body = a_request(transaction_id=transaction_id).model_dump_json(exclude_none=True)
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return (
            response.status,
            json.loads(response.read()),
            (response.getheader("server-timing") or "").encode(),
        )
    finally:
        connection.close()


def test_the_handler_runs_in_the_instance_process(api: LocalApi) -> None:
    assert api.instance is not None
    assert api.instance.pid not in (None, os.getpid())
    status, answer, headers = _score(api, "instance-1")
    assert status == 200, answer
    assert answer["degraded"] is False
    assert answer["model_version"] == "5"
    timings = server_timing(headers)
    assert {"queue", "handler", "score", "read"} <= timings.keys()
    assert predict.scorer.cache_info().currsize == 0  # this process never scored


def test_a_request_past_its_deadline_is_not_run(api: LocalApi) -> None:
    assert api.instance is not None
    done: Future[Outcome | BaseException] = Future()
    body = a_request(transaction_id="instance-late").model_dump_json(exclude_none=True)
    api.instance.submit("POST", "/predict", body, {}, time.monotonic() - 0.001, done.set_result)
    outcome = done.result(timeout=30)
    assert not isinstance(outcome, BaseException)
    assert outcome[1] == "expired"


def test_a_killed_instance_is_replaced_and_the_api_scores_again(api: LocalApi) -> None:
    instance = api.instance
    assert instance is not None
    assert instance.pid is not None
    first_pid = instance.pid
    statuses: Counter[int] = Counter()
    stop = threading.Event()

    def client(k: int) -> None:
        i = 0
        while not stop.is_set():
            status, _, _ = _score(api, f"instance-load-{k}-{i}")
            statuses[status] += 1
            i += 1

    clients = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for thread in clients:
        thread.start()
    time.sleep(1.0)
    os.kill(first_pid, signal.SIGKILL)
    killed = time.monotonic()
    while instance.pid == first_pid or instance.restarts == 0:
        assert time.monotonic() - killed < 120, "no new instance"
        time.sleep(0.05)
    replaced = time.monotonic() - killed
    status, answer, _ = _score(api, "instance-after-kill")
    stop.set()
    for thread in clients:
        thread.join(60)
    assert not any(thread.is_alive() for thread in clients)  # no client left hanging
    assert status == 200, answer
    assert answer["degraded"] is False
    assert set(statuses) <= {200, 502, 503}, statuses  # a crash is a 502 (or a 503), never a 500
    assert statuses[200] > 0
    assert replaced < 60, f"the instance took {replaced:.1f} s to come back"


def test_stop_ends_the_instance_process(instance_env: dict[str, str], tmp_path: Path) -> None:
    instance = InstanceProcess(instance_env).start()
    process = instance.process
    instance.stop()
    assert process is not None
    assert process.poll() is not None
