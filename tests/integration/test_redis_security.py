"""Security of the feature store and the logs, on real redis-servers.

Redis AUTH (``--requirepass``) and TLS (``--tls-port`` with a throwaway CA) as the handlers see
them through ``REDIS_URL`` (``local_stack.stack.StackConfig.redis_url``); card numbers never
stored in Redis (every key and value scanned after the real updater applied a stream) and
never written to the handlers' logs (Powertools output captured at DEBUG, event logging forced).
"""

import datetime as dt
import io
import ipaddress
import json
import logging
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from fraud_adapters.redis_store import RedisFeatureStore
from handlers import bootstrap, predict, update_features
from handlers.observability import logger as powertools_logger
from handlers.settings import Settings
from local_stack.replay import label_event, transaction_event
from local_stack.services import RedisTls, Service, ServiceError, free_port, start_redis
from local_stack.stack import LABELS_TOPIC, TRANSACTIONS_TOPIC, StackConfig, handler_environment
from tests.support.events import FakeContext, api_gateway_event, msk_event
from tests.support.models import publish_test_model
from tests.support.streams import synthetic_stream

pytestmark = pytest.mark.integration

PASSWORD = "local-only-" + secrets.token_urlsafe(18)  # pragma: allowlist secret
CARD = "4111111111111111"
REQUEST: dict[str, Any] = {
    "transaction_id": "sec-1",
    "cc_num": CARD,
    "merchant_name": "fraud_Rippin, Kub and Mann",
    "category": "misc_net",
    "amount_usd": 42.5,
    "transaction_time": "2020-03-01T12:14:25Z",
    "lat": 36.08,
    "long": -81.18,
    "city_pop": 3495,
    "merch_lat": 36.01,
    "merch_long": -82.05,
}

Configure = Callable[[str], RedisFeatureStore]


@pytest.fixture
def use_redis(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Configure]:
    """Point the handlers at ``REDIS_URL`` (fresh adapters), a local model store and dead letters."""
    monkeypatch.setenv("MODEL_STORE_URI", str(tmp_path / "models"))
    monkeypatch.setenv("DEAD_LETTER_URI", str(tmp_path / "dead"))
    monkeypatch.setenv("STREAM_KIND", "none")
    monkeypatch.setenv("MODEL_POINTER_TTL_SECONDS", "0")
    monkeypatch.setenv("REDIS_TIMEOUT_MS", "2000")

    def configure(url: str) -> RedisFeatureStore:
        monkeypatch.setenv("REDIS_URL", url)
        bootstrap.reset()
        predict.scorer.cache_clear()
        return bootstrap.feature_store()

    yield configure
    bootstrap.reset()
    predict.scorer.cache_clear()


def call(body: Any = None, method: str = "POST", path: str = "/predict") -> tuple[int, dict[str, Any]]:
    response = predict.handler(api_gateway_event(method, path, body), FakeContext())
    return int(response["statusCode"]), json.loads(response["body"] or "{}")


def roundtrip(store: RedisFeatureStore) -> None:
    """An apply and a read through the store: the connection really works."""
    event = transaction_event(synthetic_stream(n=1, n_cards=1).iloc[0].to_dict())
    store.apply([event], [])
    state = store.read(event.cc_num, event.merchant, event.event_time + 1)
    assert len(state.card_events) == 1


# --------------------------------------------------------------------------- AUTH


@pytest.fixture(scope="module")
def auth_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = start_redis(free_port(), tmp_path_factory.mktemp("redis-auth"), password=PASSWORD)
    yield service
    service.stop()


def test_password_in_redis_url_is_honoured(auth_redis: Service, use_redis: Configure) -> None:
    url = handler_environment(StackConfig(redis_port=auth_redis.port, redis_password=PASSWORD))["REDIS_URL"]
    assert url.startswith("redis://:")
    assert url.endswith(f"@127.0.0.1:{auth_redis.port}/0")

    store = use_redis(url)

    assert store.ping()
    roundtrip(store)


@pytest.mark.parametrize(
    ("password", "message"),
    [(None, "Authentication required"), ("not-the-password", "invalid username-password pair")],
)
def test_missing_or_wrong_password_fails_with_a_clear_error(
    auth_redis: Service, use_redis: Configure, password: str | None, message: str
) -> None:
    store = use_redis(StackConfig(redis_port=auth_redis.port, redis_password=password).redis_url)

    with pytest.raises(redis.AuthenticationError, match=message):
        store.ping()


def test_scorer_without_the_password_reports_it_in_health_and_degrades(
    auth_redis: Service, use_redis: Configure, tmp_path: Path
) -> None:
    publish_test_model(str(tmp_path / "models"))
    use_redis(f"redis://127.0.0.1:{auth_redis.port}/0")

    status, health = call(method="GET", path="/health")
    assert status == 200
    assert health["status"] == "degraded"
    assert not health["dependencies"]["redis"]["ok"]
    assert health["dependencies"]["redis"]["detail"].startswith("AuthenticationError")
    assert PASSWORD not in json.dumps(health)

    # An AUTH failure is a redis.ConnectionError: the scorer answers from the request-only model.
    status, answer = call(REQUEST)
    assert status == 200
    assert answer["degraded"] is True


# --------------------------------------------------------------------------- TLS


def _write_pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def make_tls_files(folder: Path) -> RedisTls:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost, valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "FraudSys test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return RedisTls(
        cert_file=_write_pem(folder / "redis.crt", cert.public_bytes(pem)),
        key_file=_write_pem(
            folder / "redis.key",
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        ),
        ca_file=_write_pem(folder / "ca.crt", ca.public_bytes(pem)),
    )


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, RedisTls]]:
    """A TLS-only redis-server that also requires the password (like ElastiCache with both)."""
    folder = tmp_path_factory.mktemp("redis-tls")
    tls = make_tls_files(folder)
    try:
        service = start_redis(free_port(), folder / "data", folder / "logs", password=PASSWORD, tls=tls)
    except ServiceError as exc:
        log = (folder / "logs" / "redis.log").read_text(errors="replace")
        if "tls" in log.lower():
            pytest.skip(f"this redis-server has no TLS support ({exc}): {log.strip()[-300:]}")
        raise
    yield service, tls
    service.stop()


def test_tls_with_the_test_ca_works(tls_redis: tuple[Service, RedisTls], use_redis: Configure) -> None:
    service, tls = tls_redis
    url = handler_environment(StackConfig(redis_port=service.port, redis_password=PASSWORD, redis_tls=tls))[
        "REDIS_URL"
    ]
    assert url.startswith("rediss://")
    assert "ssl_ca_certs=" in url

    store = use_redis(url)

    assert store.ping()
    roundtrip(store)
    assert isinstance(store.client, redis.Redis)
    assert store.client.connection_pool.connection_kwargs.get("ssl_ca_certs") == str(tls.ca_file.resolve())


def test_plain_connection_to_the_tls_port_fails(
    tls_redis: tuple[Service, RedisTls], use_redis: Configure
) -> None:
    service, _ = tls_redis
    store = use_redis(StackConfig(redis_port=service.port, redis_password=PASSWORD).redis_url)

    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        store.ping()


def test_tls_without_trusting_the_ca_fails(tls_redis: tuple[Service, RedisTls], use_redis: Configure) -> None:
    service, _ = tls_redis
    store = use_redis(f"rediss://:{PASSWORD}@127.0.0.1:{service.port}/0")

    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        store.ping()


# --------------------------------------------------------------------------- card numbers


def _blob(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _all_values(client: "redis.Redis") -> Iterator[bytes]:
    """Every key and every value (members, fields, scores) of a Redis database, raw."""
    for key in client.scan_iter(count=1000):
        yield _blob(key)
        kind = _blob(client.type(key)).decode()
        if kind == "string":
            yield _blob(client.get(key))
        elif kind == "hash":
            for field, value in dict(client.hgetall(key)).items():
                yield _blob(field)
                yield _blob(value)
        elif kind == "zset":
            pairs: list[tuple[bytes, float]] = client.zrange(key, 0, -1, withscores=True)  # type: ignore[assignment]
            for member, score in pairs:
                yield _blob(member)
                yield _blob(repr(score))
        elif kind == "set":
            yield from (_blob(v) for v in client.smembers(key))
        elif kind == "list":
            yield from (_blob(v) for v in client.lrange(key, 0, -1))
        else:
            raise AssertionError(f"unexpected Redis type {kind} of {key!r}")


def _stream_records() -> tuple[list[tuple[str, bytes]], set[str]]:
    frame = synthetic_stream(n=600, n_cards=30, days=20, seed=3)
    records = [
        (TRANSACTIONS_TOPIC, transaction_event(r).model_dump_json().encode())
        for r in frame.to_dict("records")
    ]
    frauds = frame[frame["is_fraud"] == 1].to_dict("records")
    records += [(LABELS_TOPIC, label_event(r, 86_400).model_dump_json().encode()) for r in frauds]
    return records, set(frame["cc_num"].astype(str))


def test_card_numbers_never_reach_redis(redis_service: Service, use_redis: Configure, tmp_path: Path) -> None:
    client: redis.Redis = redis.Redis(port=redis_service.port)
    client.flushall()
    use_redis(f"redis://127.0.0.1:{redis_service.port}/0")
    publish_test_model(str(tmp_path / "models"))
    records, cards = _stream_records()

    # When the real updater applies a stream (in MSK batches) and the scorer reads for a request
    for start in range(0, len(records), 200):
        response = update_features.handler(msk_event(records[start : start + 200]), FakeContext())
        assert not response.get("batchItemFailures")
    assert call(REQUEST)[0] == 200
    cards.add(CARD)

    # Then no key, member, field or value contains a card number; card keys are 128-bit hashes
    blobs = list(_all_values(client))
    assert len(blobs) > 1000
    leaks = sorted({card for card in cards for blob in blobs if card.encode() in blob})
    assert leaks == []
    card_hashes = [_blob(k).decode().split(":")[2].rstrip("}") for k in client.scan_iter("fs:{c:*}:e")]
    assert len(card_hashes) == 30
    assert all(len(h) == 32 and set(h) <= set("0123456789abcdef") for h in card_hashes)
    client.close()


@pytest.fixture
def captured_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Everything the handlers' Powertools logger and the root logger write, at DEBUG."""
    buffer = io.StringIO()
    handler = powertools_logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    old_stream = handler.setStream(buffer)
    old_level = powertools_logger.log_level
    powertools_logger.setLevel("DEBUG")
    root = logging.getLogger()
    root_handler = logging.StreamHandler(buffer)
    old_root_level = root.level
    root.addHandler(root_handler)
    root.setLevel(logging.DEBUG)
    monkeypatch.setenv("POWERTOOLS_LOGGER_LOG_EVENT", "true")  # must not override log_event=False
    try:
        yield buffer
    finally:
        root.removeHandler(root_handler)
        root.setLevel(old_root_level)
        powertools_logger.setLevel(old_level)
        handler.setStream(old_stream)


def test_card_numbers_never_reach_the_logs(
    redis_service: Service, use_redis: Configure, tmp_path: Path, captured_logs: io.StringIO
) -> None:
    redis.Redis(port=redis_service.port).flushall()
    use_redis(f"redis://127.0.0.1:{redis_service.port}/0")
    publish_test_model(str(tmp_path / "models"))
    records, cards = _stream_records()
    poison = json.dumps({"kind": "transaction", "cc_num": "4000056655665556", "amt": -5}).encode()

    # The scorer: a good request and two invalid ones (one with a malformed card number)
    assert call(REQUEST)[0] == 200
    assert call({**REQUEST, "amount_usd": -1})[0] == 422
    assert call({**REQUEST, "cc_num": CARD + "x"})[0] == 422
    # The updater: a stream batch with a poison record that carries a card number
    response = update_features.handler(
        msk_event([*records[:100], (TRANSACTIONS_TOPIC, poison)]), FakeContext()
    )
    assert not response.get("batchItemFailures")
    # The scorer with Redis down (error paths log too)
    use_redis(f"redis://127.0.0.1:{free_port()}/0")
    assert call(REQUEST)[0] == 200
    assert call(method="GET", path="/health")[0] == 200

    output = captured_logs.getvalue()
    assert '"message":"scored"' in output.replace(" ", "")
    assert "****1111" in output  # the masked form is what the scorer logs
    assert "dead-lettered record" in output
    leaks = sorted(card for card in {*cards, CARD, "4000056655665556"} if card in output)
    assert leaks == []


# --------------------------------------------------------------------------- AUTH rotation


def test_a_warm_container_follows_an_auth_token_rotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ElastiCache's rotation: ROTATE (old and new token valid), the secret gets the new token,
    then SET (only the new one). A warm container's new connections must use the new token."""
    import boto3
    from moto import mock_aws

    old, new = secrets.token_hex(16), secrets.token_hex(16)
    service = start_redis(free_port(), tmp_path / "redis", password=old)
    now = [0.0]
    try:
        with mock_aws():
            for name, value in {
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",  # pragma: allowlist secret
            }.items():
                monkeypatch.setenv(name, value)
            secrets_client = boto3.client("secretsmanager")
            arn = secrets_client.create_secret(Name="auth", SecretString=json.dumps({"token": old}))["ARN"]
            cfg = Settings(
                redis_url=f"redis://127.0.0.1:{service.port}/0",
                redis_auth_secret_arn=arn,
                redis_timeout_ms=2000,
            )
            client = bootstrap.redis_client(cfg)
            assert isinstance(client, redis.Redis)
            provider = client.connection_pool.connection_kwargs["credential_provider"]
            assert isinstance(provider, bootstrap.SecretCredentialProvider)
            provider._clock = lambda: now[0]
            assert client.ping()

            # when the token is rotated and the old one revoked (connections are dropped, as a
            # failover or a frozen container's idle timeout would)
            secrets_client.put_secret_value(SecretId=arn, SecretString=json.dumps({"token": new}))
            admin = redis.Redis(port=service.port, password=old)
            admin.config_set("requirepass", new)
            redis.Redis(port=service.port, password=new).client_kill_filter(_type="normal", skipme=False)

            # then, within the token's max age, reconnecting uses the cached (old) token and fails
            client.connection_pool.disconnect()
            with pytest.raises(redis.AuthenticationError):
                client.ping()
            # and once it is older than that, the container reads the secret again
            now[0] += bootstrap.AUTH_TOKEN_MAX_AGE_SECONDS
            client.connection_pool.disconnect()
            assert client.ping()
    finally:
        service.stop()
