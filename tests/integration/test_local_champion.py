"""``local_stack.champion.ensure_champion``: where ``fraudsys local up`` finds its first champion
when the local S3 has none (issue 15 B2): a local model store, else the MLflow registry's alias."""

from pathlib import Path

import pytest

from fraud_adapters.blobs import LocalBlobStore
from fraud_adapters.model_store import ModelStore
from local_stack.champion import ensure_champion
from tests.support.models import publish_test_model_to
from training.config import load_config
from training.pipeline import run_pipeline

pytestmark = pytest.mark.slow
DELAY = 7 * 86400


def test_a_served_champion_is_kept_and_a_refused_one_is_skipped(tmp_path: Path) -> None:
    target = ModelStore(LocalBlobStore(str(tmp_path / "s3")))
    other_delay = tmp_path / "two-day-store"
    publish_test_model_to(ModelStore(LocalBlobStore(str(other_delay))), version="4", label_delay=2 * 86400)
    good = tmp_path / "store"
    publish_test_model_to(ModelStore(LocalBlobStore(str(good))), version="5", label_delay=DELAY)

    # a store whose champion has another label delay is skipped, the next one is copied
    report = ensure_champion(str(tmp_path / "s3"), DELAY, (other_delay, good), train=False)
    assert report is not None
    assert (report.version, report.source) == ("5", f"model store {good}")
    assert target.champion_version() == "5"
    # the next `up` serves what the local S3 has
    again = ensure_champion(str(tmp_path / "s3"), DELAY, (other_delay,), train=False)
    assert again is not None
    assert (again.version, again.source) == ("5", "local S3")


def test_nothing_found_and_no_training_is_none(tmp_path: Path) -> None:
    assert ensure_champion(str(tmp_path / "s3"), DELAY, (tmp_path / "missing",), train=False) is None


def test_the_registry_alias_is_published_when_no_store_has_a_champion(tmp_path: Path) -> None:
    # given a registry whose champion was published elsewhere (a lost local S3)
    cfg = load_config(
        Path("training/configs/default.yaml"),
        overrides={
            "source": {"n_cards": 80, "n_days": 70, "seed": 3},
            "data_dir": str(tmp_path / "data"),
            "model_store_uri": str(tmp_path / "elsewhere"),
            "label_delay_seconds": DELAY,
            "split": {"validation_days": 14, "test_days": 14},
            "tuning": {"n_trials": 1, "n_folds": 2, "max_rounds": 20},
        },
    )
    result = run_pipeline(cfg)
    assert result.promoted

    report = ensure_champion(
        str(tmp_path / "s3"), DELAY, (), cfg.tracking_uri(), tmp_path / "quick", train=False
    )

    assert report is not None
    assert report.version == result.version
    assert report.source.startswith("MLflow")
    served = ModelStore(LocalBlobStore(str(tmp_path / "s3")))
    assert served.champion_version() == result.version
    assert served.load(result.version, DELAY).baseline is not None
