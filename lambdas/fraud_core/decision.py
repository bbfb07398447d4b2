"""Turning a probability and feature contributions into a decision and reasons."""

from collections.abc import Sequence

import numpy as np

from fraud_core.features import F64
from fraud_core.schemas import Reason


def top_reasons(names: Sequence[str], values: F64, contributions: F64, k: int = 3) -> list[Reason]:
    """The ``k`` features that pushed the score up the most (the bias term is not a feature).

    ``contributions`` are XGBoost ``pred_contribs`` for one row: one per feature, then the bias.
    When nothing pushed the score up, the features that held it down the least are given.
    """
    per_feature = contributions[: len(names)]
    order = np.argsort(-per_feature, kind="stable")[:k]
    return [
        Reason(feature=names[i], value=float(values[i]), contribution=round(float(per_feature[i]), 6))
        for i in order
    ]


def is_fraud(probability: float, threshold: float) -> bool:
    return probability >= threshold
