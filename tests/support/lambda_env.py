"""The handlers' environment for tests that call them directly (parity, adversarial, backfill)."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from handlers import bootstrap, predict
from tests.support.models import publish_test_model


@contextmanager
def handler_environment(
    monkeypatch: pytest.MonkeyPatch, root: Path, label_delay: int, **extra: str
) -> Iterator[Path]:
    """Models, dead letters (and whatever ``extra`` names) under ``root``, no stream, a test
    champion published; Redis comes from the ``handler_redis`` fixture. Yields ``root``."""
    environment = {
        "REDIS_TIMEOUT_MS": "2000",
        "MODEL_STORE_URI": str(root / "models"),
        "DEAD_LETTER_URI": str(root / "dead"),
        "LABEL_DELAY_SECONDS": str(label_delay),
        "STREAM_KIND": "none",
        **extra,
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    predict.scorer.cache_clear()
    publish_test_model(str(root / "models"))
    try:
        yield root
    finally:
        bootstrap.reset()
        predict.scorer.cache_clear()
