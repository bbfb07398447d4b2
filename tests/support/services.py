"""Real services for tests: the local stack's own starters (redis-server, tansu broker) on free ports."""

from local_stack.services import Service, free_port, kafka_broker, redis_server, wait_for_port

__all__ = ["Service", "free_port", "kafka_broker", "redis_server", "wait_for_port"]
