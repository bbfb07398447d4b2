"""A champion for the local stack's scorer at ``fraudsys local up``, before the API starts.

The README's first ``curl .../predict`` must be scored, not answered 503. In order:

1. the local S3 model store already points at a champion the scorer accepts (restored from
   ``<run_dir>/s3``): served as is;
2. a local model store folder (``fraudsys pipeline``'s default ``data/model_store``) has one:
   its files are copied into the local S3;
3. the stack's own MLflow registry (``<run_dir>/mlflow``) has a ``champion`` alias: that version
   is published (as ``fraudsys promote`` would);
4. otherwise a quick model is trained on a small simulated data set (tens of seconds), registered,
   promoted and published; the output says so, and how to train a real one.

A candidate the scorer would refuse (another feature spec, another label delay) is skipped.
The handlers' environment (``stack.handler_environment``: local S3 endpoint, dummy credentials
and region) must be set before this runs: ``LocalStack.up`` does it.
"""

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fraud_adapters.blobs import LocalBlobStore, open_blob_store
from fraud_adapters.model_store import ModelNotFoundError, ModelStore

log = logging.getLogger(__name__)

MODEL_NAME = "fraudsys"
DEFAULT_CONFIG = Path(__file__).parent.parent / "training" / "configs" / "default.yaml"
QUICK_SOURCE = {"n_cards": 150, "n_days": 70, "seed": 11}
QUICK_TUNING = {"n_trials": 1, "n_folds": 2, "max_rounds": 60}


@dataclass(frozen=True)
class ChampionReport:
    version: str
    source: str  # "local S3", "model store <dir>", "MLflow <uri>", "trained"
    message: str
    trained: bool = False


def _usable(store: ModelStore, label_delay: int) -> str | None:
    """The store's champion version if the scorer would load it, else None."""
    try:
        version = store.champion_version()
        if version is None:
            return None
        store.load(version, label_delay)  # refuses another feature spec or label delay
        return version
    except (ModelNotFoundError, OSError, ValueError) as exc:
        log.info("champion of %s not usable: %s", store.blobs.uri, exc)
        return None


def _copy(source: ModelStore, target: ModelStore, version: str, label_delay: int) -> None:
    files = source.load(version, label_delay)
    target.publish(files.manifest, files.model, files.baseline, champion=True)


def _from_registry(tracking_uri: str, target_uri: str, label_delay: int, data_dir: Path) -> str | None:
    """Publish the registry's champion alias (None when there is none, or it cannot serve)."""
    from training.config import PipelineConfig
    from training.pipeline import publish_registered
    from training.registry import CHAMPION, Registry

    cfg = PipelineConfig.model_validate(
        {
            "data_dir": data_dir,
            "model_store_uri": target_uri,
            "label_delay_seconds": label_delay,
            "registry": {"tracking_uri": tracking_uri, "model_name": MODEL_NAME},
        }
    )
    registry = Registry(tracking_uri, cfg.registry.experiment, MODEL_NAME)
    try:
        version = str(registry.client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version)
    except Exception:  # no registered model, or no alias
        return None
    try:
        publish_registered(cfg, registry, version, champion=True)
    except ValueError as exc:  # another feature spec
        log.info("registry champion v%s not published: %s", version, exc)
        return None
    target = ModelStore(open_blob_store(target_uri), MODEL_NAME)
    return version if _usable(target, label_delay) == version else None


def _train_quick(
    target_uri: str, label_delay: int, tracking_uri: str | None, data_dir: Path, step: Callable[[str], None]
) -> tuple[str, float, int]:
    from training.config import load_config
    from training.pipeline import run_pipeline

    overrides = {
        "source": QUICK_SOURCE,
        "data_dir": str(data_dir),
        "model_store_uri": target_uri,
        "label_delay_seconds": label_delay,
        "split": {"validation_days": 14, "test_days": 14},
        "tuning": QUICK_TUNING,
        "registry": {"tracking_uri": tracking_uri, "model_name": MODEL_NAME},
    }
    cfg = load_config(DEFAULT_CONFIG, overrides=overrides)
    started = time.perf_counter()
    result = run_pipeline(cfg, step=step)
    if not result.promoted:  # a registry with a better champion that could not be published
        raise RuntimeError(f"the quick model v{result.version} was not promoted: {result.decision.reason}")
    return result.version, time.perf_counter() - started, result.rows


def ensure_champion(
    target_uri: str,
    label_delay: int,
    model_stores: Sequence[Path] = (),
    tracking_uri: str | None = None,
    data_dir: Path = Path("data/local/quickstart"),
    train: bool = True,
    step: Callable[[str], None] = log.info,
) -> ChampionReport | None:
    """Make ``target_uri`` (the local S3 model store) point at a champion the scorer serves."""
    target = ModelStore(open_blob_store(target_uri), MODEL_NAME)
    version = _usable(target, label_delay)
    if version is not None:
        return ChampionReport(version, "local S3", f"serving champion v{version} (local S3)")
    for folder in model_stores:
        if not (folder / MODEL_NAME / "champion.json").is_file():
            continue
        source = ModelStore(LocalBlobStore(str(folder)), MODEL_NAME)
        version = _usable(source, label_delay)
        if version is not None:
            _copy(source, target, version, label_delay)
            where = f"model store {folder}"
            return ChampionReport(version, where, f"serving champion v{version}, published from the {where}")
    if tracking_uri is not None:
        version = _from_registry(tracking_uri, target_uri, label_delay, data_dir)
        if version is not None:
            where = f"MLflow {tracking_uri}"
            return ChampionReport(version, where, f"serving champion v{version}, published from {where}")
    if not train:
        return None
    step(
        "no champion in the local S3, "
        + (", ".join(str(f) for f in model_stores) + " " if model_stores else "")
        + ("or MLflow" if tracking_uri else "")
        + f": training a quick one on a small simulated data set ({QUICK_SOURCE['n_cards']} cards, "
        f"{QUICK_SOURCE['n_days']} days, {QUICK_TUNING['n_trials']} trial)"
    )
    version, seconds, rows = _train_quick(target_uri, label_delay, tracking_uri, data_dir, step)
    return ChampionReport(
        version,
        "trained",
        f"serving champion v{version}: a QUICK model trained now on {rows:,} simulated transactions in "
        f"{seconds:.0f} s (not a real one: run `fraudsys pipeline --local` for that)",
        trained=True,
    )
