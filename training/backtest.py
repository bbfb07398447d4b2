"""Prequential backtest (the Fraud Detection Handbook's protocol): train on a window, skip the
label delay, test a week, slide a week, repeat.

For period ``i`` (test start ``s_i``, whole UTC days): the model is trained on the
transactions of ``[s_i - delay - train_days, s_i - delay)`` with the labels known at ``s_i``
(label events that arrived before it), then scores ``[s_i, s_i + test_days)``, evaluated
against the eventual labels. Features are the point-in-time features of the whole history
(each row sees only labels that arrived before it). Hyperparameters are fixed for every period
(``BacktestConfig``), so the periods measure the data, not the tuner.

Per period: AUC, average precision, recall at 1% FPR, card precision top-k (``card_precision_top_k``)
and, where the frame has a ``scenario`` column, the recall at 1% FPR of each fraud scenario.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.metrics import average_precision_score, roc_auc_score

from fraud_core import spec
from training.asof import floor_day
from training.dataset import build_features
from training.evaluate import recall_at_fpr
from training.train import base_params, fit_rounds, predict

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class BacktestConfig:
    periods: int = 4
    train_days: int = 56
    test_days: int = 7
    top_k: int = 100
    remove_detected_cards: bool = True
    rounds: int = 150
    params: dict[str, Any] = field(
        default_factory=lambda: {
            "max_depth": 6,
            "learning_rate": 0.1,
            "subsample": 0.8,
            "colsample_bytree": 0.8,
            "min_child_weight": 2.0,
        }
    )
    nthread: int = 2
    seed: int = 7


def card_precision_top_k(
    days: NDArray[np.int64],
    cards: NDArray[Any],
    y: NDArray[np.int_],
    p: F64,
    k: int = 100,
    remove_detected: bool = True,
) -> tuple[float, list[float]]:
    """Card precision top-k as the Fraud Detection Handbook defines it: per day, each card's
    score is its highest transaction score and its label its highest label; the precision is
    the number of fraudulent cards among the day's ``k`` best scored cards, divided by ``k``.
    With ``remove_detected``, a fraudulent card found in a day's top k is known compromised and
    left out of the following days. Returns (mean over days, per-day values in day order)."""
    frame = pd.DataFrame({"day": days, "card": cards, "y": y, "p": p})
    detected: set[Any] = set()
    per_day: list[float] = []
    for _, day in frame.groupby("day", sort=True):
        today = day.loc[~day["card"].isin(detected)] if detected else day
        by_card = today.groupby("card", sort=False).agg(p=("p", "max"), y=("y", "max"))
        top = by_card.sort_values("p", ascending=False, kind="stable").head(k)
        found = top.index[top["y"].to_numpy() == 1]
        per_day.append(len(found) / k)
        if remove_detected:
            detected.update(found)
    return (float(np.mean(per_day)) if per_day else float("nan")), per_day


def _target_known_at(transactions: pd.DataFrame, labels: pd.DataFrame, at: int) -> NDArray[np.int8]:
    from training.data.lake import latest_labels

    latest = latest_labels(labels, at - 1)
    return transactions["trans_num"].map(latest).fillna(0).to_numpy(dtype=np.int8)


def run_backtest(
    transactions: pd.DataFrame,
    labels: pd.DataFrame,
    label_delay: int,
    cfg: BacktestConfig,
    on_period: Callable[[dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """One row per period (module docstring); ``transactions`` carry the eventual ``is_fraud``
    (and optionally ``scenario``), ``labels`` the label events with their arrival."""
    rows = build_features(transactions, label_delay, labels=labels)
    t = rows["event_time"].to_numpy(dtype=np.int64)
    end = floor_day(int(t.max()) + 1)
    step = cfg.test_days * spec.DAY
    first = end - cfg.periods * step
    if first - label_delay - cfg.train_days * spec.DAY < floor_day(int(t.min())):
        raise ValueError(
            f"{cfg.periods} periods of {cfg.test_days} test days after {cfg.train_days} training days and "
            "the label delay need more history than the data holds"
        )
    scenario = transactions["scenario"].to_numpy() if "scenario" in transactions else None
    results = []
    for i in range(cfg.periods):
        test_start = first + i * step
        train_end = floor_day(test_start - label_delay)
        in_train = (t >= train_end - cfg.train_days * spec.DAY) & (t < train_end)
        in_test = (t >= test_start) & (t < test_start + step)
        train = rows.loc[in_train].assign(
            is_fraud=_target_known_at(transactions.loc[in_train], labels, test_start)
        )
        params = {**base_params(train, cfg.nthread, cfg.seed), **cfg.params}
        booster = fit_rounds(train, params, cfg.rounds)
        test = rows.loc[in_test]
        p = predict(booster, test)
        y = test["is_fraud"].to_numpy().astype(int)
        both = 0 < y.sum() < len(y)
        cp, _ = card_precision_top_k(
            t[in_test] // spec.DAY,
            test["cc_num"].to_numpy(),
            y,
            p,
            cfg.top_k,
            cfg.remove_detected_cards,
        )
        result: dict[str, Any] = {
            "period": i + 1,
            "train_start": _day(train_end - cfg.train_days * spec.DAY),
            "train_end": _day(train_end),
            "test_start": _day(test_start),
            "test_end": _day(test_start + step),
            "train_rows": int(in_train.sum()),
            "train_frauds": int(train["is_fraud"].sum()),
            "test_rows": len(test),
            "test_frauds": int(y.sum()),
            "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
            "average_precision": float(average_precision_score(y, p)) if both else float("nan"),
            "recall_at_1pct_fpr": recall_at_fpr(y, p) if both else float("nan"),
            f"card_precision_at_{cfg.top_k}": cp,
        }
        if scenario is not None:
            result |= _per_scenario(scenario[in_test], y, p)
        results.append(result)
        if on_period is not None:
            on_period(result)
    return pd.DataFrame(results)


def _per_scenario(scenario: NDArray[Any], y: NDArray[np.int_], p: F64) -> dict[str, float]:
    """Recall at 1% FPR of each fraud scenario (its frauds against every legitimate row)."""
    legit = p[y == 0]
    if len(legit) == 0:
        return {}
    threshold = float(np.quantile(legit, 0.99, method="higher"))
    out = {}
    for name in sorted({str(s) for s in scenario[y == 1]}):
        mine = (y == 1) & (scenario.astype(str) == name)
        out[f"recall_at_1pct_fpr_{name}"] = float((p[mine] > threshold).mean())
        out[f"frauds_{name}"] = float(mine.sum())
    return out


def _day(t: int) -> str:
    return str(np.datetime64(t, "s").astype("datetime64[D]"))


def write_report(table: pd.DataFrame, out: Path, top_k: int = 100) -> list[Path]:
    """The per-period table as CSV and markdown, and a plot of the metrics by period."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    csv, md, png = out / "backtest.csv", out / "backtest.md", out / "backtest.png"
    table.to_csv(csv, index=False)
    md.write_text(_markdown(table) + "\n")
    metrics = ["roc_auc", "average_precision", "recall_at_1pct_fpr", f"card_precision_at_{top_k}"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in metrics:
        ax.plot(table["test_start"], table[name], marker="o", label=name)
    ax.set(xlabel="test week (start)", ylabel="metric", ylim=(0, 1.02), title="Prequential backtest")
    ax.legend(loc="lower left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return [csv, md, png]


def _markdown(table: pd.DataFrame) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float) and value.is_integer():
            return str(int(value))  # counts (float where a scenario has no row in a period)
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def log_to_mlflow(
    table: pd.DataFrame, artifacts: list[Path], tracking_uri: str, experiment: str, tags: dict[str, str]
) -> str:
    """One MLflow run: each metric by period (step = period), the means, the report files."""
    import mlflow

    from training.registry import Registry

    Registry(tracking_uri, experiment, model_name="unused")  # sets the tracking URI and experiment
    numeric = [c for c in table.columns if c != "period" and pd.api.types.is_float_dtype(table[c])]
    with mlflow.start_run(run_name="backtest") as run:
        mlflow.set_tags({"kind": "backtest", **tags})
        for _, row in table.iterrows():
            mlflow.log_metrics(
                {c: float(row[c]) for c in numeric if np.isfinite(row[c])}, step=int(row["period"])
            )
        means = table[numeric].mean()
        mlflow.log_metrics({f"mean_{c}": float(v) for c, v in means.items() if np.isfinite(v)})
        for path in artifacts:
            mlflow.log_artifact(str(path))
    return str(run.info.run_id)
