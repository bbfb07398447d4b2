"""XGBoost training: time-ordered splits, tuning on time-series folds, early stopping."""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xgboost as xgb
from numpy.typing import NDArray

from fraud_core import spec
from training.config import SplitConfig, TuningConfig
from training.sampling import row_weights

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class Splits:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    boundaries: dict[str, int]  # epoch seconds: train_end, validation_start, test_start, end
    #: as-of runs: every labelled row up to ``end`` the published model is refit on (training.asof)
    refit: pd.DataFrame | None = None


def check_split(name: str, part: pd.DataFrame) -> None:
    if len(part) == 0 or part["is_fraud"].nunique() < 2:
        raise ValueError(
            f"the {name} split has {len(part)} rows and {int(part['is_fraud'].sum()) if len(part) else 0} "
            "frauds: it needs both classes; use more data or change split.validation_days/test_days"
        )


def time_splits(rows: pd.DataFrame, cfg: SplitConfig, label_delay: int, warmup_days: int = 7) -> Splits:
    """train | gap (labels not yet arrived) | validation | test, by event time."""
    t = rows["event_time"]
    start, end = int(t.min()), int(t.max()) + 1
    test_start = end - cfg.test_days * spec.DAY
    validation_start = test_start - cfg.validation_days * spec.DAY
    gap = cfg.gap_days * spec.DAY if cfg.gap_days is not None else label_delay
    train_end = validation_start - gap
    train_start = start + warmup_days * spec.DAY
    parts = Splits(
        train=rows[(t >= train_start) & (t < train_end)],
        validation=rows[(t >= validation_start) & (t < test_start)],
        test=rows[t >= test_start],
        boundaries={
            "train_start": train_start,
            "train_end": train_end,
            "validation_start": validation_start,
            "test_start": test_start,
            "end": end,
        },
    )
    for name in ("train", "validation", "test"):
        check_split(name, getattr(parts, name))
    return parts


def matrix(rows: pd.DataFrame, features: Sequence[str], with_label: bool = True) -> xgb.DMatrix:
    """The rows' features (and labels); sampled rows (``training.sampling``) carry their weights,
    which the loss and the evaluation metric (early stopping) then use."""
    label = rows["is_fraud"].to_numpy() if with_label else None
    return xgb.DMatrix(
        rows[list(features)].to_numpy(dtype=np.float64),
        label=label,
        weight=row_weights(rows),
        feature_names=list(features),
    )


def class_counts(rows: pd.DataFrame) -> tuple[float, float]:
    """(legitimate, fraud) counts of the rows, weighted when they were sampled: the unsampled
    table's counts, which the class weight is computed from."""
    y = rows["is_fraud"].to_numpy() != 0
    weights = row_weights(rows)
    if weights is None:
        return float(len(rows) - y.sum()), float(y.sum())
    return float(weights[~y].sum()), float(weights[y].sum())


def base_params(train: pd.DataFrame, nthread: int, seed: int) -> dict[str, Any]:
    legitimate, frauds = class_counts(train)
    positives = max(frauds, 1.0)
    return {
        "objective": "binary:logistic",
        "eval_metric": "aucpr",
        "tree_method": "hist",
        "nthread": nthread,
        "seed": seed,
        # Imbalance: weight frauds by the square root of the class ratio (full ratio over-calibrates).
        "scale_pos_weight": float(np.sqrt(legitimate / positives)),
    }


class PruningCallback(xgb.callback.TrainingCallback):
    """Reports each round's validation metric to an Optuna trial (step ``offset + round``) and
    stops the trial when its pruner says so: what ``optuna_integration.XGBoostPruningCallback``
    does, without that extra package."""

    def __init__(self, trial: "optuna.Trial", offset: int = 0, metric: str = "aucpr") -> None:
        self.trial, self.offset, self.metric = trial, offset, metric

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict[str, Any]) -> bool:
        import optuna

        score = float(evals_log["validation"][self.metric][-1])
        self.trial.report(score, self.offset + epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"round {epoch}: validation {self.metric} {score:.4f}")
        return False


def fit(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    params: dict[str, Any],
    cfg: TuningConfig,
    features: Sequence[str] = spec.FEATURE_NAMES,
    callbacks: Sequence[xgb.callback.TrainingCallback] = (),
) -> tuple[xgb.Booster, float]:
    """Train with early stopping on ``validation``; returns the booster cut at its best round."""
    dtrain, dvalid = matrix(train, features), matrix(validation, features)
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=cfg.max_rounds,
        evals=[(dvalid, "validation")],
        early_stopping_rounds=cfg.early_stopping_rounds,
        verbose_eval=False,
        callbacks=list(callbacks) or None,
    )
    best = int(booster.best_iteration)
    score = float(booster.best_score)
    return booster[: best + 1], score


def fit_rounds(
    train: pd.DataFrame, params: dict[str, Any], rounds: int, features: Sequence[str] = spec.FEATURE_NAMES
) -> xgb.Booster:
    """Train exactly ``rounds`` rounds, no early stopping (the refit of a chosen model)."""
    return xgb.train(params, matrix(train, features), num_boost_round=rounds, verbose_eval=False)


def time_folds(train: pd.DataFrame, n_folds: int, gap: int) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """Expanding-window folds by time; each validation chunk starts ``gap`` after its training data."""
    t = train["event_time"]
    edges = np.linspace(int(t.min()), int(t.max()) + 1, n_folds + 2).astype(np.int64)
    folds = []
    for k in range(1, n_folds + 1):
        fit_part = train[t < edges[k] - gap]
        valid_part = train[(t >= edges[k]) & (t < edges[k + 1])]
        if fit_part["is_fraud"].nunique() == 2 and valid_part["is_fraud"].nunique() == 2:
            folds.append((fit_part, valid_part))
    return folds


def tune(
    train: pd.DataFrame,
    cfg: TuningConfig,
    gap: int,
    on_trial: Callable[[int, float], None] | None = None,
    study_callbacks: Sequence[Callable[["optuna.Study", "optuna.trial.FrozenTrial"], None]] = (),
) -> tuple[dict[str, Any], float]:
    """Optuna TPE search over time-series folds of the training split; mean validation AUCPR."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folds = time_folds(train, cfg.n_folds, gap)
    if not folds:
        folds = time_folds(train, cfg.n_folds, 0)
    if not folds:
        raise ValueError("no time-series fold of the training split has both classes")
    base = base_params(train, cfg.nthread, cfg.seed)

    def objective(trial: "optuna.Trial") -> float:
        params = {
            **base,
            "max_depth": trial.suggest_int("max_depth", 3, 8),
            "learning_rate": trial.suggest_float("learning_rate", 0.03, 0.3, log=True),
            "min_child_weight": trial.suggest_float("min_child_weight", 1.0, 20.0, log=True),
            "subsample": trial.suggest_float("subsample", 0.6, 1.0),
            "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
            "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 10.0, log=True),
            "gamma": trial.suggest_float("gamma", 0.0, 5.0),
        }
        scores = []
        for k, (a, b) in enumerate(folds):
            # fold k reports rounds k * max_rounds + r: trials are compared fold by fold, round by round
            prune = [PruningCallback(trial, k * cfg.max_rounds)] if cfg.pruner != "none" else []
            scores.append(fit(a, b, params, cfg, callbacks=prune)[1])
        score = float(np.mean(scores))
        if on_trial is not None:
            on_trial(trial.number, score)
        return score

    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=cfg.seed), pruner=pruner(cfg)
    )
    study.optimize(objective, n_trials=cfg.n_trials, callbacks=list(study_callbacks))
    return {**base, **study.best_params}, float(study.best_value)


def pruner(cfg: TuningConfig) -> "optuna.pruners.BasePruner":
    """The configured pruner; a pruned trial counts as a trial but never as the best one."""
    import optuna

    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=cfg.pruner_warmup_rounds)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(cfg.pruner_warmup_rounds, 1), max_resource=cfg.max_rounds
        )
    return optuna.pruners.NopPruner()


def predict(booster: xgb.Booster, rows: pd.DataFrame, features: Sequence[str] = spec.FEATURE_NAMES) -> F64:
    values = rows[list(features)].to_numpy(dtype=np.float64)
    return np.asarray(booster.inplace_predict(values), dtype=np.float64)


def importance(booster: xgb.Booster) -> dict[str, float]:
    scores = booster.get_score(importance_type="total_gain")
    return {k: float(v) if not isinstance(v, list) else float(sum(v)) for k, v in scores.items()}
