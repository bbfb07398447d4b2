"""Model quality: the metrics fraud teams read, and the PNG artifacts."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class Metrics:
    roc_auc: float
    average_precision: float
    recall_at_1pct_fpr: float
    card_precision_at_100: float
    threshold: float
    precision_at_threshold: float
    recall_at_threshold: float
    n: int
    n_fraud: int

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in self.__dict__.items()}


def recall_at_fpr(y: NDArray[np.int_], p: F64, max_fpr: float = 0.01) -> float:
    fpr, tpr, _ = roc_curve(y, p)
    ok = fpr <= max_fpr
    return float(tpr[ok].max()) if ok.any() else 0.0


def card_precision_at_k(frame: pd.DataFrame, p: F64, k: int = 100) -> float:
    """Mean over days of the share of true fraud cards among the k cards with the highest score
    that day (a card's score for a day is its highest transaction score that day)."""
    days = frame["event_time"].to_numpy() // 86_400
    per_card = (
        pd.DataFrame(
            {"day": days, "card": frame["cc_num"].to_numpy(), "p": p, "y": frame["is_fraud"].to_numpy()}
        )
        .groupby(["day", "card"], sort=False)
        .agg(p=("p", "max"), y=("y", "max"))
        .reset_index()
    )
    top = per_card.sort_values(["day", "p"], ascending=[True, False]).groupby("day").head(k)
    by_day = top.groupby("day")["y"].agg(["sum", "size"])
    return float((by_day["sum"] / np.minimum(k, by_day["size"])).mean()) if len(by_day) else 0.0


def choose_threshold(
    y: NDArray[np.int_], p: F64, strategy: str = "max_f1", target_fpr: float = 0.01
) -> float:
    """The decision threshold, chosen on validation data."""
    if strategy == "target_fpr":
        negatives = np.sort(p[y == 0])
        if len(negatives) == 0:
            return 0.5
        return float(negatives[min(len(negatives) - 1, int(np.ceil((1 - target_fpr) * len(negatives))))])
    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))]) if len(thresholds) else 0.5


def evaluate(frame: pd.DataFrame, p: F64, threshold: float) -> Metrics:
    y = frame["is_fraud"].to_numpy().astype(int)
    both_classes = 0 < y.sum() < len(y)
    decided = p >= threshold
    tp = int((decided & (y == 1)).sum())
    return Metrics(
        roc_auc=float(roc_auc_score(y, p)) if both_classes else float("nan"),
        average_precision=float(average_precision_score(y, p)) if both_classes else float("nan"),
        recall_at_1pct_fpr=recall_at_fpr(y, p) if both_classes else float("nan"),
        card_precision_at_100=card_precision_at_k(frame, p),
        threshold=threshold,
        precision_at_threshold=tp / max(int(decided.sum()), 1),
        recall_at_threshold=tp / max(int(y.sum()), 1),
        n=len(y),
        n_fraud=int(y.sum()),
    )


def save_plots(
    y: NDArray[np.int_], p: F64, importance: dict[str, float], threshold: float, out: Path
) -> list[Path]:
    """PR curve and feature importance PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    precision, recall, thresholds = precision_recall_curve(y, p)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(recall, precision, label=f"AP = {average_precision_score(y, p):.3f}")
    idx = int(np.searchsorted(thresholds, threshold)) if len(thresholds) else 0
    ax.scatter(
        [recall[min(idx, len(recall) - 1)]],
        [precision[min(idx, len(precision) - 1)]],
        color="red",
        label=f"threshold {threshold:.3f}",
        zorder=3,
    )
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (test)", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower left")
    pr_path = out / "pr_curve.png"
    fig.tight_layout()
    fig.savefig(pr_path, dpi=110)
    plt.close(fig)

    top = sorted(importance.items(), key=lambda kv: kv[1], reverse=True)[:20]
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.barh([k for k, _ in reversed(top)], [v for _, v in reversed(top)])
    ax.set(xlabel="total gain", title="Feature importance (top 20)")
    fi_path = out / "feature_importance.png"
    fig.tight_layout()
    fig.savefig(fi_path, dpi=110)
    plt.close(fig)
    return [pr_path, fi_path]
