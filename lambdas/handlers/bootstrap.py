"""Wires adapters from settings, lazily and once per container (no work at import time)."""

import os
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import redis
from redis.cluster import RedisCluster
from redis.credentials import CredentialProvider

from fraud_adapters.blobs import open_blob_store
from fraud_adapters.dead_letters import DeadLetterStore
from fraud_adapters.journal import Journal
from fraud_adapters.lake import LakeWriter
from fraud_adapters.model_store import ModelStore
from fraud_adapters.outbox import SqsOutbox
from fraud_adapters.publisher import (
    KafkaPublisher,
    KinesisPublisher,
    NullPublisher,
    Publisher,
    kafka_security_config,
)
from fraud_adapters.redis_store import CardHasher, RedisFeatureStore
from fraud_adapters.store_marker import StoreMarker
from fraud_adapters.tx_index import TransactionIndex
from handlers.settings import DEV_CARD_HASH_KEY, Settings, secret_value, settings

#: how long a warm container uses the AUTH token it read before reading the secret again
AUTH_TOKEN_MAX_AGE_SECONDS = 60.0


class SecretCredentialProvider(CredentialProvider):
    """The Redis AUTH token from Secrets Manager, read again when a connection is opened more than
    ``max_age_seconds`` after the last read. redis-py asks for credentials on every new connection
    (connections already authenticated stay so), so after an ElastiCache AUTH rotation (``ROTATE``:
    old and new token both valid, then ``SET``) a warm container's new connections use the new
    token within a minute, at most one ``GetSecretValue`` a minute, none while connections last."""

    def __init__(
        self,
        arn: str,
        max_age_seconds: float = AUTH_TOKEN_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.arn = arn
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._token: str | None = None
        self._read_at = 0.0
        self._lock = threading.Lock()

    def get_credentials(self) -> tuple[str]:
        with self._lock:
            now = self._clock()
            if self._token is None or now - self._read_at >= self.max_age_seconds:
                self._token = secret_value(self.arn)
                self._read_at = now
            return (self._token,)


def redis_client(cfg: Settings, timeout_ms: int | None = None) -> "redis.Redis | RedisCluster":
    """One node, or a cluster (``REDIS_CLUSTER``): the store's code is the same for both."""
    timeout = (timeout_ms or cfg.redis_timeout_ms) / 1000.0
    options = {
        "credential_provider": (
            SecretCredentialProvider(cfg.redis_auth_secret_arn) if cfg.redis_auth_secret_arn else None
        ),
        "decode_responses": False,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # a connection idle for 30 s is PINGed before its next command (a second round trip for
        # that one request), so a connection dropped while the container was frozen, or by a
        # failover, is replaced before the read instead of failing it
        "health_check_interval": 30,
    }
    if cfg.redis_cluster:
        cluster: RedisCluster = RedisCluster.from_url(cfg.redis_url, **options)
        return cluster
    client: redis.Redis = redis.Redis.from_url(cfg.redis_url, **options)
    return client


def card_hasher(cfg: Settings) -> CardHasher:
    key = secret_value(cfg.card_hash_key_secret_arn) if cfg.card_hash_key_secret_arn else cfg.card_hash_key
    if key == DEV_CARD_HASH_KEY and os.environ.get("AWS_EXECUTION_ENV", "").startswith("AWS_Lambda"):
        raise RuntimeError("set CARD_HASH_KEY_SECRET_ARN (or CARD_HASH_KEY) in AWS: the dev key is public")
    return _hasher(key)


@lru_cache(maxsize=2)
def _hasher(key: str) -> CardHasher:
    """One hasher (and its cache) per key for the store, the index, the lake and the publisher."""
    return CardHasher(key.encode())


@lru_cache(maxsize=2)
def feature_store(timeout_ms: int | None = None) -> RedisFeatureStore:
    cfg = settings()
    return RedisFeatureStore(
        redis_client(cfg, timeout_ms),
        card_hasher(cfg),
        cfg.label_delay_seconds,
        tile_threshold=cfg.card_tile_threshold,
    )


def store_marker(timeout_ms: int | None = None) -> StoreMarker:
    """The feature store's fill marker, on the store's Redis client."""
    store = feature_store(timeout_ms)
    return StoreMarker(store.client, store.prefix)


@lru_cache(maxsize=2)
def transaction_index(timeout_ms: int | None = None) -> TransactionIndex:
    """The transaction index on the feature store's Redis client (one connection pool)."""
    store = feature_store(timeout_ms)
    cfg = settings()
    return TransactionIndex(
        store.client, cfg.label_delay_seconds, card_key=store.hasher, buckets=cfg.tx_index_buckets
    )


@lru_cache(maxsize=1)
def model_store() -> ModelStore:
    cfg = settings()
    return ModelStore(open_blob_store(cfg.model_store_uri), cfg.model_name)


@lru_cache(maxsize=1)
def dead_letter_store() -> DeadLetterStore:
    return DeadLetterStore(open_blob_store(settings().dead_letter_uri))


@lru_cache(maxsize=1)
def lake_writer() -> LakeWriter | None:
    """The event archive's writer when ``LAKE_URI`` is set (card ids hashed with the store's key)."""
    cfg = settings()
    if not cfg.lake_uri:
        return None
    return LakeWriter(open_blob_store(cfg.lake_uri), card_hasher(cfg))


@lru_cache(maxsize=1)
def publisher() -> Publisher:
    cfg = settings()
    return _publisher(cfg, card_hasher(cfg) if cfg.stream_kind != "none" else _no_card_key)


@lru_cache(maxsize=1)
def relay_publisher() -> Publisher:
    """The outbox relay's publisher (``handlers.relay_outbox``): the scorer's, for records whose
    keys the scorer already hashed. It hashes no card, so it needs no card hash key; and it
    refuses to run without a stream (an outbox record sent nowhere would be lost)."""
    cfg = settings()
    if cfg.stream_kind == "none":
        raise RuntimeError("the outbox relay needs a stream: set STREAM_KIND to kafka or kinesis")
    return _publisher(cfg, _no_card_key)


def _no_card_key(card: str) -> str:
    raise RuntimeError("this publisher sends records whose keys are hashed already: it hashes no card")


@lru_cache(maxsize=1)
def outbox() -> SqsOutbox | None:
    """The publish outbox (``PUBLISH_OUTBOX_QUEUE_URL``), or None without one (locally)."""
    url = settings().publish_outbox_queue_url
    return SqsOutbox.open(url) if url else None


def _publisher(cfg: Settings, card_key: Callable[[str], str]) -> Publisher:
    if cfg.stream_kind == "kafka":
        if not cfg.kafka_bootstrap_servers:
            raise ValueError("STREAM_KIND=kafka needs KAFKA_BOOTSTRAP_SERVERS")
        return KafkaPublisher(
            cfg.kafka_bootstrap_servers,
            cfg.transactions_topic,
            cfg.labels_topic,
            card_key=card_key,
            background=cfg.publish_mode == "background",
            linger_ms=cfg.publish_linger_ms,
            journal=journal(cfg),
            **kafka_security_config(),
        )
    if cfg.stream_kind == "kinesis":
        if not cfg.kinesis_stream_name:
            raise ValueError("STREAM_KIND=kinesis needs KINESIS_STREAM_NAME")
        return KinesisPublisher(cfg.kinesis_stream_name, card_key=card_key)
    return NullPublisher()


def journal(cfg: Settings) -> Journal | None:
    """A new writer of the producer journal (``PUBLISH_JOURNAL_DIR``), or None without one."""
    if not cfg.publish_journal_dir:
        return None
    return Journal(Path(cfg.publish_journal_dir), fsync=cfg.publish_journal_fsync)


def kafka_publisher(bootstrap_servers: str, journal_dir: Path | None = None) -> KafkaPublisher:
    """A Kafka publisher for local tools (replay, demo, tests): topics and keys as the scorer's;
    its records journaled in ``journal_dir`` (default ``PUBLISH_JOURNAL_DIR``, if set)."""
    cfg = settings()
    writer = Journal(journal_dir, fsync=cfg.publish_journal_fsync) if journal_dir else journal(cfg)
    return KafkaPublisher(
        bootstrap_servers, cfg.transactions_topic, cfg.labels_topic, card_key=card_hasher(cfg), journal=writer
    )


def reset() -> None:
    """Forget every wired adapter (tests and local runs that change the environment)."""
    settings.cache_clear()
    for factory in (
        feature_store,
        transaction_index,
        model_store,
        dead_letter_store,
        lake_writer,
        publisher,
        relay_publisher,
        outbox,
        _hasher,
    ):
        factory.cache_clear()
