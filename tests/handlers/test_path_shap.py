"""The exact SHAP path table (``handlers.path_shap``) against XGBoost's own TreeSHAP."""

from typing import Any

import numpy as np
import pytest
import xgboost as xgb

from fraud_core.decision import top_reasons
from handlers import path_shap
from handlers.path_shap import PathShap
from handlers.scoring import Contributions, RowContributions

N = 12


def _data(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (rows, N))
    x[:, 2] = np.round(x[:, 2] * 3)  # few distinct values: many rows exactly at a threshold
    x[:, 5] = rng.integers(0, 1_000_000, rows)  # large magnitudes (float32 rounding matters)
    x[rng.random(x.shape) < 0.15] = np.nan  # missing values take each split's default branch
    signal = np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 1]) * np.nan_to_num(x[:, 2]) + (x[:, 5] > 5e5)
    y = (signal + rng.normal(0, 1, rows) > 0.8).astype(int)
    return x, y


def _booster(params: dict[str, Any], rounds: int, seed: int = 0) -> Any:
    x, y = _data(3000, seed)
    booster = xgb.train({"objective": "binary:logistic", **params}, xgb.DMatrix(x, label=y), rounds)
    booster.set_param({"nthread": 1})
    return booster


def _table(booster: Any) -> PathShap | None:
    return PathShap.from_model(bytes(booster.save_raw("json")), N, RowContributions(booster, N, False))


def _rows(seed: int) -> np.ndarray:
    x, _ = _data(400, seed)
    x[:50] *= 1e6  # far outside the training range
    x[50:60] = np.nan  # every feature missing
    return x


@pytest.mark.parametrize(
    ("params", "rounds"),
    [
        ({"max_depth": 1}, 30),
        ({"max_depth": 3, "eta": 0.3}, 60),
        ({"max_depth": 6, "eta": 0.1, "subsample": 0.8, "colsample_bynode": 0.7}, 80),
        ({"max_depth": 8, "eta": 0.2, "min_child_weight": 0}, 15),
        ({"max_depth": 7, "max_leaves": 24, "grow_policy": "lossguide"}, 20),
    ],
    ids=["stumps", "depth3", "depth6", "depth8", "lossguide"],
)
def test_the_table_gives_xgboosts_contributions_and_reasons(params: dict[str, Any], rounds: int) -> None:
    # given a model and XGBoost's own TreeSHAP for it
    booster = _booster(params, rounds)
    xgboost = RowContributions(booster, N, approx=False)
    table = _table(booster)
    assert table is not None
    names = [f"f{i}" for i in range(N)]

    for row in _rows(seed=7):
        one = np.ascontiguousarray(row.reshape(1, -1))
        # when one row is explained by both
        got, want = table(one), xgboost(one)

        # then every contribution and the bias agree within float32 rounding
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
        # and so do the reasons, wherever the third and fourth features are not within rounding
        ranked = np.sort(want[:N])[::-1]
        if ranked[2] - ranked[3] > 1e-4:
            mine, theirs = top_reasons(names, one[0], got), top_reasons(names, one[0], want)
            assert [r.feature for r in mine] == [r.feature for r in theirs]
            assert [r.contribution for r in mine] == pytest.approx([r.contribution for r in theirs], abs=3e-5)


def test_the_margin_is_the_models_prediction() -> None:
    booster = _booster({"max_depth": 5}, 40)
    table = _table(booster)
    assert table is not None
    x = _rows(seed=3)
    margins = booster.predict(xgb.DMatrix(x), output_margin=True)
    for row, margin in zip(x, margins, strict=True):
        assert table(np.ascontiguousarray(row.reshape(1, -1))).sum() == pytest.approx(margin, abs=2e-5)


def test_models_the_table_does_not_describe_keep_xgboosts_treeshap(monkeypatch: pytest.MonkeyPatch) -> None:
    # other objectives are not a probability's margin
    assert _table(_booster({"objective": "reg:squarederror", "max_depth": 3}, 10)) is None
    # a table larger than the bound: the deep model keeps XGBoost's computation
    deep = _booster({"max_depth": 6}, 20)
    monkeypatch.setattr(path_shap, "MAX_TABLE_BYTES", 1024)
    assert _table(deep) is None
    contributions = Contributions(deep, N, approx=False)
    assert contributions.ready.wait(30)
    assert contributions.table is None
    one = np.ascontiguousarray(_rows(seed=1)[:1])
    np.testing.assert_array_equal(contributions(one), RowContributions(deep, N, False)(one))


def test_a_table_that_disagrees_with_xgboost_on_a_probe_row_is_not_used() -> None:
    booster = _booster({"max_depth": 3}, 10)

    def wrong(row: np.ndarray) -> np.ndarray:
        out = RowContributions(booster, N, False)(row)
        out[0] += 1e-3
        return out

    assert PathShap.from_model(bytes(booster.save_raw("json")), N, wrong) is None


def test_contributions_serve_xgboost_until_the_table_is_built_then_the_table() -> None:
    booster = _booster({"max_depth": 4}, 30)
    one = np.ascontiguousarray(_rows(seed=2)[:1])
    contributions = Contributions(booster, N, approx=False)
    np.testing.assert_allclose(contributions(one), RowContributions(booster, N, False)(one), atol=2e-5)
    assert contributions.ready.wait(30)
    assert contributions.table is not None
    np.testing.assert_allclose(contributions(one), RowContributions(booster, N, False)(one), atol=2e-5)
    with pytest.raises(ValueError, match="C-contiguous float64 row"):
        contributions(np.zeros((1, N - 1)))
    # Saabas reasons are XGBoost's only
    approx = Contributions(booster, N, approx=True)
    assert approx.ready.is_set()
    assert approx.table is None
