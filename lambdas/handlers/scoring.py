"""The scorer behind ``POST /predict``: champion model cache, feature read, inference."""

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import redis

from fraud_adapters.model_store import ChampionCache, ModelFiles, ModelNotFoundError, ModelStore
from fraud_adapters.redis_store import RedisFeatureStore
from fraud_core import spec
from fraud_core.decision import is_fraud, top_reasons
from fraud_core.features import F64
from fraud_core.online import OnlineState, request_features
from fraud_core.schemas import ModelManifest, PredictRequest, PredictResponse, epoch_seconds


class ModelUnavailableError(RuntimeError):
    """No champion model can be loaded: the scorer answers 503."""


class FeatureStoreUnavailableError(RuntimeError):
    """Redis is unreachable and no request-only model exists: the scorer answers 503."""


@dataclass
class LoadedModel:
    manifest: ModelManifest
    booster: Any
    baseline: Any | None
    baseline_columns: list[int]

    @classmethod
    def from_files(cls, files: ModelFiles) -> "LoadedModel":
        import xgboost as xgb

        def load(raw: bytes) -> Any:
            booster = xgb.Booster()
            booster.load_model(bytearray(raw))
            booster.set_param({"nthread": 1})
            return booster

        names = list(spec.FEATURE_NAMES)
        return cls(
            manifest=files.manifest,
            booster=load(files.model),
            baseline=load(files.baseline) if files.baseline else None,
            baseline_columns=[names.index(n) for n in spec.REQUEST_ONLY_FEATURES],
        )

    def predict(self, row: F64, degraded: bool) -> tuple[float, F64, list[str], F64]:
        """Probability, per-feature contributions, feature names and values used."""
        import xgboost as xgb

        booster, names, values = self.booster, self.manifest.feature_names, row
        if degraded:
            booster, names = self.baseline, list(spec.REQUEST_ONLY_FEATURES)
            values = row[:, self.baseline_columns]
        probability = float(booster.inplace_predict(values)[0])
        # nthread=1: one row; the default fans out to every core and waits on OpenMP workers
        matrix = xgb.DMatrix(values, feature_names=names, nthread=1)
        contributions = booster.predict(matrix, pred_contribs=True)[0]
        return probability, np.asarray(contributions, dtype=np.float64), names, values[0]


class ModelCache:
    """The champion, loaded once per container and reloaded when the pointer moves."""

    def __init__(self, store: ModelStore, ttl: float) -> None:
        self.pointer = ChampionCache(store, ttl)
        self.store = store
        self.model: LoadedModel | None = None

    def get(self) -> LoadedModel:
        try:
            version = self.pointer.current_version()
        except Exception as exc:  # the model store being down must not stop a loaded scorer
            if self.model is not None:
                return self.model
            raise ModelUnavailableError(f"cannot read the champion pointer: {exc}") from exc
        if version is None:
            if self.model is not None:
                return self.model
            raise ModelUnavailableError(f"no champion model published in {self.store.blobs.uri}")
        if self.model is None or self.model.manifest.version != version:
            try:
                self.model = LoadedModel.from_files(self.store.load(version))
            except ModelNotFoundError as exc:
                if self.model is not None:
                    return self.model
                raise ModelUnavailableError(str(exc)) from exc
        return self.model


@dataclass
class Scored:
    response: PredictResponse
    features: F64
    read_ms: float
    total_ms: float


class Scorer:
    def __init__(self, store: RedisFeatureStore, models: ModelCache, label_delay: int) -> None:
        self.store = store
        self.models = models
        self.label_delay = label_delay

    def score(self, request: PredictRequest) -> Scored:
        started = time.perf_counter()
        model = self.models.get()
        t = epoch_seconds(request.transaction_time)
        degraded = False
        try:
            state = self.store.read(request.card_id, request.merchant_name, t)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if model.baseline is None:
                raise FeatureStoreUnavailableError(f"feature store unreachable: {exc}") from exc
            state, degraded = OnlineState(), True
        read_ms = (time.perf_counter() - started) * 1000
        row = request_features(request, state, self.label_delay)
        probability, contributions, names, values = model.predict(row, degraded)
        threshold = model.manifest.threshold
        response = PredictResponse(
            transaction_id=request.transaction_id,
            is_fraud=is_fraud(probability, threshold),
            fraud_probability=round(probability, 6),
            threshold=threshold,
            model_version=model.manifest.version + ("-baseline" if degraded else ""),
            reasons=top_reasons(names, values, contributions),
            timestamp=datetime.now(UTC),
            degraded=degraded,
        )
        return Scored(response, row, read_ms, (time.perf_counter() - started) * 1000)
