"""The scorer behind ``POST /predict``: champion model cache, feature read, inference."""

import ctypes
import json
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import redis

# At import (the Lambda's init phase, the local API's start), not at the first champion load:
# ``import xgboost`` takes seconds (with scikit-learn installed, as in the dev environment, it
# imports that too: 8 of the 10 s measured on a busy 2-core machine), which the first scored
# request paid, inside its timed Redis read (issue 15).
import xgboost as xgb
from xgboost import _c_api

from fraud_adapters.model_store import ChampionCache, ModelFiles, ModelNotFoundError, ModelStore
from fraud_adapters.redis_store import CorruptStateError, RedisFeatureStore
from fraud_adapters.store_marker import EMPTY, MarkerCheck
from fraud_core import spec
from fraud_core.decision import is_fraud, top_reasons
from fraud_core.features import F64
from fraud_core.online import OnlineState, request_features
from fraud_core.schemas import ModelManifest, PredictRequest, PredictResponse, epoch_seconds
from handlers.observability import logger
from handlers.path_shap import PathShap


class ModelUnavailableError(RuntimeError):
    """No champion model can be loaded: the scorer answers 503."""


class FeatureStoreUnavailableError(RuntimeError):
    """Redis is unreachable and no request-only model exists: the scorer answers 503."""


class RowContributions:
    """Per-feature contributions (+ bias) of one float64 row, through XGBoost's C API.

    ``Booster.predict(DMatrix(row), pred_contribs=True)`` makes the same two C calls
    (``XGDMatrixCreateFromDense``, ``XGBoosterPredictFromDMatrix``) with the same arguments, but
    its Python wrapper (array-interface JSON, argument checks, a class built per call, output
    conversion) costs ~0.1 ms per row, a quarter of the prediction. The C functions are
    XGBoost's public C API, reached through the library handle the ``xgboost`` package loaded;
    ``tests/handlers/test_scoring.py`` checks the result is bitwise ``Booster.predict``'s.
    """

    def __init__(self, booster: Any, n_features: int, approx: bool) -> None:
        self._lib: Any = getattr(_c_api, "_LIB")  # noqa: B009 (the loaded libxgboost)
        self._booster = booster  # owns the handle
        self._n = n_features
        # nthread=1: one row; the default fans out to every core and waits on OpenMP workers
        self._dmatrix_config = json.dumps({"missing": math.nan, "nthread": 1}).encode()
        self._predict_config = json.dumps(
            {
                "type": 3 if approx else 2,  # approximate (Saabas) or exact (TreeSHAP) contributions
                "training": False,
                "iteration_begin": 0,
                "iteration_end": 0,
                "strict_shape": False,
            }
        ).encode()

    def __call__(self, row: F64) -> F64:
        check_row(row, self._n)
        interface = f'{{"data":[{row.ctypes.data},true],"shape":[1,{self._n}],"typestr":"<f8","version":3}}'
        matrix = ctypes.c_void_p()
        self._check(
            self._lib.XGDMatrixCreateFromDense(interface.encode(), self._dmatrix_config, ctypes.byref(matrix))
        )
        try:
            shape = ctypes.POINTER(ctypes.c_uint64)()  # bst_ulong
            dims = ctypes.c_uint64()
            out = ctypes.POINTER(ctypes.c_float)()
            self._check(
                self._lib.XGBoosterPredictFromDMatrix(
                    self._booster.handle,
                    matrix,
                    self._predict_config,
                    ctypes.byref(shape),
                    ctypes.byref(dims),
                    ctypes.byref(out),
                )
            )
            if dims.value != 2 or (shape[0], shape[1]) != (1, self._n + 1):
                raise RuntimeError(f"unexpected contribution shape from XGBoost: {dims.value} dims")
            # the buffer belongs to the booster until its next prediction: copy it out
            return np.ctypeslib.as_array(out, shape=(self._n + 1,)).astype(np.float64)
        finally:
            self._lib.XGDMatrixFree(matrix)

    def _check(self, code: int) -> None:
        if code != 0:
            raise RuntimeError(f"XGBoost: {self._lib.XGBGetLastError().decode()}")


def load_booster(raw: bytes) -> Any:
    """A booster from a saved model, predicting on one thread (one row at a time)."""
    booster = xgb.Booster()
    booster.load_model(bytearray(raw))
    booster.set_param({"nthread": 1})
    return booster


def check_row(row: F64, n_features: int) -> None:
    if row.shape != (1, n_features) or row.dtype != np.float64 or not row.flags.c_contiguous:
        raise ValueError(f"expected one C-contiguous float64 row of {n_features} features")


class Contributions:
    """A model's row contributions: XGBoost's (``RowContributions``) until the exact path table
    (``handlers.path_shap``, ~2.5x less per row) is built by a background thread, then the table.

    The table is built off the request path so that a cold start or a champion's hot reload does
    not wait for it (~0.1 s of CPU for a champion of ~2,700 leaves, ~0.2 s for 7,000: requests
    in that time share the CPU with it); answers are the same either way (within float32
    rounding: the table is checked against XGBoost when built). Saabas reasons (``approx``) keep
    XGBoost's.
    """

    def __init__(self, booster: Any, n_features: int, approx: bool, table: bool = True) -> None:
        self.xgboost = RowContributions(booster, n_features, approx)
        self.table: PathShap | None = None
        self.ready = threading.Event()
        if approx or not table:
            self.ready.set()
            return
        raw = bytes(booster.save_raw("json"))  # here: the thread never touches the serving booster
        # not a daemon: a process that exits while it builds (a tool, a cold-start probe) waits the
        # ~0.1 s for it; a daemon thread inside XGBoost at interpreter exit aborted the process
        # ("terminate called without an active exception")
        threading.Thread(target=self._build, args=(raw, n_features), name="path-shap", daemon=False).start()

    def _build(self, raw: bytes, n_features: int) -> None:
        try:
            booster = load_booster(raw)  # its own: an output buffer is not shared across threads
            self.table = PathShap.from_model(raw, n_features, RowContributions(booster, n_features, False))
            if self.table is None:
                logger.info("SHAP path table not used for this model: XGBoost's TreeSHAP serves")
        except Exception as exc:  # XGBoost's own computation keeps serving
            logger.warning("SHAP path table not built", extra={"reason": f"{type(exc).__name__}: {exc}"})
        finally:
            self.ready.set()

    def __call__(self, row: F64) -> F64:
        table = self.table
        if table is None:
            return self.xgboost(row)
        check_row(row, table.n)
        return table(row)


def sigmoid(margin: float) -> float:
    """The logistic function, without overflow for margins of any size."""
    if margin >= 0:
        return 1.0 / (1.0 + math.exp(-margin))
    z = math.exp(margin)
    return z / (1.0 + z)


@dataclass
class LoadedModel:
    manifest: ModelManifest
    booster: Any
    baseline: Any | None
    baseline_columns: list[int]
    approx_reasons: bool = False
    path_table: bool = True  # False: XGBoost's TreeSHAP only (``Contributions``)
    # derived from the boosters (``dataclasses.replace`` rebuilds them)
    contributions: Contributions = field(init=False)
    baseline_contributions: Contributions | None = field(init=False)

    def __post_init__(self) -> None:
        self.contributions = Contributions(
            self.booster, len(self.manifest.feature_names), self.approx_reasons, self.path_table
        )
        self.baseline_contributions = None
        if self.baseline is not None:
            n, approx = len(self.baseline_columns), self.approx_reasons
            self.baseline_contributions = Contributions(self.baseline, n, approx, self.path_table)

    @classmethod
    def from_files(cls, files: ModelFiles, approx_reasons: bool = False) -> "LoadedModel":
        names = list(spec.FEATURE_NAMES)
        version = files.manifest.version

        def load(raw: bytes, expected: list[str], what: str) -> Any:
            booster = load_booster(raw)
            # predict() skips XGBoost's per-call name check: the columns are checked once, here
            if booster.feature_names is not None and list(booster.feature_names) != expected:
                raise ModelNotFoundError(f"{what} of version {version} expects other feature columns")
            return booster

        if files.manifest.feature_names != names:
            raise ModelNotFoundError(f"manifest of version {version} lists other feature columns")
        return cls(
            manifest=files.manifest,
            booster=load(files.model, names, "model"),
            baseline=load(files.baseline, list(spec.REQUEST_ONLY_FEATURES), "baseline")
            if files.baseline
            else None,
            baseline_columns=[names.index(n) for n in spec.REQUEST_ONLY_FEATURES],
            approx_reasons=approx_reasons,
        )

    def predict(self, row: F64, degraded: bool) -> tuple[float, F64, list[str], F64]:
        """Probability, per-feature contributions, feature names and values used.

        One XGBoost prediction: the contributions (``pred_contribs``: exact TreeSHAP, or the
        Saabas path attribution with ``approx_reasons``) sum to the raw margin, so the
        probability is their sigmoid (equal to ``Booster.predict`` within float32 rounding, ~1e-7).
        The columns were checked against the model's feature names when it was loaded.
        """
        contributions: Contributions | None = self.contributions
        names, values = self.manifest.feature_names, row
        if degraded:
            contributions, names = self.baseline_contributions, list(spec.REQUEST_ONLY_FEATURES)
            values = np.ascontiguousarray(row[:, self.baseline_columns])
        if contributions is None:  # degraded is only asked for when a baseline exists
            raise ModelUnavailableError("no request-only baseline model to score degraded")
        result = contributions(values)
        return sigmoid(float(result.sum())), result, names, values[0]


class ModelCache:
    """The champion, loaded once per container and reloaded when the pointer moves."""

    def __init__(
        self, store: ModelStore, ttl: float, approx_reasons: bool = False, label_delay: int | None = None
    ) -> None:
        self.pointer = ChampionCache(store, ttl)
        self.store = store
        self.approx_reasons = approx_reasons
        self.label_delay = label_delay  # a champion trained with another delay is refused
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
                files = self.store.load(version, self.label_delay)
                self.model = LoadedModel.from_files(files, self.approx_reasons)
            except ModelNotFoundError as exc:
                if self.model is not None:
                    return self.model
                raise ModelUnavailableError(str(exc)) from exc
        return self.model


@dataclass
class Scored:
    response: PredictResponse
    features: F64
    read_ms: float  # the Redis read only
    total_ms: float
    model_ms: float = 0.0  # the champion: pointer check, and a load when it changed


class Scorer:
    """``marker``: the store's fill marker (``fraud_adapters.store_marker``); while the store
    holds none (never filled, or its data was lost), answers come from the request-only
    baseline, ``degraded``, as when Redis is unreachable. None: the store is taken as complete."""

    def __init__(
        self,
        store: RedisFeatureStore,
        models: ModelCache,
        label_delay: int,
        marker: MarkerCheck | None = None,
    ) -> None:
        self.store = store
        self.models = models
        self.label_delay = label_delay
        self.marker = marker

    def score(self, request: PredictRequest) -> Scored:
        started = time.perf_counter()
        model = self.models.get()
        read_started = time.perf_counter()
        t = epoch_seconds(request.transaction_time)
        degraded = False
        if self.marker is not None and self.marker.filled() is False:
            # the store lost its history (or never had it): its features would all be wrong
            if model.baseline is None:
                raise FeatureStoreUnavailableError(f"feature store {EMPTY}")
            state, degraded = OnlineState(), True
        else:
            try:
                state = self.store.read(request.card_id, request.merchant_name, t)
            except (redis.RedisError, CorruptStateError) as exc:
                # unreachable, or this card's/merchant's keys cannot be read (members no FraudSys
                # code wrote, an error reply such as WRONGTYPE or OOM): request-only features
                if not isinstance(exc, redis.ConnectionError | redis.TimeoutError):
                    logger.error("feature state unreadable", extra={"reason": f"{type(exc).__name__}: {exc}"})
                if model.baseline is None:
                    raise FeatureStoreUnavailableError(f"feature store unavailable: {exc}") from exc
                state, degraded = OnlineState(), True
        read_ms = (time.perf_counter() - read_started) * 1000
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
        total_ms = (time.perf_counter() - started) * 1000
        return Scored(response, row, read_ms, total_ms, (read_started - started) * 1000)
