"""The local MSK event source (``local_stack.poller``) on the real broker."""

import time
from typing import Any

import pytest
from confluent_kafka import Producer
from kafka import KafkaConsumer

from local_stack.events import StreamRecord
from local_stack.poller import KafkaPoller, PollerConfig, consumer_options
from tests.support.services import Service

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("window", [0.0, 0.2, 1.0, 30.0, 300.0])
def test_consumer_options_are_valid_for_every_batching_window(kafka_service: Service, window: float) -> None:
    # given the poller's consumer settings for a batching window CDK allows (0-300 s)
    options = consumer_options(
        PollerConfig(f"127.0.0.1:{kafka_service.port}", ("t",), batching_window=window)
    )

    # then kafka-python accepts them, and a fetch never waits longer than the window or 0.25 s
    KafkaConsumer(**options).close()
    assert 1 <= options["fetch_max_wait_ms"] <= max(1, min(window, 0.25) * 1000)
    assert options["fetch_max_wait_ms"] < options["request_timeout_ms"]


def test_a_batching_window_of_zero_still_delivers(kafka_service: Service) -> None:
    # given records on a topic and a poller whose batching window is 0 (invoke at once)
    servers = f"127.0.0.1:{kafka_service.port}"
    topic = f"window-zero-{time.monotonic_ns()}"
    producer = Producer({"bootstrap.servers": servers})
    for k in range(5):
        producer.produce(topic, f"r{k}".encode())
    assert producer.flush(10) == 0
    seen: list[bytes] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        import base64

        seen.extend(base64.b64decode(r["value"]) for rs in event["records"].values() for r in rs)
        return {"batchItemFailures": []}

    def dead_letter(records: list[StreamRecord], reason: str) -> None:
        raise AssertionError(f"dead-lettered: {reason}")

    cfg = PollerConfig(servers, (topic,), group_id=topic, batch_size=100, batching_window=0.0)
    poller = KafkaPoller(cfg, handler, dead_letter).start()
    try:
        # when it runs, then every record reaches the handler
        deadline = time.monotonic() + 30
        while len(seen) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        poller.stop()
    assert sorted(seen) == [f"r{k}".encode() for k in range(5)]
