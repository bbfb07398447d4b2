"""Simulator: determinism, canonical schema, fraud rate and the shape of each scenario."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
from pydantic import ValidationError

from training.data.kaggle import read_transactions_csv
from training.data.schema import (
    CANONICAL_COLUMNS,
    CANONICAL_DTYPES,
    CATEGORIES,
    ONLINE_CATEGORIES,
    validate_frame,
)
from training.data.simulator import (
    FRAUD_SCENARIOS,
    SCENARIOS,
    Simulation,
    SimulatorConfig,
    kaggle_scale,
    run_simulation,
    simulate,
    simulate_to_csv,
)

SMALL = SimulatorConfig(seed=7, n_cards=120, n_merchants=60, n_days=45)


@pytest.fixture(scope="module")
def demo() -> Simulation:
    return run_simulation(SimulatorConfig())


@pytest.fixture(scope="module")
def small() -> Simulation:
    return run_simulation(SMALL)


def rows_of(simulation: Simulation, scenario: str) -> pd.DataFrame:
    return simulation.transactions[(simulation.scenario == scenario).to_numpy()]


def hours(frame: pd.DataFrame) -> npt.NDArray[np.int64]:
    return (frame["event_time"].to_numpy() % 86_400) // 3_600


def km_from_home(frame: pd.DataFrame) -> npt.NDArray[np.float64]:
    lat1, lon1, lat2, lon2 = (
        np.radians(frame[c].to_numpy()) for c in ("lat", "long", "merch_lat", "merch_long")
    )
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    distance: npt.NDArray[np.float64] = 2 * 6371.0 * np.arcsin(np.sqrt(a))
    return distance


def auc(score: npt.NDArray[np.float64], label: npt.NDArray[np.int8]) -> float:
    """Area under the ROC curve (Mann-Whitney), folded so that 0.5 means no information."""
    ranks = pd.Series(score).rank().to_numpy()
    positives = label == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    value = (ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return float(max(value, 1 - value))


def luhn_ok(number: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char) * (2 if position % 2 else 1)
        total += digit - 9 if digit > 9 else digit
    return total % 10 == 0


def test_same_seed_same_data_other_seed_other_data(small: Simulation) -> None:
    # when
    again = run_simulation(SMALL)
    other = simulate(SMALL.model_copy(update={"seed": 8}))
    # then
    pd.testing.assert_frame_equal(again.transactions, small.transactions)
    pd.testing.assert_series_equal(again.scenario, small.scenario)
    assert not other["trans_num"].isin(small.transactions["trans_num"]).any()
    assert len(other) != len(small.transactions) or not other["amt"].equals(small.transactions["amt"])


def test_frame_is_canonical_and_sorted(small: Simulation) -> None:
    frame = small.transactions
    # then
    assert tuple(frame.columns) == CANONICAL_COLUMNS
    assert {c: str(frame[c].dtype) for c in frame.columns} == dict(CANONICAL_DTYPES)
    pd.testing.assert_frame_equal(validate_frame(frame), frame)
    keys = list(zip(frame["event_time"], frame["trans_num"], strict=True))
    assert keys == sorted(keys)
    start = int(pd.Timestamp(SMALL.start_date.isoformat(), tz="UTC").timestamp())
    assert frame["event_time"].min() >= start
    assert frame["event_time"].max() < start + SMALL.n_days * 86_400


def test_values_look_like_kaggle(small: Simulation) -> None:
    frame = small.transactions
    # then
    assert set(frame["category"]) == set(CATEGORIES)
    assert set(frame["is_fraud"].unique()) == {0, 1}
    assert frame["trans_num"].str.fullmatch(r"[0-9a-f]{32}").all()
    assert frame["trans_num"].is_unique
    assert frame["merchant"].str.startswith("fraud_").all()
    assert frame["gender"].isin(["F", "M"]).all()
    assert frame["amt"].min() >= 1.0
    assert frame["cc_num"].nunique() == SMALL.n_cards
    assert all(luhn_ok(n) for n in frame["cc_num"].unique())
    assert (frame["unix_time"] < frame["event_time"] - 6 * 365 * 86_400).all()  # Kaggle's offset clock
    holder = frame.groupby("cc_num")[
        ["first", "last", "dob", "street", "zip", "lat", "long", "job"]
    ].nunique()
    assert (holder == 1).all().all(), "every card belongs to one cardholder"
    assert frame.groupby("merchant")["category"].nunique().max() == 1


def test_scenario_labels_match_is_fraud(demo: Simulation) -> None:
    fraud = demo.transactions["is_fraud"].to_numpy() == 1
    # then
    assert list(demo.scenario.cat.categories) == list(SCENARIOS)
    assert ((demo.scenario != "legit").to_numpy() == fraud).all()


def test_demo_size_and_fraud_rate(demo: Simulation) -> None:
    summary = demo.summary()
    # then
    assert 100_000 <= summary.rows <= 200_000
    assert 0.003 <= summary.fraud_rate <= 0.01
    assert summary.frauds >= 300
    for scenario in FRAUD_SCENARIOS:
        assert summary.scenario_counts[scenario] >= 50, scenario


def test_every_scenario_happens_even_in_a_tiny_simulation(small: Simulation) -> None:
    counts = small.summary().scenario_counts
    # then
    assert all(counts[s] > 0 for s in FRAUD_SCENARIOS), counts


def test_stolen_card_bursts_are_online_nightly_and_large(demo: Simulation) -> None:
    stolen = rows_of(demo, "stolen_card")
    legit = rows_of(demo, "legit")
    # then
    assert set(stolen["category"]) <= set(ONLINE_CATEGORIES)
    night = np.isin(hours(stolen), [21, 22, 23, 0, 1, 2, 3, 4, 5])
    assert night.mean() > 0.7
    assert np.isin(hours(legit), [0, 1, 2, 3, 4]).mean() < 0.08
    assert stolen["amt"].median() > 5 * legit["amt"].median()
    span = stolen.groupby("cc_num")["event_time"].agg(lambda t: t.max() - t.min())
    assert (stolen.groupby("cc_num").size() >= 2).mean() > 0.9
    assert span.median() < 6 * 3_600


def test_card_testing_probes_small_then_large(demo: Simulation) -> None:
    testing = rows_of(demo, "card_testing")
    # then
    small_amounts = testing[testing["amt"] <= 3.0]
    large = testing[testing["amt"] > 3.0]
    assert len(small_amounts) >= 2 * testing["cc_num"].nunique() * 0.9
    assert large["amt"].median() > 100
    for _, card in testing.groupby("cc_num"):
        first_large = card.loc[card["amt"] > 3.0, "event_time"]
        first_probe = card.loc[card["amt"] <= 3.0, "event_time"]
        if len(first_large) and len(first_probe):
            assert first_probe.min() < first_large.min()


def test_compromised_merchants_concentrate_fraud_then_hit_their_customers(demo: Simulation) -> None:
    frame = demo.transactions
    compromised = rows_of(demo, "compromised_merchant")
    # then: a few merchants carry a large share of their transactions as fraud for a while
    per_merchant = compromised["merchant"].value_counts()
    top = per_merchant.index[0]
    at_top = frame[frame["merchant"] == top]
    during = at_top[
        at_top["event_time"].between(
            compromised.loc[compromised["merchant"] == top, "event_time"].min(),
            compromised.loc[compromised["merchant"] == top, "event_time"].max(),
        )
    ]
    assert 0.1 < during["is_fraud"].mean() < 0.7
    # and customers of compromised merchants see online fraud later, elsewhere
    followups = compromised[compromised["category"].isin(ONLINE_CATEGORIES)]
    assert len(followups) > 0
    assert followups["merchant"].nunique() > 5


def test_geo_jumps_are_far_from_home_in_person_and_soon_after_a_home_purchase(demo: Simulation) -> None:
    frame = demo.transactions
    geo = rows_of(demo, "geo_jump")
    legit = rows_of(demo, "legit")
    # then
    assert not set(geo["category"]) & set(ONLINE_CATEGORIES)
    assert np.quantile(km_from_home(geo), 0.05) > 800
    assert np.quantile(km_from_home(legit), 0.9) < 150
    first = geo.groupby("cc_num")["event_time"].transform("min") == geo["event_time"]
    previous = frame.groupby("cc_num")["event_time"].shift()
    gap = (geo["event_time"] - previous.loc[geo.index])[first.to_numpy()]
    assert gap.median() < 3 * 3_600


def test_legit_rhythms_weekends_and_hours(demo: Simulation) -> None:
    legit = rows_of(demo, "legit")
    weekday = pd.to_datetime(legit["event_time"], unit="s").dt.day_of_week
    entertainment = (legit["category"] == "entertainment").to_numpy()
    # then: more entertainment per weekend day than per weekday
    per_day = pd.Series(weekday[entertainment]).value_counts().sort_index()
    assert per_day[[5, 6]].mean() > 1.2 * per_day[[0, 1, 2, 3]].mean()
    assert np.bincount(hours(legit), minlength=24)[12:20].sum() > 0.4 * len(legit)


def test_no_single_raw_column_gives_fraud_away(demo: Simulation) -> None:
    frame = demo.transactions
    label = frame["is_fraud"].to_numpy()
    # then
    assert auc(frame["amt"].to_numpy(), label) < 0.9
    assert auc(hours(frame).astype(np.float64), label) < 0.8
    assert auc(frame["city_pop"].to_numpy(dtype=np.float64), label) < 0.7
    category_rate = frame.groupby("category")["is_fraud"].transform("mean").to_numpy()
    assert auc(category_rate, label) < 0.9


def test_simulate_to_csv_round_trips(tmp_path: Path, small: Simulation) -> None:
    # when
    summary = simulate_to_csv(SMALL, tmp_path / "sim" / "tx.csv", scenarios_path=tmp_path / "scenarios.csv")
    # then
    pd.testing.assert_frame_equal(read_transactions_csv(tmp_path / "sim" / "tx.csv"), small.transactions)
    assert summary.rows == len(small.transactions)
    assert summary.frauds == int(small.transactions["is_fraud"].sum())
    scenarios = pd.read_csv(tmp_path / "scenarios.csv")
    assert len(scenarios) == summary.frauds
    assert set(scenarios["scenario"]) <= set(FRAUD_SCENARIOS)


def test_config_is_frozen_strict_and_has_a_kaggle_preset() -> None:
    with pytest.raises(ValidationError):
        SimulatorConfig(n_cards=0)
    with pytest.raises(ValidationError):
        SimulatorConfig.model_validate({"n_card": 5})
    with pytest.raises(ValidationError):
        SMALL.seed = 3  # type: ignore[misc]
    preset = kaggle_scale(seed=3)
    assert preset == SimulatorConfig.kaggle_scale(3)
    assert (preset.n_cards, preset.n_merchants, preset.n_days, preset.seed) == (1_000, 700, 731, 3)
    assert preset.start_date == date(2019, 1, 1)
    expected_rows = preset.n_cards * preset.n_days * preset.tx_per_card_day
    assert 1.7e6 < expected_rows < 2.0e6
