"""Handler configuration from the environment (see docs/architecture.md)."""

import os
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fraud_adapters.redis_store import TILE_THRESHOLD
from fraud_adapters.tx_index import DEFAULT_BUCKETS
from fraud_core import spec

DEV_CARD_HASH_KEY = "fraudsys-local-development-key"


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    #: ``REDIS_URL`` is a Redis Cluster's configuration endpoint (ElastiCache cluster mode)
    redis_cluster: bool = False
    redis_auth_secret_arn: str | None = None
    redis_timeout_ms: int = Field(default=50, gt=0)
    #: the updater's own Redis timeout where it shares the process environment with the scorer
    #: (the local stack); unset: ``REDIS_TIMEOUT_MS`` (each deployed function has its own)
    updater_redis_timeout_ms: int | None = Field(default=None, gt=0)
    card_hash_key: str = DEV_CARD_HASH_KEY
    card_hash_key_secret_arn: str | None = None
    model_store_uri: str = "data/model_store"
    model_name: str = "fraudsys"
    model_pointer_ttl_seconds: float = Field(default=30.0, ge=0)
    #: how often the scorer re-reads the feature store's fill marker (``fraud_adapters.store_marker``)
    store_marker_ttl_seconds: float = Field(default=1.0, ge=0)
    #: ``shap``: exact TreeSHAP reasons (cost grows with trees x leaves x depth**2);
    #: ``approx``: XGBoost's path attribution (Saabas), a few times cheaper on large models.
    reasons_method: Literal["shap", "approx"] = "shap"
    stream_kind: Literal["kafka", "kinesis", "none"] = "none"
    #: ``sync``: the answer waits for Kafka's acknowledgement (Lambda: a frozen container sends
    #: nothing, so the transaction is in the stream before the answer). ``background``: for
    #: long-lived processes; the answer does not wait, librdkafka batches (``publish_linger_ms``),
    #: late delivery failures are logged and counted, and a crash loses what was still queued.
    publish_mode: Literal["sync", "background"] = "sync"
    #: background mode: how long librdkafka gathers records into one produce request. Fewer,
    #: larger requests keep the broker's per-request cost down (the local broker's grows with
    #: every request it has stored: docs/benchmarks-http.md); it delays freshness by at most this.
    publish_linger_ms: int = Field(default=100, ge=0, le=1000)
    kafka_bootstrap_servers: str | None = None
    #: Kafka only (the local stack sets it): every record is appended to a producer journal in this
    #: folder before it is sent (``fraud_adapters.journal``); the stack's relay re-sends what a
    #: broker lost. ``publish_journal_fsync``: an ``fdatasync`` per publish call too.
    publish_journal_dir: str | None = None
    publish_journal_fsync: bool = False
    transactions_topic: str = "fraudsys.transactions"
    labels_topic: str = "fraudsys.labels"
    kinesis_stream_name: str | None = None
    #: AWS: the SQS queue that keeps a scored transaction whose publish failed (the publish outbox,
    #: ``fraud_adapters.outbox``); the relay (``handlers.relay_outbox``) sends it to the stream.
    #: Unset: no outbox (locally the producer journal plays its part).
    publish_outbox_queue_url: str | None = None
    #: a scored transaction the system could not record (the stream refused it, and neither the
    #: producer journal nor the outbox kept it): ``refuse`` answers 503 with ``Retry-After`` (not
    #: acknowledged: the caller retries with the same ``transaction_id``, which the updater applies
    #: once); ``score`` answers the score anyway (fail open) and the transaction never counts in
    #: its card's and merchant's features. Both count ``OutboxFailures`` (alarmed on AWS).
    on_unrecorded: Literal["refuse", "score"] = "refuse"
    dead_letter_uri: str = "data/dead_letters"
    #: The event archive (``s3://bucket/prefix`` or a local folder): the updater writes every
    #: accepted event there while applying it (``fraud_adapters.lake``); unset: no archive.
    lake_uri: str | None = None
    label_delay_seconds: int = Field(default=spec.DEFAULT_LABEL_DELAY, ge=0)
    #: A card gets time tiles in Redis once it holds more events than this (its reads then cost
    #: the same whatever its activity; ``fraud_adapters.redis_store``); negative: never.
    card_tile_threshold: int = TILE_THRESHOLD
    #: Buckets of the transaction index (``fraud_adapters.tx_index``): at least the transactions
    #: of 14 days / 64. A layout setting: every writer and reader uses the same (a change needs
    #: ``fraudsys backfill``).
    tx_index_buckets: int = Field(default=DEFAULT_BUCKETS, ge=1)
    #: Time guard: an event or request dated more than this after the time the system received it
    #: is refused (422 at the API, a dead letter in the stream).
    max_clock_skew_seconds: int = Field(default=spec.MAX_CLOCK_SKEW, ge=0, le=spec.HISTORY_SLACK)
    #: How far before its receipt a ``POST /predict`` may be dated; unset: any past time (local
    #: replays of history). The CDK stages set it (docs/architecture.md).
    max_request_age_seconds: int | None = Field(default=None, gt=0)

    @classmethod
    def from_env(cls) -> "Settings":
        fields = cls.model_fields
        values = {name: os.environ[name.upper()] for name in fields if name.upper() in os.environ}
        return cls.model_validate(values)


@lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings.from_env()


def secret_value(arn: str) -> str:
    """A Secrets Manager secret (plain string, or JSON with a ``password``/``token``/``key`` field)."""
    import json

    import boto3

    raw = boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return str(raw)
    for name in ("password", "token", "key"):
        if isinstance(data, dict) and name in data:
            return str(data[name])
    return str(raw)
