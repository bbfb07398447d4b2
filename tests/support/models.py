"""A tiny but real XGBoost champion for handler tests (the training pipeline makes real ones)."""

from datetime import UTC, datetime

import numpy as np
import xgboost as xgb

from fraud_adapters.blobs import LocalBlobStore
from fraud_adapters.model_store import ModelStore
from fraud_core import spec
from fraud_core.schemas import ModelManifest
from handlers.settings import Settings


def _booster(names: list[str], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, len(names)))
    y = (x[:, 0] + rng.normal(size=400) > 1).astype(int)
    data = xgb.DMatrix(x, label=y, feature_names=names)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "seed": seed}, data, 10)
    return bytes(booster.save_raw("ubj"))


def publish_test_model(
    root: str, version: str = "1", threshold: float = 0.5, seed: int = 0, label_delay: int | None = None
) -> ModelManifest:
    return publish_test_model_to(ModelStore(LocalBlobStore(root)), version, threshold, seed, label_delay)


def publish_test_model_to(
    store: ModelStore, version: str, threshold: float = 0.5, seed: int = 0, label_delay: int | None = None
) -> ModelManifest:
    """``label_delay``: the manifest's (the scorer refuses another one); default the handlers'
    ``LABEL_DELAY_SECONDS`` in this process's environment."""
    if label_delay is None:
        label_delay = Settings.from_env().label_delay_seconds
    manifest = ModelManifest(
        model_name=store.model_name,
        version=version,
        feature_names=list(spec.FEATURE_NAMES),
        feature_spec_version=spec.FEATURE_SPEC_VERSION,
        threshold=threshold,
        label_delay_seconds=label_delay,
        created_at=datetime.now(UTC),
    )
    store.publish(
        manifest, _booster(list(spec.FEATURE_NAMES), seed), _booster(list(spec.REQUEST_ONLY_FEATURES), seed)
    )
    return manifest
