"""The `fraudsys` command line: the pipeline end to end on tiny data, and bad input."""

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fraud_adapters.blobs import LocalBlobStore
from fraud_adapters.model_store import ModelStore
from fraudsys_cli import app
from tests.support.cli import tiny_training_args
from training.config import DEFAULT_CONFIG, load_config
from training.registry import Registry

runner = CliRunner()
TINY = tiny_training_args(max_rounds=30)


@pytest.mark.slow
def test_pipeline_then_score_end_to_end(tmp_path: Path) -> None:
    # Given the default config on a tiny simulated data set
    result = runner.invoke(app, ["pipeline", "--set", f"data_dir={tmp_path}", *TINY])
    assert result.exit_code == 0, result.output
    # Then the champion's metrics are printed, logged as JSON, and the model is published
    assert "average_precision" in result.output
    assert "champion" in result.output
    report = json.loads(next((tmp_path / "reports").glob("metrics-v*.json")).read_text())
    assert report["promoted"] is True
    assert 0.0 <= report["metrics"]["test_roc_auc"] <= 1.0
    assert (tmp_path / "reports" / "pr_curve.png").stat().st_size > 1000
    store = ModelStore(LocalBlobStore(tmp_path / "model_store"))
    assert store.champion_version() == report["version"]

    # A second run registers version 2 and moves the alias only if it is better
    second = runner.invoke(
        app, ["pipeline", "--set", f"data_dir={tmp_path}", *TINY, "--set", "source.seed=7"]
    )
    assert second.exit_code == 0, second.output
    assert "version 2" in second.output

    # And `fraudsys promote` makes any registered version the champion, in the store too
    for version in ("2", report["version"]):
        promoted = runner.invoke(app, ["promote", version, "--set", f"data_dir={tmp_path}"])
        assert promoted.exit_code == 0, promoted.output
        assert store.champion_version() == version

    # And batch scoring writes one row per transaction with the champion's decisions
    csv = tmp_path / "sim.csv"
    assert (
        runner.invoke(app, ["simulate", "-o", str(csv), "--n-cards", "30", "--n-days", "20"]).exit_code == 0
    )
    out = tmp_path / "scores.csv"
    scored = runner.invoke(app, ["score", str(csv), "-o", str(out), "--set", f"data_dir={tmp_path}"])
    assert scored.exit_code == 0, scored.output
    scores = pd.read_csv(out)
    assert list(scores.columns) == ["trans_num", "predicted_fraud", "fraud_probability", "model_version"]
    assert len(scores) == len(pd.read_csv(csv))
    assert scores["fraud_probability"].between(0, 1).all()
    assert set(scores["model_version"].astype(str)) == {report["version"]}


@pytest.mark.slow
def test_a_rerun_republishes_the_registry_champion_to_an_empty_model_store(tmp_path: Path) -> None:
    # Given a champion in the MLflow registry and in the model store
    first = runner.invoke(app, ["pipeline", "--set", f"data_dir={tmp_path}", *TINY])
    assert first.exit_code == 0, first.output
    champion = json.loads(next((tmp_path / "reports").glob("metrics-v*.json")).read_text())["version"]

    # When the same job runs against a new, empty model store (a fresh bucket, the demo's
    # in-memory S3) and its candidate does not beat the champion (same data, same seed)
    fresh = tmp_path / "fresh_store"
    second = runner.invoke(
        app, ["pipeline", "--set", f"data_dir={tmp_path}", "--set", f"model_store_uri={fresh}", *TINY]
    )
    assert second.exit_code == 0, second.output
    assert "not promoted" in second.output

    # Then the scorer's store serves the registry's champion, not nothing
    assert ModelStore(LocalBlobStore(fresh)).champion_version() == champion
    assert f"publishing champion v{champion}" in " ".join(second.output.split())

    # But a champion trained on another feature spec is never republished under this one
    # (`fraudsys train` registers a candidate without moving the champion)
    cfg = load_config(DEFAULT_CONFIG, overrides={"data_dir": str(tmp_path)})
    registry = Registry(cfg.tracking_uri(), cfg.registry.experiment, cfg.registry.model_name)
    registry.client.set_model_version_tag(cfg.registry.model_name, champion, "feature_spec_version", "old")
    other = tmp_path / "other_store"
    third = runner.invoke(
        app, ["train", "--set", f"data_dir={tmp_path}", "--set", f"model_store_uri={other}", *TINY]
    )
    assert third.exit_code == 0, third.output
    assert ModelStore(LocalBlobStore(other)).champion_version() is None
    assert "retrain instead of publishing it" in " ".join(third.output.split())
    refused = runner.invoke(app, ["promote", champion, "--set", f"data_dir={tmp_path}"])
    assert refused.exit_code == 1
    assert "retrain instead of publishing it" in " ".join(refused.output.split())


def test_invalid_config_is_reported_with_the_field(tmp_path: Path) -> None:
    result = runner.invoke(app, ["pipeline", "--set", f"data_dir={tmp_path}", "--set", "tuning.n_trials=0"])
    assert result.exit_code == 2
    assert "n_trials" in result.output


def test_malformed_csv_names_the_row_and_column(tmp_path: Path) -> None:
    from training.data.kaggle import write_transactions_csv
    from training.data.simulator import SimulatorConfig, simulate

    csv = tmp_path / "bad.csv"
    write_transactions_csv(simulate(SimulatorConfig(n_cards=5, n_days=3)), csv)
    lines = csv.read_text().splitlines()
    cells = lines[3].split(",")
    amt = lines[0].split(",").index("amt")
    cells[amt] = "abc"
    lines[3] = ",".join(cells)
    csv.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["score", str(csv), "--set", f"data_dir={tmp_path}"])
    assert result.exit_code == 1
    assert "amt" in result.output
    assert "row" in result.output


def test_score_without_champion_is_a_clear_error(tmp_path: Path) -> None:
    from training.data.kaggle import write_transactions_csv
    from training.data.simulator import SimulatorConfig, simulate

    csv = tmp_path / "ok.csv"
    write_transactions_csv(simulate(SimulatorConfig(n_cards=5, n_days=3)), csv)
    result = runner.invoke(app, ["score", str(csv), "--set", f"data_dir={tmp_path}"])
    assert result.exit_code != 0
    assert "no champion" in str(result.exception) + result.output


@pytest.mark.slow
def test_weekly_as_of_retraining_publishes_the_refit_and_gates_on_the_test_days(tmp_path: Path) -> None:
    import xgboost as xgb

    tiny = [*TINY, "--set", "source.n_days=90", "--set", f"data_dir={tmp_path}"]
    # Given a champion trained as of 2019-03-17
    first = runner.invoke(app, ["pipeline", "--train-until", "2019-03-17", *tiny])
    assert first.exit_code == 0, first.output
    report = json.loads(next((tmp_path / "reports").glob("metrics-v1.json")).read_text())
    cutoff = 1552780800  # 2019-03-17T00:00:00Z
    assert report["boundaries"]["cutoff"] == cutoff
    assert report["boundaries"]["end"] == cutoff - 7 * 86400
    # Then the published model is the refit, with the rounds chosen on validation
    store = ModelStore(LocalBlobStore(tmp_path / "model_store"))
    booster = xgb.Booster()
    booster.load_model(bytearray(store.load("1").model))
    assert booster.num_boosted_rounds() == report["metrics"]["refit_rounds"]
    assert report["metrics"]["refit_rows"] > report["metrics"]["validation_n"] + report["metrics"]["test_n"]

    # When next week's candidate is trained as of 2019-03-24
    second = runner.invoke(app, ["train", "--train-until", "2019-03-24", *tiny])
    assert second.exit_code == 0, second.output
    # Then the gate compared both on the candidate's test days, which the champion was fit on
    reason = " ".join(second.output.split())
    assert "on the test days, part of which the champion was fit on (until 2019-03-10)" in reason
    assert store.champion_version() == "1"


def test_local_up_states_the_stacks_broker_roll_default_without_importing_the_stack() -> None:
    # the CLI module does not import local_stack (the training image has only the training side),
    # so its help names the stack's default itself: it must be the stack's
    from local_stack import DEFAULT_BROKER_ROLL_RECORDS

    result = runner.invoke(app, ["local", "up", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert f"default: the stack's, {DEFAULT_BROKER_ROLL_RECORDS:,}" in " ".join(result.output.split())
