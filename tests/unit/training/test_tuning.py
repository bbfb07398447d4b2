"""Tuning with pruning: trials whose per-round validation AUCPR trails the median stop early."""

import optuna
import pandas as pd
import pytest

from fraud_core import spec
from training.config import SplitConfig, TuningConfig
from training.data.simulator import SimulatorConfig, simulate
from training.dataset import build_features
from training.train import PruningCallback, base_params, fit, time_splits, tune


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    rows = build_features(simulate(SimulatorConfig(n_cards=150, n_days=60, seed=5)), spec.DEFAULT_LABEL_DELAY)
    return time_splits(rows, SplitConfig(validation_days=7, test_days=7), spec.DEFAULT_LABEL_DELAY).train


def _states(train: pd.DataFrame, pruner: str) -> tuple[list[optuna.trial.TrialState], float]:
    states: list[optuna.trial.TrialState] = []
    cfg = TuningConfig(n_trials=8, n_folds=2, max_rounds=60, nthread=1, pruner=pruner)
    _, best = tune(
        train, cfg, spec.DEFAULT_LABEL_DELAY, study_callbacks=[lambda _s, t: states.append(t.state)]
    )
    return states, best


def test_the_median_pruner_stops_trials_and_the_best_is_a_complete_one(train: pd.DataFrame) -> None:
    states, best = _states(train, "median")
    pruned = states.count(optuna.trial.TrialState.PRUNED)
    assert len(states) == 8
    assert pruned >= 1
    assert states.count(optuna.trial.TrialState.COMPLETE) == 8 - pruned
    assert 0.0 < best <= 1.0
    # without a pruner every trial runs to its early stop
    unpruned, _ = _states(train, "none")
    assert unpruned == [optuna.trial.TrialState.COMPLETE] * 8


def test_the_callback_reports_every_round_at_its_fold_offset(train: pd.DataFrame) -> None:
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    half = len(train) // 2
    cfg = TuningConfig(max_rounds=15, early_stopping_rounds=50, nthread=1)
    params = {**base_params(train, 1, 1), "max_depth": 3}
    fit(train.iloc[:half], train.iloc[half:], params, cfg, callbacks=[PruningCallback(trial, offset=100)])
    study.tell(trial, 0.5)
    steps = study.trials[0].intermediate_values
    assert sorted(steps) == list(range(100, 115))
    assert all(0.0 <= v <= 1.0 for v in steps.values())


def test_a_trial_is_pruned_when_its_pruner_says_so(train: pd.DataFrame) -> None:
    class Always(optuna.pruners.BasePruner):
        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            return True

    study = optuna.create_study(direction="maximize", pruner=Always())
    trial = study.ask()
    half = len(train) // 2
    params = {**base_params(train, 1, 1), "max_depth": 3}
    with pytest.raises(optuna.TrialPruned):
        fit(
            train.iloc[:half],
            train.iloc[half:],
            params,
            TuningConfig(nthread=1),
            callbacks=[PruningCallback(trial)],
        )
