from collections.abc import Iterator

import pytest
import redis

from tests.support.services import Service, kafka_broker, redis_server


@pytest.fixture(scope="session")
def redis_service() -> Iterator[Service]:
    with redis_server() as service:
        yield service


@pytest.fixture
def redis_client(redis_service: Service) -> Iterator["redis.Redis"]:
    client: redis.Redis = redis.Redis(port=redis_service.port)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def kafka_service() -> Iterator[Service]:
    with kafka_broker() as service:
        yield service
