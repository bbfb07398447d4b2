"""The local API with several worker processes on one port (``StackConfig.api_workers``): every
worker scores (in a scorer instance process of its own), the stream still reaches Redis once per
transaction, ``/metrics`` adds the workers up, and ``down`` leaves no worker behind."""

import re
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bench.common import parent_pid, process_cmdline, process_tree
from fraud_adapters.blobs import open_blob_store
from fraud_adapters.model_store import ChampionCache, ModelStore
from handlers import bootstrap
from local_stack.demo import post_json
from local_stack.stack import LocalStack, StackConfig
from tests.e2e.test_local_stack import get_json, running_stack, wait_until
from tests.support.models import publish_test_model_to

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CARD = "4000123412341234"
REQUESTS = 40


def instances_of(pid: int) -> list[int]:
    """The scorer instance processes (``local_stack.instance.main``) whose parent is ``pid``."""
    return [
        p
        for p in process_tree(pid)
        if parent_pid(p) == pid and "from local_stack.instance import main" in " ".join(process_cmdline(p))
    ]


def _body(i: int) -> dict[str, Any]:
    return {
        "transaction_id": f"workers-{i}",
        "cc_num": CARD,
        "merchant_name": "fraud_Workers Inc",
        "category": "shopping_net",
        "amount_usd": 10.0 + i,
        "transaction_time": (datetime(2024, 3, 1, tzinfo=UTC) + timedelta(minutes=i)).isoformat(),
        "lat": 40.0,
        "long": -75.0,
        "city_pop": 5000,
        "merch_lat": 40.2,
        "merch_long": -75.2,
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # a long pointer TTL: the first champion must still be seen at once
    with running_stack(
        tmp_path_factory.mktemp("workers"), model_pointer_ttl_seconds=30.0, api_workers=2
    ) as local:
        yield local


def test_two_workers_share_the_port_score_and_feed_the_stream(stack: LocalStack) -> None:
    # given two API workers that started before any champion existed
    assert stack.workers is not None
    assert stack.api is None
    pids = [p.pid for p in stack.workers.processes]
    assert len(set(pids)) == 2
    publish_test_model_to(
        ModelStore(open_blob_store(stack.cfg.model_store_uri)),
        version="1",
        label_delay=stack.cfg.label_delay_seconds,
    )

    # when requests arrive on new connections (urllib opens one per request)
    # (a probe that times out or finds the connection refused is tried again: wait_until)
    wait_until(
        lambda: post_json(f"{stack.api_url}/predict", _body(0), timeout=10)[0] == 200,
        timeout=60,
        what="the first champion in the workers",
    )
    # one worker sees it; the other may have found no champion less than a second ago and keeps
    # that answer for ChampionCache.missing_ttl: past it, every worker re-reads the pointer
    time.sleep(ChampionCache.missing_ttl + 0.2)
    answers = [post_json(f"{stack.api_url}/predict", _body(i), timeout=30) for i in range(1, REQUESTS)]

    # then every request is scored by the champion
    assert {status for status, _ in answers} == {200}
    assert {answer["model_version"] for _, answer in answers} == {"1"}
    # and both workers served some (their Prometheus files are per process)
    metric_files = {p.name for p in (stack.cfg.run_dir / "metrics").iterdir()}
    served = {pid for pid in pids if any(f.endswith(f"_{pid}.db") for f in metric_files)}
    assert served == set(pids), metric_files
    # and each worker ran them in a scorer instance process of its own (local_stack.instance)
    assert {pid: len(instances_of(pid)) for pid in pids} == {pid: 1 for pid in pids}
    # and /metrics adds the workers up
    with urllib.request.urlopen(f"{stack.api_url}/metrics", timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    counts = re.findall(
        r'fraudsys_request_latency_seconds_count\{route="/predict",status="200"\} (\S+)', text
    )
    assert counts, text[:2000]
    assert float(counts[0]) >= REQUESTS
    # with the updater's poller metrics, from its own process (local_stack.workers.PollerWorker)
    assert "fraudsys_updater_records_total" in text, text[-2000:]

    # and each published transaction reaches the card's state once
    t = int((datetime(2024, 3, 1, tzinfo=UTC) + timedelta(minutes=REQUESTS)).timestamp())
    store = bootstrap.feature_store()
    wait_until(
        lambda: store.read(CARD, "fraud_Workers Inc", t).card(t).count[-1] >= REQUESTS, what="the stream"
    )
    assert store.read(CARD, "fraud_Workers Inc", t).card(t).count[-1] == REQUESTS


def test_down_stops_every_worker(tmp_path_factory: pytest.TempPathFactory) -> None:
    cfg = StackConfig.on_free_ports(tmp_path_factory.mktemp("workers-down"), api_workers=2)
    local = LocalStack(cfg).up()
    assert local.workers is not None
    processes = list(local.workers.processes)
    instances = [child for p in processes for child in instances_of(p.pid)]
    assert len(instances) == 2
    status, health = get_json(f"{local.api_url}/health")
    local.down()
    assert not any(p.is_alive() for p in processes)
    # and their scorer instances are gone too (reaped by the workers, or ended with their pipes)
    wait_until(lambda: not any(Path(f"/proc/{child}").exists() for child in instances), what="instances")
    assert (status, health["status"]) == (503, "down")  # no champion: the workers answer, and say so
