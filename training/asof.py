"""As-of training: train on what was known at a cutoff, as the weekly retraining does.

With ``split.train_until = DATE`` the cutoff is ``DATE`` 00:00 UTC, exclusive:

- transactions: only those dated before the cutoff (``history_days`` bounds the start);
- labels: only label events that arrived before the cutoff (the lake's real arrivals; for
  sources without arrival times, a fraud's label arrives ``label_delay`` after it,
  ``training.dataset.label_events_at_delay``); a transaction's target is its latest label known
  at the cutoff, 0 when none had arrived;
- windows, whole UTC days: labels are complete only up to ``labelled_end`` = the cutoff minus
  the label delay (rounded down to midnight), so ``test`` is the ``test_days`` before it,
  ``validation`` the ``validation_days`` before that, and ``train`` ends a gap (``gap_days``,
  default the label delay) before validation. The transactions after ``labelled_end`` are
  still used, as feature history, but never as training or evaluation rows: most of their
  frauds are not labelled yet and would be learnt as legitimate;
- ``refit``: all rows from the train start up to ``labelled_end`` (train + gap + validation +
  test), on which the chosen model is refit with the chosen number of rounds.
"""

from datetime import UTC, date, datetime

import numpy as np
import pandas as pd

from fraud_core import spec
from training.config import SplitConfig
from training.train import Splits, check_split


def day_start(day: date) -> int:
    """00:00 UTC of ``day`` in epoch seconds."""
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def floor_day(t: int) -> int:
    return t // spec.DAY * spec.DAY


def ceil_day(t: int) -> int:
    return -(-t // spec.DAY) * spec.DAY


def read_range(cfg: SplitConfig) -> tuple[int | None, int] | None:
    """The transactions an as-of run needs, ``[start, cutoff)`` in epoch seconds (start None:
    all history); None without ``train_until``."""
    if cfg.train_until is None:
        return None
    cutoff = day_start(cfg.train_until)
    start = cutoff - cfg.history_days * spec.DAY if cfg.history_days is not None else None
    return start, cutoff


def known_at(
    transactions: pd.DataFrame, labels: pd.DataFrame, cutoff: int, start: int | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The transactions dated in ``[start, cutoff)`` with ``is_fraud`` = their latest label that
    arrived before ``cutoff`` (0 if none), and the label events that arrived before it."""
    from training.data.lake import with_targets

    t = transactions["event_time"].to_numpy(dtype=np.int64)
    keep = t < cutoff
    if start is not None:
        keep &= t >= start
    known = labels.loc[labels["label_time"].to_numpy(dtype=np.int64) < cutoff]
    return with_targets(transactions.loc[keep], known, cutoff - 1), known


def asof_splits(
    rows: pd.DataFrame, cfg: SplitConfig, label_delay: int, cutoff: int, warmup_days: int = 7
) -> Splits:
    """The as-of windows (module docstring) of feature rows whose targets are known at ``cutoff``."""
    t = rows["event_time"].to_numpy(dtype=np.int64)
    if len(t) == 0:
        raise ValueError("no transaction before the cutoff")
    labelled_end = floor_day(cutoff - label_delay)
    test_start = labelled_end - cfg.test_days * spec.DAY
    validation_start = test_start - cfg.validation_days * spec.DAY
    gap = cfg.gap_days * spec.DAY if cfg.gap_days is not None else label_delay
    train_end = floor_day(validation_start - gap)
    train_start = ceil_day(int(t.min()) + warmup_days * spec.DAY)

    def window(a: int, b: int) -> pd.DataFrame:
        return rows.loc[(t >= a) & (t < b)]

    parts = Splits(
        train=window(train_start, train_end),
        validation=window(validation_start, test_start),
        test=window(test_start, labelled_end),
        boundaries={
            "train_start": train_start,
            "train_end": train_end,
            "validation_start": validation_start,
            "test_start": test_start,
            "end": labelled_end,
            "cutoff": cutoff,
        },
        refit=window(train_start, labelled_end) if cfg.refit else None,
    )
    for name in ("train", "validation", "test"):
        check_split(name, getattr(parts, name))
    return parts
