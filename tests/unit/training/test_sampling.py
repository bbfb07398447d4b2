"""Time-stratified sampling of legitimate rows and its weights (training.sampling)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fraud_core import spec
from training.config import SplitConfig, load_config
from training.pipeline import read_table, sample_splits
from training.sampling import WEIGHT_COLUMN, read_feature_table, sample_legitimate
from training.train import base_params, class_counts, fit_rounds, time_splits

T0 = 1_577_836_800  # 2020-01-01 00:00 UTC


def frame(days: int = 20, per_day: int = 2_000, fraud_rate: float = 0.01, seed: int = 3) -> pd.DataFrame:
    """Rows over ``days`` days with a different number of rows each day, and two features: one
    that separates the classes and one of noise."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(per_day // 2, per_day * 3 // 2, days)
    t = np.concatenate([T0 + d * spec.DAY + rng.integers(0, spec.DAY, n) for d, n in enumerate(counts)])
    y = (rng.random(len(t)) < fraud_rate).astype(np.int8)
    return pd.DataFrame(
        {
            "trans_num": [f"tx-{i:07d}" for i in range(len(t))],
            "cc_num": rng.integers(0, 300, len(t)).astype(str),
            "merchant": "m",
            "event_time": t,
            "is_fraud": y,
            "signal": rng.normal(0, 1, len(t)) + 2.5 * y,
            "noise": rng.normal(0, 1, len(t)),
        }
    )


def day_of(rows: pd.DataFrame) -> pd.Series:
    return rows["event_time"] // spec.DAY


def test_each_day_keeps_its_share_and_weighs_back_to_its_real_count() -> None:
    # given 20 days of rows and a cut: the last 5 days are validation and test
    rows = frame()
    keep_from = T0 + 15 * spec.DAY

    # when the legitimate rows are sampled at 10 %
    out = sample_legitimate(rows, 0.1, seed=1, keep_from=keep_from)

    # then every fraud is kept at weight 1
    frauds = rows[rows["is_fraud"] == 1]
    assert set(frauds["trans_num"]) <= set(out["trans_num"])
    assert (out.loc[out["is_fraud"] == 1, WEIGHT_COLUMN] == 1).all()
    # each earlier day keeps ~10 % of its legitimate rows, weighted back to that day's exact count
    before = out[(out["event_time"] < keep_from) & (out["is_fraud"] == 0)]
    real = rows[(rows["event_time"] < keep_from) & (rows["is_fraud"] == 0)].groupby(day_of(rows)).size()
    kept = before.groupby(day_of(before)).size()
    weighted = before.groupby(day_of(before))[WEIGHT_COLUMN].sum()
    np.testing.assert_allclose(weighted.reindex(real.index), real.to_numpy(), rtol=1e-12)
    assert ((kept / real.reindex(kept.index)).between(0.099, 0.101)).all()
    # the later days are whole, unweighted
    after = rows[rows["event_time"] >= keep_from]
    assert set(after["trans_num"]) <= set(out["trans_num"])
    assert (out.loc[out["event_time"] >= keep_from, WEIGHT_COLUMN] == 1).all()
    # and the weighted class counts are the unsampled ones
    np.testing.assert_allclose(class_counts(out), class_counts(rows), rtol=1e-12)


def test_the_sample_depends_on_the_seed_not_on_the_row_order() -> None:
    rows = frame(days=5)
    shuffled = rows.sample(frac=1.0, random_state=9)

    first = sample_legitimate(rows, 0.2, seed=4)
    again = sample_legitimate(shuffled, 0.2, seed=4)
    other = sample_legitimate(rows, 0.2, seed=5)

    assert set(first["trans_num"]) == set(again["trans_num"])
    assert set(first["trans_num"]) != set(other["trans_num"])
    # the kept rows stay in their input order
    assert first.index.is_monotonic_increasing


def test_rate_one_keeps_everything_and_bad_rates_are_refused() -> None:
    rows = frame(days=3)
    out = sample_legitimate(rows, 1.0)
    assert len(out) == len(rows)
    assert (out[WEIGHT_COLUMN] == 1).all()
    for rate in (0.0, 1.5):
        with pytest.raises(ValueError, match="sampling rate"):
            sample_legitimate(rows, rate)


def test_the_class_weight_of_a_sample_is_that_of_the_whole() -> None:
    rows = frame()
    whole = base_params(rows, 1, 0)["scale_pos_weight"]
    sampled = base_params(sample_legitimate(rows, 0.05, seed=2), 1, 0)["scale_pos_weight"]
    assert sampled == pytest.approx(whole, rel=1e-12)


def test_a_weighted_sample_fits_what_the_whole_fits() -> None:
    # given rows whose fraud probability is the same every day (~1 %)
    rows = frame(days=30, per_day=3_000)
    splits = time_splits(rows, SplitConfig(validation_days=5, test_days=5, gap_days=0), 0, warmup_days=0)
    params = {**base_params(splits.train, 1, 0), "max_depth": 3, "learning_rate": 0.2, "scale_pos_weight": 1}
    features = ["signal", "noise"]

    # when one model is fit on every row and one on 10 % of the legitimate rows, weighted
    # (60 rounds each, as the refit of a chosen model: no early stopping in the comparison)
    whole = fit_rounds(splits.train, params, 60, features)
    sample = sample_legitimate(splits.train, 0.1, seed=0)
    weighted = fit_rounds(sample, params, 60, features)
    unweighted = fit_rounds(sample.drop(columns=[WEIGHT_COLUMN]), params, 60, features)

    # then the weighted model's mean probability on the test days is near the whole model's and
    # the real fraud rate (a little above: 10 % of the legitimate rows, ~450 frauds), while the
    # same sample without its weights predicts about 4-5 times the real rate
    import xgboost as xgb

    test = xgb.DMatrix(splits.test[features].to_numpy(), feature_names=features)
    rate = splits.test["is_fraud"].mean()
    p_whole, p_weighted, p_unweighted = (float(b.predict(test).mean()) for b in (whole, weighted, unweighted))
    assert p_weighted == pytest.approx(p_whole, rel=0.5)
    assert p_weighted == pytest.approx(rate, rel=0.5)
    assert p_unweighted > 3 * max(p_weighted, rate)


def write_table(rows: pd.DataFrame, folder: Path) -> None:
    day = pd.to_datetime(rows["event_time"], unit="s", utc=True).dt.strftime("%Y-%m-%d")
    pq.write_to_dataset(pa.Table.from_pandas(rows.assign(dt=day), preserve_index=False), folder, ["dt"])


def test_the_feature_table_is_read_day_by_day_sampled_except_its_last_days(tmp_path: Path) -> None:
    # given a day-partitioned table of 20 days
    rows = frame()
    write_table(rows, tmp_path / "table")

    # when it is read with the last 6 days whole
    table = read_feature_table(str(tmp_path / "table"), 0.1, seed=1, whole_days=6)

    # then its size is reported, the first 14 days are sampled, the last 6 whole, dt is dropped
    assert (table.table_rows, table.table_frauds, table.days) == (len(rows), int(rows["is_fraud"].sum()), 20)
    assert "dt" not in table.rows.columns
    cut = T0 + 14 * spec.DAY
    expected = sample_legitimate(rows, 0.1, seed=1, keep_from=cut)
    assert set(table.rows["trans_num"]) == set(expected["trans_num"])
    np.testing.assert_allclose(class_counts(table.rows), class_counts(rows), rtol=1e-12)


def test_the_pipeline_samples_only_the_training_rows(tmp_path: Path) -> None:
    # given the pipeline's splits of 30 days (as of a cutoff: the refit holds validation days too)
    rows = frame(days=30)
    cfg = load_config(overrides={"sampling": {"legit_rate": 0.2}})
    splits = time_splits(rows, SplitConfig(validation_days=5, test_days=5), spec.DEFAULT_LABEL_DELAY)
    with_refit = type(splits)(
        **{**splits.__dict__, "refit": rows[rows["event_time"] < splits.boundaries["test_start"]]}
    )

    out = sample_splits(cfg, with_refit)

    # then train is sampled, validation and test are the same rows, the refit keeps validation whole
    assert len(out.train) < 0.3 * len(splits.train)
    pd.testing.assert_frame_equal(out.validation, splits.validation)
    pd.testing.assert_frame_equal(out.test, splits.test)
    assert out.refit is not None
    refit_validation = out.refit[out.refit["event_time"] >= splits.boundaries["validation_start"]]
    assert len(refit_validation) == len(splits.validation)
    # a feature table source refuses as-of training (its labels are not those known at a cutoff)
    table = load_config(
        overrides={
            "source": {"kind": "features", "uri": str(tmp_path)},
            "split": {"train_until": "2020-01-20"},
        }
    )
    with pytest.raises(ValueError, match="as-of"):
        read_table(table)
