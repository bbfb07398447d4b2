"""MLflow tracking + model registry, the champion gate, and publishing to the model store."""

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from fraud_adapters.blobs import open_blob_store
from fraud_adapters.model_store import ModelStore
from fraud_core import spec
from fraud_core.schemas import ModelManifest
from training.evaluate import evaluate

log = logging.getLogger(__name__)
CHAMPION = "champion"


@dataclass
class Candidate:
    booster: xgb.Booster
    baseline: xgb.Booster
    params: dict[str, Any]
    threshold: float
    metrics: dict[str, float]  # validation_*, test_*, baseline_test_*
    artifacts: list[Path] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    candidate_score: float
    champion_score: float | None
    champion_version: str | None


@dataclass(frozen=True)
class Registered:
    version: str
    run_id: str
    decision: GateDecision
    published_to: str | None


def quiet_mlflow_client(tracking_uri: str) -> None:
    """Two warnings MLflow logs that say nothing about this project's runs:

    - the ``sagemaker-mlflow`` plugin (installed for the deployed SageMaker MLflow) registers a
      request header provider that parses the tracking URI as an ARN on every request: with any
      other URI it fails (``list index out of range``) and MLflow logs a warning per request. It
      is left out unless the URI is an ARN.
    - ``Failed to resolve installed pip version`` when a model is logged: uv environments have no
      pip; the model's requirements are given explicitly (``pip_requirements``).
    """
    from mlflow.tracking.request_header import registry

    if not tracking_uri.startswith("arn:"):
        providers = registry._request_header_provider_registry
        providers._registry = [
            p for p in providers._registry if not type(p).__module__.startswith("sagemaker_mlflow")
        ]
    environment_log = logging.getLogger("mlflow.utils.environment")
    if _no_pip_version_warning not in environment_log.filters:
        environment_log.addFilter(_no_pip_version_warning)


def _no_pip_version_warning(record: logging.LogRecord) -> bool:
    return "Failed to resolve installed pip version" not in record.getMessage()


class Registry:
    def __init__(self, tracking_uri: str, experiment: str, model_name: str) -> None:
        import mlflow

        quiet_mlflow_client(tracking_uri)

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # mlflow.set_*_uri also export MLFLOW_*_URI; keep the caller's environment as it was, so
        # a later config in the same process does not silently inherit this registry.
        saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if mlflow.get_experiment_by_name(experiment) is None:
            mlflow.create_experiment(experiment)
        mlflow.set_experiment(experiment)
        self.client = mlflow.MlflowClient(tracking_uri, tracking_uri)
        self.model_name = model_name

    def champion(self) -> tuple[str, xgb.Booster, dict[str, str]] | None:
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            version = self.client.get_model_version_by_alias(self.model_name, CHAMPION)
        except MlflowException:
            return None
        booster = mlflow.xgboost.load_model(f"models:/{self.model_name}@{CHAMPION}")
        return str(version.version), booster, dict(version.tags)

    def gate(
        self,
        candidate: Candidate,
        validation: pd.DataFrame,
        metric: str,
        min_improvement: float,
        split: str = "validation",
    ) -> GateDecision:
        """Promote only if the candidate beats the champion on the same held-out rows:
        ``validation`` is the candidate's ``split`` (its score: ``metrics[f"{split}_{metric}"]``)."""
        score = candidate.metrics[f"{split}_{metric}"]
        current = self.champion()
        if current is None:
            return GateDecision(True, "no champion yet", score, None, None)
        version, booster, tags = current
        if tags.get("feature_spec_version") != spec.FEATURE_SPEC_VERSION:
            return GateDecision(True, f"champion v{version} uses another feature spec", score, None, version)
        names = list(booster.feature_names or [])
        probabilities = np.asarray(booster.inplace_predict(validation[names].to_numpy(dtype=np.float64)))
        champion_score = float(getattr(evaluate(validation, probabilities, 0.5), metric))
        first = int(validation["event_time"].min())
        seen = tags.get("fit_until")
        # a champion fit on some of these days scores them optimistically: the gate is conservative
        where = f"on the {split} days"
        if seen and int(seen) > first:
            until = datetime.fromtimestamp(int(seen), UTC).date().isoformat()
            where += f", part of which the champion was fit on (until {until})"
        if score > champion_score + min_improvement:
            reason = f"{metric} {score:.4f} beats champion v{version} {champion_score:.4f} {where}"
            return GateDecision(True, reason, score, champion_score, version)
        reason = f"{metric} {score:.4f} does not beat champion v{version} {champion_score:.4f} {where}"
        return GateDecision(False, reason, score, champion_score, version)

    def register(self, candidate: Candidate, validation: pd.DataFrame) -> tuple[str, str]:
        """Log run + model, register a new version; returns (version, run_id)."""
        import mlflow
        from mlflow.models import infer_signature

        sample = validation[list(spec.FEATURE_NAMES)].head(50).astype("float64")
        signature = infer_signature(sample, candidate.booster.inplace_predict(sample.to_numpy()))
        with mlflow.start_run() as run:
            mlflow.log_params({k: v for k, v in candidate.params.items() if k != "eval_metric"})
            mlflow.log_metrics({k: v for k, v in candidate.metrics.items() if np.isfinite(v)})
            mlflow.set_tags({**candidate.tags, "feature_spec_version": spec.FEATURE_SPEC_VERSION})
            for path in candidate.artifacts:
                mlflow.log_artifact(str(path))
            with tempfile.TemporaryDirectory() as tmp:
                baseline_path = Path(tmp) / "baseline.ubj"
                candidate.baseline.save_model(str(baseline_path))
                mlflow.log_artifact(str(baseline_path), artifact_path="baseline")
            info = mlflow.xgboost.log_model(
                candidate.booster,
                name="model",
                signature=signature,
                registered_model_name=self.model_name,
                pip_requirements=[f"xgboost-cpu=={xgb.__version__}"],
                model_format="ubj",
            )
        version = str(info.registered_model_version)
        self.client.set_model_version_tag(
            self.model_name, version, "feature_spec_version", spec.FEATURE_SPEC_VERSION
        )
        self.client.set_model_version_tag(self.model_name, version, "threshold", str(candidate.threshold))
        for key in ("fit_until", "cutoff"):  # the gate reads them off the champion
            if key in candidate.tags:
                self.client.set_model_version_tag(self.model_name, version, key, candidate.tags[key])
        return version, run.info.run_id

    def promote(self, version: str) -> None:
        self.client.set_registered_model_alias(self.model_name, CHAMPION, version)

    def restore_champion(self, previous: str | None) -> None:
        """Put the alias back where it was (``None``: no champion) after a failed publish."""
        if previous is None:
            self.client.delete_registered_model_alias(self.model_name, CHAMPION)
        else:
            self.client.set_registered_model_alias(self.model_name, CHAMPION, previous)

    def load_version(self, version: str) -> tuple[xgb.Booster, xgb.Booster | None, dict[str, str], str]:
        """A registered version's booster, baseline, tags and run id (for `fraudsys promote`)."""
        import mlflow

        mv = self.client.get_model_version(self.model_name, version)
        booster = mlflow.xgboost.load_model(f"models:/{self.model_name}/{version}")
        baseline: xgb.Booster | None = None
        if mv.run_id:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    path = mlflow.artifacts.download_artifacts(
                        run_id=mv.run_id, artifact_path="baseline/baseline.ubj", dst_path=tmp
                    )
                    baseline = xgb.Booster()
                    baseline.load_model(path)
                except Exception:  # an older run without a baseline
                    baseline = None
        return booster, baseline, dict(mv.tags), str(mv.run_id)


def booster_bytes(booster: xgb.Booster) -> bytes:
    return bytes(booster.save_raw("ubj"))


def publish(
    store_uri: str,
    model_name: str,
    version: str,
    booster: xgb.Booster,
    baseline: xgb.Booster | None,
    threshold: float,
    label_delay: int,
    metrics: dict[str, float],
    run_id: str | None,
    champion: bool,
) -> str:
    """Write the self-contained artifact for the scorer; move the pointer if ``champion``."""
    manifest = ModelManifest(
        model_name=model_name,
        version=version,
        feature_names=list(booster.feature_names or spec.FEATURE_NAMES),
        feature_spec_version=spec.FEATURE_SPEC_VERSION,
        threshold=threshold,
        label_delay_seconds=label_delay,
        created_at=datetime.now(UTC),
        metrics={k: v for k, v in metrics.items() if np.isfinite(v)},
        mlflow_run_id=run_id,
    )
    store = ModelStore(open_blob_store(store_uri), model_name)
    return store.publish(
        manifest, booster_bytes(booster), booster_bytes(baseline) if baseline else None, champion=champion
    )


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    return path
