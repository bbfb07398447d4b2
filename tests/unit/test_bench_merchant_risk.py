"""The merchant-risk candidates of ``bench.merchant_risk``: point in time, and the 1-day risk
window computed with the same label rule as the spec's 7d/30d windows."""

import numpy as np
import pandas as pd
import pytest

from bench.merchant_risk import CANDIDATES, candidate_columns, simulate_marked
from fraud_core import spec
from training.data.simulator import SimulatorConfig, run_simulation
from training.dataset import build_features, label_events_at_delay

DELAY = spec.DEFAULT_LABEL_DELAY
pytestmark = pytest.mark.slow  # three simulations and their features: ~30 s idle


@pytest.fixture(scope="module")
def simulated() -> tuple[pd.DataFrame, np.ndarray]:
    return simulate_marked(SimulatorConfig(seed=3, n_cards=120, n_merchants=40, n_days=75))


def _columns(tx: pd.DataFrame) -> pd.DataFrame:
    labels = label_events_at_delay(tx, DELAY)
    rows = build_features(tx, DELAY, labels=labels)
    return candidate_columns(tx, labels, rows, DELAY)


def test_the_marked_simulation_is_the_simulation_and_marks_only_its_compromised_frauds(
    simulated: tuple[pd.DataFrame, np.ndarray],
) -> None:
    tx, followup = simulated
    plain = run_simulation(SimulatorConfig(seed=3, n_cards=120, n_merchants=40, n_days=75)).transactions
    assert tx["trans_num"].equals(plain["trans_num"])
    assert followup.any()
    assert (tx.loc[followup, "scenario"] == "compromised_merchant").all()
    assert (tx["scenario"] == "compromised_merchant").sum() > followup.sum()  # some at the merchant


def test_no_candidate_sees_events_or_labels_after_its_row(simulated: tuple[pd.DataFrame, np.ndarray]) -> None:
    # given the candidates of the whole history and of the history cut at midnight of day 50
    # (transactions from then on removed, so their labels, arriving later still, too)
    tx, _ = simulated
    full = _columns(tx)
    cut = int(tx["event_time"].min()) // spec.DAY * spec.DAY + 50 * spec.DAY
    before = tx["event_time"].to_numpy() < cut
    partial = _columns(tx.loc[before])
    # then every row before the cut has the same candidates either way
    names = [c for group in CANDIDATES.values() for c in group]
    pd.testing.assert_frame_equal(full.loc[before, names], partial[names])
    # and the label-based candidates are not constant (the test would pass on zeros)
    assert full.loc[before, "merch_fraud_cnt_1d"].max() > 0
    assert full.loc[before, "card_max_merchant_fraud_cards_30d"].max() > 0
    assert full.loc[before, "merch_compromised_cards_30d"].max() > 0
    assert full.loc[before, "merch_fraud_arrived_7d"].max() > 0


def test_the_1_day_window_counts_frauds_labelled_before_the_row_like_the_spec_windows(
    simulated: tuple[pd.DataFrame, np.ndarray],
) -> None:
    # the 1-day window is inside the 7-day one: never more transactions or frauds than it
    tx, _ = simulated
    labels = label_events_at_delay(tx, DELAY)
    rows = build_features(tx, DELAY, labels=labels)
    extra = candidate_columns(tx, labels, rows, DELAY)
    assert (extra["merch_fraud_cnt_1d"] <= rows["merch_fraud_cnt_7d"]).all()
    assert (extra["merch_fraud_cnt_1d"] <= extra["merch_cnt_delayed_1d"]).all()
    # and with labels arriving a day later than the delay, no 1-day window sees a fraud yet
    late = labels.assign(label_time=labels["label_time"] + spec.DAY)
    none = candidate_columns(tx, late, build_features(tx, DELAY, labels=late), DELAY)
    assert none["merch_fraud_cnt_1d"].max() == 0
    assert none["merch_cnt_delayed_1d"].equals(extra["merch_cnt_delayed_1d"])


def test_the_arrival_window_counts_a_fraud_from_its_label_arrival_whatever_the_delay(
    simulated: tuple[pd.DataFrame, np.ndarray],
) -> None:
    # given one merchant: a fraud at t0, its label arriving 2 days later (before the 7-day
    # delay), then transactions at t0 + 2d (the label's arrival second) and t0 + 3d
    tx, _ = simulated
    t0 = int(tx["event_time"].min())
    rows = tx.iloc[:3].copy()
    rows["merchant"] = "m"
    rows["trans_num"] = ["fraud", "at_arrival", "after"]
    rows["event_time"] = [t0, t0 + 2 * spec.DAY, t0 + 3 * spec.DAY]
    rows["is_fraud"] = [1, 0, 0]
    rows = rows.reset_index(drop=True)
    label = {"trans_num": "fraud", "merchant": "m", "event_time": t0, "is_fraud": 1}
    labels = pd.DataFrame([{**label, "label_time": t0 + 2 * spec.DAY}])

    def arrived(labels: pd.DataFrame) -> list[float]:
        out = candidate_columns(rows, labels, build_features(rows, DELAY, labels=labels), DELAY)
        return out["merch_fraud_arrived_7d"].tolist()

    # then only the row after the arrival counts it (the delayed windows cannot: it is 3 days old)
    assert arrived(labels) == [0.0, 0.0, 1.0]
    assert build_features(rows, DELAY, labels=labels)["merch_fraud_cnt_7d"].max() == 0
    # and a correction that arrived before that row takes it back
    correction = pd.DataFrame([{**label, "is_fraud": 0, "label_time": t0 + 2 * spec.DAY + 60}])
    assert arrived(pd.concat([labels, correction], ignore_index=True)) == [0.0, 0.0, 0.0]
