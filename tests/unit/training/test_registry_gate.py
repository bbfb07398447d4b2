"""The champion gate: the alias moves only when a candidate beats the champion."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraud_adapters.blobs import LocalBlobStore
from fraud_adapters.model_store import ModelStore
from fraud_core import spec
from tests.support.streams import synthetic_stream
from training.config import TuningConfig
from training.dataset import build_features
from training.evaluate import evaluate
from training.registry import CHAMPION, Candidate, Registry, publish
from training.train import fit, predict

TUNING = TuningConfig(max_rounds=40, early_stopping_rounds=10, nthread=1)
PARAMS = {"objective": "binary:logistic", "eval_metric": "aucpr", "max_depth": 3, "nthread": 1, "seed": 1}


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    df = synthetic_stream(n=3000, seed=11)
    rng = np.random.default_rng(0)
    # Frauds are the large amounts (mostly): learnable from `amt`.
    df["is_fraud"] = ((df["amt"] > 300) ^ (rng.random(len(df)) < 0.02)).astype(np.int8)
    return build_features(df, label_delay=spec.DAY)


def _candidate(rows: pd.DataFrame, informative: bool) -> tuple[Candidate, pd.DataFrame]:
    half = len(rows) // 2
    train, validation = rows.iloc[:half].copy(), rows.iloc[half:]
    if not informative:
        train["is_fraud"] = np.random.default_rng(5).permutation(train["is_fraud"].to_numpy())
    booster, _ = fit(train, validation, PARAMS, TUNING)
    baseline, _ = fit(train, validation, PARAMS, TUNING, spec.REQUEST_ONLY_FEATURES)
    metrics = evaluate(validation, predict(booster, validation), 0.5).as_dict("validation_")
    return Candidate(booster, baseline, PARAMS, 0.5, metrics), validation


def test_alias_moves_only_for_a_better_candidate(rows: pd.DataFrame, tmp_path: Path) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", "gate-test", "fraudsys")
    store_uri = str(tmp_path / "models")
    store = ModelStore(LocalBlobStore(store_uri))

    def submit(informative: bool) -> tuple[str, bool]:
        candidate, validation = _candidate(rows, informative)
        decision = registry.gate(candidate, validation, "average_precision", 0.0)
        version, run_id = registry.register(candidate, validation)
        if decision.promote:
            registry.promote(version)
        publish(
            store_uri,
            "fraudsys",
            version,
            candidate.booster,
            candidate.baseline,
            0.5,
            spec.DAY,
            candidate.metrics,
            run_id,
            champion=decision.promote,
        )
        return version, decision.promote

    # Given no champion, a weak candidate becomes champion
    weak, promoted = submit(informative=False)
    assert promoted
    assert store.champion_version() == weak
    # When a better candidate arrives, it takes over
    strong, promoted = submit(informative=True)
    assert promoted
    assert str(registry.client.get_model_version_by_alias("fraudsys", CHAMPION).version) == strong
    # When a worse one arrives, it is registered and published but the champion stays
    worse, promoted = submit(informative=False)
    assert not promoted
    assert str(registry.client.get_model_version_by_alias("fraudsys", CHAMPION).version) == strong
    assert store.champion_version() == strong
    assert store.load(worse).manifest.version == worse  # the version is still there to inspect


def test_published_artifact_is_self_contained(rows: pd.DataFrame, tmp_path: Path) -> None:
    import xgboost as xgb

    candidate, validation = _candidate(rows, informative=True)
    publish(
        str(tmp_path), "fraudsys", "7", candidate.booster, candidate.baseline, 0.42, spec.DAY, {}, None, True
    )
    files = ModelStore(LocalBlobStore(tmp_path)).load("7")
    assert files.manifest.threshold == 0.42
    assert files.manifest.feature_names == list(spec.FEATURE_NAMES)
    assert files.manifest.feature_spec_version == spec.FEATURE_SPEC_VERSION
    booster = xgb.Booster()
    booster.load_model(bytearray(files.model))
    expected = predict(candidate.booster, validation)
    np.testing.assert_allclose(predict(booster, validation), expected, rtol=1e-6)
    assert files.baseline is not None
