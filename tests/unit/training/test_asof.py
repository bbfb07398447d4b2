"""As-of training: only what was known before the cutoff reaches training; the refit."""

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraud_core import spec
from training.asof import day_start
from training.config import PipelineConfig, SplitConfig, TuningConfig
from training.data.simulator import SimulatorConfig, simulate
from training.dataset import build_features, label_events_at_delay
from training.pipeline import SourceData, as_of, make_splits, train_candidate
from training.registry import Candidate
from training.train import Splits

CUTOFF_DAY = date(2019, 3, 5)  # the simulation starts 2019-01-01 and runs 70 days
CUTOFF = day_start(CUTOFF_DAY)
DELAY = 7 * spec.DAY
CFG = PipelineConfig(
    label_delay_seconds=DELAY,
    split=SplitConfig(validation_days=7, test_days=7, train_until=CUTOFF_DAY),
    tuning=TuningConfig(n_trials=1, n_folds=2, max_rounds=30, early_stopping_rounds=10, nthread=1),
)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return simulate(SimulatorConfig(n_cards=120, n_days=70, seed=3))


def _run(data: SourceData, tmp: Path) -> tuple[Candidate, Splits, SourceData]:
    known = as_of(CFG, data)
    rows = build_features(known.transactions, DELAY, labels=known.labels)
    splits = make_splits(CFG, rows)
    return train_candidate(CFG, splits, tmp), splits, known


def _late_chargeback(frame: pd.DataFrame, arrival: int) -> tuple[SourceData, str]:
    """The data with one legitimate transaction of the training window turned into a fraud
    whose label arrives at ``arrival`` (a chargeback later than the usual delay)."""
    t = frame["event_time"].to_numpy()
    candidates = frame.loc[
        (frame["is_fraud"] == 0) & (t >= CUTOFF - 40 * spec.DAY) & (t < CUTOFF - 30 * spec.DAY)
    ]
    victim = candidates.iloc[len(candidates) // 2]
    changed = frame.copy()
    changed.loc[changed["trans_num"] == victim["trans_num"], "is_fraud"] = np.int8(1)
    labels = label_events_at_delay(frame, DELAY)
    late = pd.DataFrame(
        {
            "trans_num": [victim["trans_num"]],
            "merchant": [victim["merchant"]],
            "event_time": [int(victim["event_time"])],
            "label_time": [arrival],
            "is_fraud": np.array([1], dtype=np.int8),
        }
    )
    return SourceData(changed, pd.concat([labels, late], ignore_index=True)), str(victim["trans_num"])


def _dump(candidate: Candidate) -> str:
    return "\n".join(candidate.booster.get_dump(dump_format="json"))


def test_no_label_or_transaction_from_the_cutoff_on_reaches_training(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    # Given the full history, with transactions after the cutoff and one chargeback that
    # arrives a day after the cutoff for a transaction 30-40 days before it
    late, victim = _late_chargeback(frame, CUTOFF + spec.DAY)
    # and the same history cut by hand: nothing dated or arriving on or after the cutoff
    t = frame["event_time"].to_numpy()
    cut_labels = late.labels.loc[late.labels["label_time"] < CUTOFF]
    by_hand = SourceData(frame.loc[t < CUTOFF], cut_labels)
    # and the same history where that chargeback had arrived a day before the cutoff
    leaked, _ = _late_chargeback(frame, CUTOFF - spec.DAY)

    with_future, splits, known = _run(late, tmp_path / "a")
    without_future, _, _ = _run(by_hand, tmp_path / "b")
    with_leak, leak_splits, _ = _run(leaked, tmp_path / "c")

    # Then the as-of model is exactly the one trained on the history cut by hand
    assert _dump(with_future) == _dump(without_future)
    assert with_future.threshold == without_future.threshold
    assert with_future.metrics == without_future.metrics
    # while knowing that one label would have changed it: the data set can detect a leak
    assert _dump(with_leak) != _dump(with_future)
    assert splits.refit is not None
    assert leak_splits.refit is not None
    in_refit = splits.refit["trans_num"] == victim
    assert in_refit.sum() == 1
    assert int(splits.refit.loc[in_refit, "is_fraud"].iloc[0]) == 0
    assert int(leak_splits.refit.loc[leak_splits.refit["trans_num"] == victim, "is_fraud"].iloc[0]) == 1

    # And no training or evaluation row is dated on or after the cutoff minus the delay, and
    # every fraud they learn from has a label that arrived before the cutoff
    arrived = set(known.labels.loc[known.labels["label_time"] < CUTOFF, "trans_num"])
    assert (known.labels["label_time"] < CUTOFF).all()
    for part in (splits.train, splits.validation, splits.test, splits.refit):
        assert int(part["event_time"].max()) < CUTOFF - DELAY
        assert set(part.loc[part["is_fraud"] == 1, "trans_num"]) <= arrived


def test_windows_are_whole_utc_days_ending_at_the_cutoff_minus_the_delay(frame: pd.DataFrame) -> None:
    known = as_of(CFG, SourceData(frame, label_events_at_delay(frame, DELAY)))
    rows = build_features(known.transactions, DELAY, labels=known.labels)
    splits = make_splits(CFG, rows)
    b = splits.boundaries
    assert all(value % spec.DAY == 0 for value in b.values())
    assert b["cutoff"] == CUTOFF
    assert b["end"] == CUTOFF - DELAY
    assert b["test_start"] == b["end"] - 7 * spec.DAY
    assert b["validation_start"] == b["test_start"] - 7 * spec.DAY
    assert b["train_end"] == b["validation_start"] - DELAY  # the gap is the label delay
    # the refit set is every labelled row from the train start on: train, gap, validation, test
    assert splits.refit is not None
    assert len(splits.refit) == int(
        ((rows["event_time"] >= b["train_start"]) & (rows["event_time"] < b["end"])).sum()
    )
    assert len(splits.refit) > len(splits.train) + len(splits.validation) + len(splits.test)
    # frauds of the last `delay` days before the cutoff are not labelled yet, and not used
    last = (known.transactions["event_time"] >= b["end"]).to_numpy()
    assert int(known.transactions.loc[last, "is_fraud"].sum()) == 0
    assert (
        int(frame.loc[(frame["event_time"] >= b["end"]) & (frame["event_time"] < CUTOFF), "is_fraud"].sum())
        > 0
    )


def test_the_refit_keeps_the_chosen_rounds_and_threshold_and_learns_the_newest_days(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    from training.train import fit

    data = SourceData(frame, label_events_at_delay(frame, DELAY))
    candidate, splits, _ = _run(data, tmp_path)
    assert splits.refit is not None
    holdout, _ = fit(splits.train, splits.validation, candidate.params, CFG.tuning)
    # the published booster has the rounds chosen by early stopping on validation
    assert candidate.booster.num_boosted_rounds() == holdout.num_boosted_rounds()
    assert candidate.metrics["refit_rounds"] == holdout.num_boosted_rounds()
    assert candidate.metrics["refit_rows"] == len(splits.refit)
    # but it is another model: refit on every labelled day up to the cutoff - the delay
    assert candidate.booster.get_dump() != holdout.get_dump()
    assert candidate.tags["fit_until"] == str(CUTOFF - DELAY)
    # the test metrics are those of the model before its refit, on days it never saw
    from training.evaluate import evaluate
    from training.train import predict

    p = predict(holdout, splits.test)
    assert candidate.metrics["test_average_precision"] == pytest.approx(
        evaluate(splits.test, p, candidate.threshold).average_precision
    )


def test_without_a_cutoff_nothing_changes(frame: pd.DataFrame) -> None:
    cfg = CFG.model_copy(update={"split": SplitConfig(validation_days=7, test_days=7)})
    data = SourceData(frame, label_events_at_delay(frame, DELAY))
    assert as_of(cfg, data) is data
    rows = build_features(frame, DELAY)
    splits = make_splits(cfg, rows)
    assert splits.refit is None
    assert splits.boundaries["end"] == int(frame["event_time"].max()) + 1


def test_the_parquet_source_opens_only_the_months_before_the_cutoff(
    frame: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    from training.data.kaggle import ingest_csv_to_parquet, write_transactions_csv
    from training.pipeline import load_source

    csv = tmp_path / "tx.csv"
    write_transactions_csv(frame, csv)
    ingest_csv_to_parquet(csv, tmp_path / "parquet")  # 2019-01 .. 2019-03
    opened: list[str] = []
    read_table = pq.read_table

    def spy(path: Path, **kwargs: object) -> object:
        opened.append(Path(path).parent.name)
        return read_table(path, **kwargs)

    monkeypatch.setattr(pq, "read_table", spy)
    cfg = PipelineConfig.model_validate(
        {
            "source": {"kind": "parquet", "path": tmp_path / "parquet"},
            "split": {"train_until": "2019-02-01", "history_days": 20},
        }
    )
    data = load_source(cfg)
    assert set(opened) == {"month=2019-01"}
    t = data.transactions["event_time"]
    assert int(t.min()) >= day_start(date(2019, 1, 12))
    assert int(t.max()) < day_start(date(2019, 2, 1))
    expected = frame.loc[
        (frame["event_time"] >= t.min()) & (frame["event_time"] < day_start(date(2019, 2, 1)))
    ]
    assert len(data.transactions) == len(expected)
