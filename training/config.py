"""Pipeline configuration: YAML files validated by pydantic (frozen, ``kind``-discriminated sources)."""

from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from fraud_core import spec


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SimulatedSource(_Frozen):
    kind: Literal["simulate"] = "simulate"
    seed: int = 42
    n_cards: int | None = Field(default=None, description="None: the simulator's default size")
    n_merchants: int | None = None
    n_days: int | None = None
    scale: Literal["demo", "kaggle"] = "demo"


class CsvSource(_Frozen):
    kind: Literal["csv"] = "csv"
    path: Path


class ParquetSource(_Frozen):
    kind: Literal["parquet"] = "parquet"
    path: Path


class LakeSource(_Frozen):
    """The event lake the updater archives to (``training.data.lake``, ``docs/data.md``)."""

    kind: Literal["lake"] = "lake"
    uri: str = Field(description="the lake root: s3://bucket/prefix or a local folder (events/ below it)")
    start: date | None = Field(default=None, description="first transaction day (UTC); None: all")
    end: date | None = Field(default=None, description="last transaction day (UTC), inclusive; None: all")


class FeatureTableSource(_Frozen):
    """A feature table the Spark job wrote (``training.spark_features``: Parquet partitioned by
    ``dt``): the pipeline trains on it without building features (the scheduled retraining on
    AWS, after its EMR Serverless step; docs/infra.md)."""

    kind: Literal["features"] = "features"
    uri: str = Field(description="the table: s3://bucket/prefix or a local folder (dt=YYYY-MM-DD/ below it)")


DataSource = Annotated[
    SimulatedSource | CsvSource | ParquetSource | LakeSource | FeatureTableSource, Field(discriminator="kind")
]


class SplitConfig(_Frozen):
    """Time-ordered splits: train | gap (label delay) | validation | test.

    Without ``train_until`` the windows are counted back from the last event. With it (as-of
    training, ``training.asof``) only transactions before the cutoff (00:00 UTC of that day) and
    labels that arrived before it are used; the windows are whole UTC days ending where labels
    stop being complete (cutoff - label delay), and the published model is refit on all of it.
    """

    validation_days: int = Field(default=14, gt=0)
    test_days: int = Field(default=14, gt=0)
    gap_days: int | None = Field(default=None, description="None: the label delay")
    train_until: date | None = Field(
        default=None, description="as-of cutoff (00:00 UTC, exclusive); None: all data, no refit"
    )
    history_days: int | None = Field(
        default=None, gt=0, description="as-of: days before the cutoff to read; None: all"
    )
    refit: bool = Field(
        default=True, description="as-of: refit the chosen model on all labelled days before the cutoff"
    )


class TuningConfig(_Frozen):
    n_trials: int = Field(default=8, ge=1)
    n_folds: int = Field(default=3, ge=2)
    max_rounds: int = Field(default=300, ge=10)
    early_stopping_rounds: int = Field(default=20, ge=1)
    seed: int = 7
    nthread: int = 2
    pruner: Literal["median", "hyperband", "none"] = Field(
        default="median",
        description="stop unpromising trials on their per-round validation AUCPR (none: all run)",
    )
    pruner_warmup_rounds: int = Field(default=10, ge=0, description="rounds of each trial never pruned")


class ThresholdConfig(_Frozen):
    """How the decision threshold is chosen on the validation set."""

    strategy: Literal["max_f1", "target_fpr"] = "max_f1"
    target_fpr: float = Field(default=0.01, gt=0, lt=1)


class SamplingConfig(_Frozen):
    """Time-stratified sampling of legitimate training rows, re-weighted (``training.sampling``):
    every fraud, ``legit_rate`` of each day's legitimate rows of weight ``1 / legit_rate``; the
    validation and test days are kept whole. 1: no sampling (the default)."""

    legit_rate: float = Field(default=1.0, gt=0, le=1)
    seed: int = 0


class RegistryConfig(_Frozen):
    tracking_uri: str | None = Field(
        default=None, description="None: MLFLOW_TRACKING_URI or sqlite in data_dir"
    )
    experiment: str = "fraudsys"
    model_name: str = "fraudsys"
    gate_metric: Literal["average_precision", "roc_auc", "recall_at_1pct_fpr"] = "average_precision"
    min_improvement: float = 0.0


class PipelineConfig(_Frozen):
    source: DataSource = SimulatedSource()
    data_dir: Path = Path("data")
    model_store_uri: str | None = Field(default=None, description="None: <data_dir>/model_store")
    label_delay_seconds: int = Field(default=spec.DEFAULT_LABEL_DELAY, ge=0)
    split: SplitConfig = SplitConfig()
    tuning: TuningConfig = TuningConfig()
    threshold: ThresholdConfig = ThresholdConfig()
    sampling: SamplingConfig = SamplingConfig()
    registry: RegistryConfig = RegistryConfig()

    @property
    def store_uri(self) -> str:
        return self.model_store_uri or str(self.data_dir / "model_store")

    def tracking_uri(self) -> str:
        import os

        if self.registry.tracking_uri:
            return self.registry.tracking_uri
        if uri := os.environ.get("MLFLOW_TRACKING_URI"):
            return uri
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge; a mapping with another ``kind`` replaces the old one instead of merging."""
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        if (
            isinstance(value, dict)
            and isinstance(old, dict)
            and value.get("kind", old.get("kind")) == old.get("kind")
        ):
            merged[key] = _merge(old, value)
        else:
            merged[key] = value
    return merged


def environment_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """Settings the deployed training task passes as environment (see docs/infra.md)."""
    out: dict[str, Any] = {}
    if data_dir := env.get("FRAUDSYS_DATA_DIR"):
        # the container's writable work folder (training/Dockerfile: /app is read-only for the job)
        out["data_dir"] = data_dir
    if uri := env.get("MODEL_STORE_URI"):
        out["model_store_uri"] = uri
    if delay := env.get("LABEL_DELAY_SECONDS"):
        out["label_delay_seconds"] = int(delay)
    if name := env.get("MODEL_NAME"):
        out["registry"] = {"model_name": name}
    if rate := env.get("LEGIT_SAMPLE_RATE"):
        out["sampling"] = {"legit_rate": float(rate)}
    training_source = env.get("TRAINING_SOURCE", "raw")
    if training_source == "features":
        # the scheduled retraining after its Spark step: the feature table that step wrote
        if not (table := env.get("FEATURE_TABLE_URI")):
            raise ValueError("TRAINING_SOURCE=features needs FEATURE_TABLE_URI")
        out["source"] = {"kind": "features", "uri": table}
    elif training_source == "lake":
        # the scheduled retraining: the events the system archived, with their real label arrivals
        if not (lake := env.get("LAKE_URI")):
            raise ValueError("TRAINING_SOURCE=lake needs LAKE_URI")
        out["source"] = {"kind": "lake", "uri": lake}
    elif raw := env.get("RAW_DATA_URI"):
        out["source"] = {"kind": "csv" if raw.endswith(".csv") else "parquet", "path": raw}
    return out


#: the configuration ``fraudsys`` commands use when given no ``--config``
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


def load_config(
    *paths: Path, overrides: dict[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> PipelineConfig:
    """Merge YAML files in order (later wins), then ``env`` settings, then ``overrides``; validate."""
    data: dict[str, Any] = {}
    for path in paths:
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        data = _merge(data, loaded)
    data = _merge(data, environment_overrides(env or {}))
    return PipelineConfig.model_validate(_merge(data, overrides or {}))
