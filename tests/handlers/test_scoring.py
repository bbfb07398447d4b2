"""LoadedModel: one XGBoost call per request, checked against XGBoost's own prediction."""

from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost as xgb

from fraud_adapters.blobs import LocalBlobStore
from fraud_adapters.model_store import ChampionCache, ModelFiles, ModelNotFoundError, ModelStore
from fraud_core import spec
from handlers.scoring import LoadedModel, ModelCache, ModelUnavailableError, RowContributions, sigmoid
from tests.support.models import publish_test_model


def _files(tmp_path: Path) -> ModelFiles:
    manifest = publish_test_model(str(tmp_path), seed=3)
    return ModelStore(LocalBlobStore(str(tmp_path))).load(manifest.version)


def _rows(n: int = 200) -> np.ndarray:
    return np.random.default_rng(11).normal(size=(n, len(spec.FEATURE_NAMES)))


@pytest.mark.parametrize("approx", [False, True], ids=["shap", "approx"])
@pytest.mark.parametrize("degraded", [False, True], ids=["champion", "baseline"])
def test_probability_from_contributions_equals_xgboost_predict(
    tmp_path: Path, approx: bool, degraded: bool
) -> None:
    # given the champion and its baseline, loaded as the scorer loads them
    model = LoadedModel.from_files(_files(tmp_path), approx_reasons=approx)
    booster = model.baseline if degraded else model.booster
    assert booster is not None
    columns = model.baseline_columns if degraded else list(range(len(spec.FEATURE_NAMES)))

    for row in _rows():
        # when one row is scored
        probability, contributions, names, values = model.predict(row.reshape(1, -1), degraded)

        # then the probability is XGBoost's, the contributions are per feature + bias
        expected = float(booster.inplace_predict(row[columns].reshape(1, -1))[0])
        assert probability == pytest.approx(expected, abs=1e-6)
        assert len(contributions) == len(names) + 1
        assert names == (list(spec.REQUEST_ONLY_FEATURES) if degraded else list(spec.FEATURE_NAMES))
        np.testing.assert_array_equal(values, row[columns])


def test_exact_and_approximate_reasons_differ_but_agree_on_the_margin(tmp_path: Path) -> None:
    files = _files(tmp_path)
    exact = LoadedModel.from_files(files)
    approx = LoadedModel.from_files(files, approx_reasons=True)
    differ = 0
    for row in _rows(50):
        p1, c1, _, _ = exact.predict(row.reshape(1, -1), False)
        p2, c2, _, _ = approx.predict(row.reshape(1, -1), False)
        assert p1 == pytest.approx(p2, abs=1e-6)
        differ += not np.allclose(c1, c2)
    assert differ > 0  # the setting reaches XGBoost


def test_a_model_with_other_feature_columns_is_refused(tmp_path: Path) -> None:
    # given an artifact whose booster was trained on reordered columns
    files = _files(tmp_path)
    names = list(reversed(spec.FEATURE_NAMES))
    x = np.random.default_rng(0).normal(size=(50, len(names)))
    other = xgb.train(
        {"objective": "binary:logistic"}, xgb.DMatrix(x, label=x[:, 0] > 0, feature_names=names), 2
    )
    bad = ModelFiles(files.manifest, bytes(other.save_raw("ubj")), files.baseline)

    # then loading it fails instead of scoring on misaligned columns
    with pytest.raises(ModelNotFoundError, match="other feature columns"):
        LoadedModel.from_files(bad)
    with pytest.raises(ModelNotFoundError, match="other feature columns"):
        LoadedModel.from_files(
            ModelFiles(
                files.manifest.model_copy(update={"feature_names": names}), files.model, files.baseline
            )
        )


def test_the_first_champion_is_picked_up_within_a_second_even_with_a_long_pointer_ttl(
    tmp_path: Path,
) -> None:
    # given a scorer that started before any champion existed, with the deployed 30 s pointer TTL
    now = [0.0]
    cache = ChampionCache(ModelStore(LocalBlobStore(str(tmp_path))), ttl=30.0, clock=lambda: now[0])
    assert cache.current_version() is None

    # when the first champion is published
    publish_test_model(str(tmp_path), version="7")

    # then it is seen after the short retry interval, not after 30 s
    now[0] = 0.5
    assert cache.current_version() is None
    now[0] = 1.0
    assert cache.current_version() == "7"
    # and from then on the pointer is re-read at the TTL
    publish_test_model(str(tmp_path), version="8")
    now[0] = 20.0
    assert cache.current_version() == "7"
    now[0] = 31.0
    assert cache.current_version() == "8"


@pytest.mark.parametrize("margin", [-1000.0, -710.0, -30.0, -1.5, 0.0, 1.5, 30.0, 710.0, 1000.0])
def test_sigmoid_is_the_logistic_function_without_overflow(margin: float) -> None:
    expected = float(1 / (1 + Decimal(-margin).exp()))  # exact to float precision, no overflow
    assert sigmoid(margin) == pytest.approx(expected, rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("approx", [False, True], ids=["shap", "approx"])
def test_row_contributions_are_bitwise_those_of_booster_predict(tmp_path: Path, approx: bool) -> None:
    # given a booster trained with early stopping (its best iteration is not its last)
    x = _rows(400)
    y = (x[:, 0] + x[:, 3] > 0.5).astype(int)
    train, valid = xgb.DMatrix(x[:300], label=y[:300]), xgb.DMatrix(x[300:], label=y[300:])
    params = {"objective": "binary:logistic", "max_depth": 4, "eta": 0.5}
    booster = xgb.train(params, train, 200, evals=[(valid, "v")], early_stopping_rounds=3, verbose_eval=False)
    assert booster.best_iteration < booster.num_boosted_rounds() - 1
    contributions = RowContributions(booster, x.shape[1], approx)

    for row in _rows(100):
        # when one row goes through the C API path and through Booster.predict
        got = contributions(row.reshape(1, -1))
        want = booster.predict(xgb.DMatrix(row.reshape(1, -1)), pred_contribs=True, approx_contribs=approx)[0]

        # then the contributions are the same float32 values
        np.testing.assert_array_equal(got, want.astype(np.float64))


def test_row_contributions_refuse_a_row_of_the_wrong_shape_or_type(tmp_path: Path) -> None:
    model = LoadedModel.from_files(_files(tmp_path))
    assert model.contributions is not None
    n = len(spec.FEATURE_NAMES)
    bad_rows: list[Any] = [
        np.zeros((2, n)),
        np.zeros((1, n - 1)),
        np.zeros((1, n), dtype=np.float32),
        np.zeros((n, 2)).T[:1],
    ]
    for bad in bad_rows:
        with pytest.raises(ValueError, match="C-contiguous float64 row"):
            model.contributions(bad)


def test_row_contributions_report_xgboost_errors_and_unexpected_shapes() -> None:
    x = _rows(100)
    labels = (x[:, 0] > 0).astype(int)
    narrow = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(x[:, :5], label=labels), 3)
    wide = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(x, label=labels), 3)

    # a row with more columns than the model knows: XGBoost's own message comes through
    with pytest.raises(RuntimeError, match="XGBoost: "):
        RowContributions(narrow, 10, approx=False)(x[:1, :10].copy())

    # a model with more features than the row: an error, never contributions of another shape
    with pytest.raises(RuntimeError, match=r"XGBoost: |unexpected contribution shape"):
        RowContributions(wide, 5, approx=False)(x[:1, :5].copy())


def test_the_dev_card_hash_key_is_refused_on_lambda(monkeypatch: pytest.MonkeyPatch) -> None:
    from handlers import bootstrap
    from handlers.settings import DEV_CARD_HASH_KEY, Settings

    # given the development key: fine locally, a cold-start error on Lambda
    local = bootstrap.card_hasher(Settings(card_hash_key=DEV_CARD_HASH_KEY))
    monkeypatch.setenv("AWS_EXECUTION_ENV", "AWS_Lambda_python3.13")
    with pytest.raises(RuntimeError, match="CARD_HASH_KEY_SECRET_ARN"):
        bootstrap.card_hasher(Settings(card_hash_key=DEV_CARD_HASH_KEY))

    # and a key of its own is accepted there, and pseudonymizes differently
    own = bootstrap.card_hasher(Settings(card_hash_key="a-deployment-key-of-32-characters"))
    assert own("4111111111111111") != local("4111111111111111")


def test_a_champion_trained_with_another_label_delay_is_refused(tmp_path: Path) -> None:
    # given a champion trained with the default 7-day delay, and a scorer computing 2 days
    publish_test_model(str(tmp_path), version="4", label_delay=spec.DEFAULT_LABEL_DELAY)
    models = ModelCache(ModelStore(LocalBlobStore(str(tmp_path))), ttl=0.0, label_delay=2 * spec.DAY)

    # when the scorer loads it, then it refuses, saying why (the API answers 503)
    with pytest.raises(ModelUnavailableError, match="label delay of 604800 s"):
        models.get()
