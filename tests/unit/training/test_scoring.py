"""Batch scoring streamed by day: the same scores as the whole file, bounded memory, date range."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fraud_core import spec
from fraudsys_cli import app
from training.config import TuningConfig
from training.data.kaggle import write_transactions_csv
from training.data.simulator import SimulatorConfig, simulate
from training.dataset import build_features
from training.registry import publish
from training.scoring import SCORE_COLUMNS, Champion, load_champion, score_stream
from training.train import base_params, fit, predict

DELAY = spec.DEFAULT_LABEL_DELAY
DAY0 = 1_546_300_800  # 2019-01-01, the simulator's first day


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return simulate(SimulatorConfig(n_cards=80, n_days=100, seed=9))


@pytest.fixture(scope="module")
def store(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> str:
    rows = build_features(frame, DELAY).sort_values("event_time")
    train, validation = rows.iloc[: len(rows) * 2 // 3], rows.iloc[len(rows) * 2 // 3 :]
    params = {**base_params(train, 1, 1), "max_depth": 4}
    booster, _ = fit(train, validation, params, TuningConfig(max_rounds=40, nthread=1))
    uri = str(tmp_path_factory.mktemp("store"))
    publish(uri, "fraudsys", "3", booster, None, 0.3, DELAY, {}, None, champion=True)
    return uri


def _whole_file(frame: pd.DataFrame, model: Champion) -> pd.Series:
    rows = build_features(frame, DELAY)
    return pd.Series(predict(model.booster, rows, model.feature_names), index=rows["trans_num"].to_numpy())


def _chunks(frame: pd.DataFrame, size: int) -> list[pd.DataFrame]:
    ordered = frame.sort_values(["event_time", "trans_num"]).reset_index(drop=True)
    return [ordered.iloc[i : i + size] for i in range(0, len(ordered), size)]


def test_streamed_scores_equal_whole_file_scores(frame: pd.DataFrame, store: str) -> None:
    model = load_champion(store, "fraudsys")
    expected = _whole_file(frame, model)
    # small chunks that cut days in two, and blocks of 3 days, each with only its history
    parts = list(score_stream(_chunks(frame, 1_700), model, block_days=3))
    assert len(parts) > 10
    scores = pd.concat(parts, ignore_index=True)
    assert tuple(scores.columns) == SCORE_COLUMNS
    assert "is_fraud" not in scores.columns
    assert len(scores) == len(frame)
    assert scores["trans_num"].is_unique
    np.testing.assert_array_equal(
        scores["fraud_probability"].to_numpy(), expected.loc[scores["trans_num"]].to_numpy()
    )
    assert (scores["predicted_fraud"] == (scores["fraud_probability"] >= 0.3)).all()
    assert (scores["model_version"] == "3").all()


def test_a_date_range_scores_only_its_days_with_their_history(frame: pd.DataFrame, store: str) -> None:
    model = load_champion(store, "fraudsys")
    expected = _whole_file(frame, model)
    start, end = DAY0 + 50 * spec.DAY, DAY0 + 64 * spec.DAY
    scores = pd.concat(list(score_stream(_chunks(frame, 5_000), model, start, end, block_days=7)))
    t = frame.set_index("trans_num").loc[scores["trans_num"], "event_time"]
    assert t.min() >= start
    assert t.max() < end
    assert len(scores) == int(((frame["event_time"] >= start) & (frame["event_time"] < end)).sum())
    np.testing.assert_array_equal(
        scores["fraud_probability"].to_numpy(), expected.loc[scores["trans_num"]].to_numpy()
    )


def test_a_row_dated_before_a_scored_day_is_an_error(frame: pd.DataFrame, store: str) -> None:
    model = load_champion(store, "fraudsys")
    chunks = _chunks(frame, 5_000)[:2]
    chunks.append(chunks[0].head(3))
    with pytest.raises(ValueError, match="not ordered by day"):
        list(score_stream(chunks, model, block_days=2))


def test_the_cli_scores_a_csv_between_two_days(frame: pd.DataFrame, store: str, tmp_path: Path) -> None:
    csv = tmp_path / "tx.csv"
    write_transactions_csv(frame, csv)
    out = tmp_path / "scores.csv"
    args = ["score", str(csv), "-o", str(out), "--from", "2019-02-20", "--until", "2019-03-06"]
    result = CliRunner().invoke(app, [*args, "--set", f"model_store_uri={store}"])
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(out)
    assert list(scores.columns) == list(SCORE_COLUMNS)
    start, end = DAY0 + 50 * spec.DAY, DAY0 + 64 * spec.DAY
    assert len(scores) == int(((frame["event_time"] >= start) & (frame["event_time"] < end)).sum())
    assert "by model v3" in result.output


MEASURE = """
import json, sys
from pathlib import Path
from training.scoring import csv_chunks, load_champion, score_stream

def status(key):
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key))
    return int(line.split()[1]) / 1024

model = load_champion(sys.argv[2], "fraudsys")
before = status("VmHWM:")
rows = sum(len(part) for part in score_stream(csv_chunks(Path(sys.argv[1]), 5_000), model))
print(json.dumps({"rows": rows, "rss_before_mb": before, "peak_rss_mb": status("VmHWM:")}))
"""


def measure(csv: Path, store: str) -> dict[str, float]:
    """Peak RSS (VmHWM, MB) of scoring ``csv`` in a fresh process, and its peak before scoring
    (imports and the model). ru_maxrss would not do: Linux carries it over from the forking
    process, here the test runner."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(csv), store], capture_output=True, text=True, check=True
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_file(store: str, tmp_path: Path) -> None:
    # Given two files of the same cards, one four times as long as the other
    sizes: dict[int, dict[str, float]] = {}
    for days in (120, 480):
        csv = tmp_path / f"{days}.csv"
        write_transactions_csv(simulate(SimulatorConfig(n_cards=60, n_days=days, seed=4)), csv)
        sizes[days] = measure(csv, store)
    small, large = sizes[120], sizes[480]
    assert large["rows"] > 3.5 * small["rows"]
    # Then scoring the long one takes about the memory of the short one (the history window and
    # a block, not the file): whole-file scoring (~2 KB a row) would add ~110 MB here
    grown = (large["peak_rss_mb"] - large["rss_before_mb"]) - (small["peak_rss_mb"] - small["rss_before_mb"])
    assert grown < 40, sizes
