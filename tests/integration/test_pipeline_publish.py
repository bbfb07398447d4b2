"""A publish that fails leaves the registry's champion alias where it was (issue 15 B2): the
alias moves only once the version's files are in the model store, and goes back if the champion
pointer cannot be written."""

from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from fraud_adapters.model_store import ModelStore
from training.config import load_config
from training.pipeline import run_pipeline
from training.registry import CHAMPION, Registry

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, store_uri: str):  # type: ignore[no-untyped-def]
    return load_config(
        Path("training/configs/default.yaml"),
        overrides={
            "source": {"n_cards": 80, "n_days": 70, "seed": 3},
            "data_dir": str(tmp_path / "data"),
            "model_store_uri": store_uri,
            "split": {"validation_days": 14, "test_days": 14},
            "tuning": {"n_trials": 1, "n_folds": 2, "max_rounds": 20},
        },
    )


def _alias(tmp_path: Path) -> str | None:
    cfg = _config(tmp_path, str(tmp_path / "unused"))
    registry = Registry(cfg.tracking_uri(), cfg.registry.experiment, cfg.registry.model_name)
    try:
        return str(registry.client.get_model_version_by_alias(cfg.registry.model_name, CHAMPION).version)
    except MlflowException:
        return None


def test_a_failed_publish_does_not_move_the_alias(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a model store that cannot be written (a file where its folder should be)
    blocked = tmp_path / "store-is-a-file"
    blocked.write_text("not a folder")
    with pytest.raises(OSError, match="store-is-a-file"):
        run_pipeline(_config(tmp_path, str(blocked)))
    assert _alias(tmp_path) is None

    # when the version's files are written but the champion pointer is not
    store = tmp_path / "store"

    def refuse(self: ModelStore, version: str) -> None:
        raise OSError("pointer write refused")

    monkeypatch.setattr(ModelStore, "set_champion", refuse)
    with pytest.raises(OSError, match="pointer write refused"):
        run_pipeline(_config(tmp_path, str(store)))
    # then the alias went back (there was none) and the store serves nothing
    assert _alias(tmp_path) is None
    assert not (store / "fraudsys" / "champion.json").exists()

    # and once the store works, the next run promotes and publishes
    monkeypatch.undo()
    result = run_pipeline(_config(tmp_path, str(store)))
    assert result.promoted
    assert _alias(tmp_path) == result.version
    assert (store / "fraudsys" / "champion.json").exists()
