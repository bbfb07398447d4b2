"""The prequential backtest: card precision top-k by the book, the periods, the report."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fraud_core import spec
from fraudsys_cli import app
from training.backtest import BacktestConfig, card_precision_top_k, run_backtest
from training.data.simulator import SimulatorConfig, run_simulation
from training.dataset import label_events_at_delay

DELAY = 7 * spec.DAY

# day, card, is_fraud, score
EXAMPLE = [
    (0, "A", 1, 0.9),
    (0, "B", 0, 0.8),
    (0, "B", 1, 0.2),  # B's label for the day is its highest: 1
    (0, "C", 1, 0.7),
    (1, "A", 1, 0.95),
    (1, "C", 1, 0.6),
    (1, "D", 0, 0.5),
    (1, "E", 1, 0.4),
    (2, "F", 1, 0.3),
    (2, "C", 1, 0.9),
]


def _cp(remove: bool) -> tuple[float, list[float]]:
    days, cards, y, p = (np.array(column) for column in zip(*EXAMPLE, strict=True))
    return card_precision_top_k(days, cards, y, p.astype(float), k=2, remove_detected=remove)


def test_card_precision_top_k_by_hand() -> None:
    # day 0: cards A .9 (fraud), B .8 (fraud: its max label), C .7 -> top 2 = A, B: 2/2
    # day 1: A and B are known compromised and left out: C .6 (fraud), D .5 -> 1/2
    # day 2: C is known too: only F is left, and the book divides by k: 1/2
    mean, per_day = _cp(remove=True)
    assert per_day == [1.0, 0.5, 0.5]
    assert mean == pytest.approx(2 / 3)
    # keeping detected cards: day 1 top 2 = A .95, C .6: 2/2; day 2 = C .9, F .3: 2/2
    mean, per_day = _cp(remove=False)
    assert per_day == [1.0, 1.0, 1.0]
    assert mean == 1.0


@pytest.fixture(scope="module")
def simulated() -> pd.DataFrame:
    simulation = run_simulation(SimulatorConfig(n_cards=150, n_days=70, seed=2))
    return simulation.transactions.assign(scenario=simulation.scenario.to_numpy())


def test_periods_slide_a_week_after_a_training_window_and_the_delay(simulated: pd.DataFrame) -> None:
    labels = label_events_at_delay(simulated, DELAY)
    cfg = BacktestConfig(periods=3, train_days=21, test_days=7, rounds=20, nthread=1)
    table = run_backtest(simulated, labels, DELAY, cfg)
    assert list(table["period"]) == [1, 2, 3]
    test_start = pd.to_datetime(table["test_start"])
    assert (test_start.diff().dropna() == pd.Timedelta(days=7)).all()
    assert (
        pd.to_datetime(table["test_start"]) - pd.to_datetime(table["train_end"]) == pd.Timedelta(days=7)
    ).all()
    assert (
        pd.to_datetime(table["train_end"]) - pd.to_datetime(table["train_start"]) == pd.Timedelta(days=21)
    ).all()
    # the last test week ends at the last whole day of the data
    last = int(simulated["event_time"].max()) // spec.DAY * spec.DAY
    assert pd.Timestamp(table["test_end"].iloc[-1]) == pd.Timestamp(last, unit="s")
    for name in ("roc_auc", "average_precision", "recall_at_1pct_fpr", "card_precision_at_100"):
        assert table[name].between(0, 1).all(), name
    # per scenario, where the data has scenarios
    assert any(c.startswith("recall_at_1pct_fpr_") and "stolen_card" in c for c in table.columns)
    # training targets are the labels known at the test start: frauds of the delay gap are absent
    t = simulated["event_time"]
    for row in table.to_dict("records"):
        a, b = pd.Timestamp(row["train_start"]).timestamp(), pd.Timestamp(row["train_end"]).timestamp()
        assert row["train_frauds"] == int(simulated.loc[(t >= a) & (t < b), "is_fraud"].sum())


def test_a_late_label_is_not_a_training_target_before_it_arrives(simulated: pd.DataFrame) -> None:
    labels = label_events_at_delay(simulated, DELAY)
    cfg = BacktestConfig(periods=1, train_days=21, test_days=7, rounds=20, nthread=1)
    before = run_backtest(simulated, labels, DELAY, cfg)
    late = labels.assign(label_time=labels["label_time"] + 60 * spec.DAY)  # after every test start
    after = run_backtest(simulated, late, DELAY, cfg)
    assert before["train_frauds"].iloc[0] > 0
    assert after["train_frauds"].iloc[0] == 0


@pytest.mark.slow
def test_the_cli_writes_the_table_the_plot_and_an_mlflow_run(tmp_path: Path) -> None:
    args = [
        "backtest",
        "--set",
        f"data_dir={tmp_path}",
        "--set",
        "source.n_cards=100",
        "--set",
        "source.n_days=60",
    ]
    result = CliRunner().invoke(app, [*args, "--periods", "2", "--train-days", "21", "--rounds", "20"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "backtest" / "backtest.csv")
    assert len(table) == 2
    assert "| period |" in (tmp_path / "backtest" / "backtest.md").read_text()
    assert (tmp_path / "backtest" / "backtest.png").stat().st_size > 1000
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["fraudsys"], filter_string="tags.kind = 'backtest'")
    assert len(runs) == 1
    assert 0 <= runs["metrics.mean_average_precision"].iloc[0] <= 1
