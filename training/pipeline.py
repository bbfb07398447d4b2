"""The offline job: data -> point-in-time features -> tuned XGBoost -> evaluation -> MLflow
registry -> champion gate -> model store."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fraud_adapters.blobs import open_blob_store
from fraud_adapters.model_store import ModelStore
from fraud_core import spec
from training.config import CsvSource, LakeSource, ParquetSource, PipelineConfig, SimulatedSource
from training.dataset import build_features, label_events_at_delay
from training.evaluate import choose_threshold, evaluate, save_plots
from training.registry import Candidate, GateDecision, Registry, publish, write_json
from training.train import Splits, fit, importance, predict, time_splits, tune

Step = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class PipelineResult:
    rows: int
    frauds: int
    seconds: dict[str, float]
    version: str
    run_id: str
    decision: GateDecision
    promoted: bool
    metrics: dict[str, float]
    published_to: str | None
    report: Path
    boundaries: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceData:
    """A source's transactions (canonical frame) and label events (``LABEL_EVENT_COLUMNS``)."""

    transactions: pd.DataFrame
    labels: pd.DataFrame


def load_source(cfg: PipelineConfig) -> SourceData:
    """Transactions and label events of the configured source: the lake's real label arrivals,
    or, for sources without arrival times, a fraud label per fraud at ``event_time + delay``."""
    from training.data.lake import read_lake

    source = cfg.source
    if isinstance(source, LakeSource):
        lake = read_lake(source.uri, source.start, source.end)
        if lake.transactions.empty:
            raise ValueError(f"the lake {source.uri} holds no transactions (in {source.start}..{source.end})")
        return SourceData(lake.transactions, lake.labels)
    frame = load_transactions(cfg)
    return SourceData(frame, label_events_at_delay(frame, cfg.label_delay_seconds))


def load_transactions(cfg: PipelineConfig) -> pd.DataFrame:
    """The canonical transaction frame from the configured source (lake: ``cc_num`` is the card
    hash, ``is_fraud`` the latest label by arrival)."""
    source = cfg.source
    if isinstance(source, LakeSource):
        from training.data.lake import read_lake_transactions

        return read_lake_transactions(source.uri, source.start, source.end)
    if isinstance(source, SimulatedSource):
        from training.data.simulator import SimulatorConfig, kaggle_scale, simulate

        base = kaggle_scale() if source.scale == "kaggle" else SimulatorConfig()
        updates = {
            k: v
            for k, v in source.model_dump().items()
            if k in SimulatorConfig.model_fields and v is not None
        }
        return simulate(base.model_copy(update=updates))
    if isinstance(source, CsvSource):
        from training.data.kaggle import read_transactions_csv

        return read_transactions_csv(materialize(str(source.path), cfg.data_dir / "raw"))
    if isinstance(source, ParquetSource):
        from training.data.kaggle import read_parquet_dataset

        return read_parquet_dataset(materialize(str(source.path), cfg.data_dir / "raw"))
    raise TypeError(f"unknown source {source!r}")


def materialize(uri: str, local_dir: Path) -> Path:
    """A local path for ``uri``: S3 objects (a file or a prefix) are downloaded first."""
    if not uri.startswith("s3:/"):
        return Path(uri)
    import os

    import boto3

    bucket, _, prefix = uri.removeprefix("s3://").removeprefix("s3:/").partition("/")
    s3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3"))
    keys = [
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
    ]
    if not keys:
        raise FileNotFoundError(f"nothing at {uri}")
    target = local_dir / bucket / prefix
    for key in keys:
        path = target / key.removeprefix(prefix).lstrip("/") if key != prefix else target
        path.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(path))
    return target


def train_candidate(cfg: PipelineConfig, splits: Splits, out: Path, step: Step = _quiet) -> Candidate:
    gap = cfg.split.gap_days * spec.DAY if cfg.split.gap_days is not None else cfg.label_delay_seconds
    step(f"tuning: {cfg.tuning.n_trials} trials x {cfg.tuning.n_folds} time-series folds")
    params, cv_score = tune(splits.train, cfg.tuning, gap, lambda n, s: step(f"trial {n}: cv aucpr {s:.4f}"))
    step("fitting the model and the request-only baseline")
    booster, _ = fit(splits.train, splits.validation, params, cfg.tuning)
    baseline, _ = fit(splits.train, splits.validation, params, cfg.tuning, spec.REQUEST_ONLY_FEATURES)

    p_val = predict(booster, splits.validation)
    y_val = splits.validation["is_fraud"].to_numpy().astype(int)
    threshold = choose_threshold(y_val, p_val, cfg.threshold.strategy, cfg.threshold.target_fpr)
    p_test = predict(booster, splits.test)
    pb_val = predict(baseline, splits.validation, spec.REQUEST_ONLY_FEATURES)
    pb_test = predict(baseline, splits.test, spec.REQUEST_ONLY_FEATURES)
    b_threshold = choose_threshold(y_val, pb_val, cfg.threshold.strategy, cfg.threshold.target_fpr)
    metrics = {
        "cv_aucpr": cv_score,
        "best_iteration": float(booster.num_boosted_rounds()),
        **evaluate(splits.validation, p_val, threshold).as_dict("validation_"),
        **evaluate(splits.test, p_test, threshold).as_dict("test_"),
        **evaluate(splits.test, pb_test, b_threshold).as_dict("baseline_test_"),
    }
    y_test = splits.test["is_fraud"].to_numpy().astype(int)
    artifacts = save_plots(y_test, p_test, importance(booster), threshold, out)
    return Candidate(
        booster=booster,
        baseline=baseline,
        params=params,
        threshold=threshold,
        metrics=metrics,
        artifacts=artifacts,
        tags={k: str(v) for k, v in splits.boundaries.items()},
    )


def publish_registered(cfg: PipelineConfig, registry: Registry, version: str, champion: bool) -> str:
    """Publish a registered version (booster, baseline, threshold, metrics) to the model store.

    Refused for a version trained on another feature spec: the scorer would compute other features.
    """
    booster, baseline, tags, run_id = registry.load_version(version)
    if tags.get("feature_spec_version") != spec.FEATURE_SPEC_VERSION:
        raise ValueError(
            f"version {version} was trained on feature spec {tags.get('feature_spec_version')}, this code "
            f"computes {spec.FEATURE_SPEC_VERSION}: retrain instead of publishing it"
        )
    metrics = registry.client.get_run(run_id).data.metrics if run_id else {}
    return publish(
        cfg.store_uri,
        cfg.registry.model_name,
        version,
        booster,
        baseline,
        float(tags.get("threshold", 0.5)),
        cfg.label_delay_seconds,
        dict(metrics),
        run_id,
        champion=champion,
    )


def _sync_champion(cfg: PipelineConfig, registry: Registry, champion: str, step: Step) -> None:
    """The registry's champion is what the scorer must serve: when the model store points
    elsewhere (a new or emptied bucket, a failed publish), publish the champion again."""
    store = ModelStore(open_blob_store(cfg.store_uri), cfg.registry.model_name)
    serving = store.champion_version()
    if serving != champion:
        step(f"the model store serves {serving or 'no model'}: publishing champion v{champion} there")
        try:
            publish_registered(cfg, registry, champion, champion=True)
        except ValueError as exc:
            step(f"not published: {exc}")


def run_pipeline(
    cfg: PipelineConfig, auto_promote: bool = True, step: Step = _quiet, frame: pd.DataFrame | None = None
) -> PipelineResult:
    """The whole job; ``frame`` (canonical transactions) replaces the configured source if given."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    if frame is None:
        step(f"loading transactions ({cfg.source.kind})")
        source = load_source(cfg)
    else:
        source = SourceData(frame, label_events_at_delay(frame, cfg.label_delay_seconds))
    df = source.transactions
    seconds["load"] = time.perf_counter() - started

    t0 = time.perf_counter()
    step(f"point-in-time features for {len(df):,} transactions, {len(source.labels):,} label events")
    rows = build_features(df, cfg.label_delay_seconds, labels=source.labels)
    seconds["features"] = time.perf_counter() - t0

    splits = time_splits(rows, cfg.split, cfg.label_delay_seconds)
    t0 = time.perf_counter()
    report_dir = cfg.data_dir / "reports"
    candidate = train_candidate(cfg, splits, report_dir, step)
    seconds["train"] = time.perf_counter() - t0

    step("registering in MLflow")
    registry = Registry(cfg.tracking_uri(), cfg.registry.experiment, cfg.registry.model_name)
    decision = registry.gate(
        candidate, splits.validation, cfg.registry.gate_metric, cfg.registry.min_improvement
    )
    version, run_id = registry.register(candidate, splits.validation)
    registry.client.set_model_version_tag(cfg.registry.model_name, version, "gate", decision.reason)
    promoted = auto_promote and decision.promote
    step(f"publishing version {version} to {cfg.store_uri}" + (" as champion" if promoted else ""))
    # The version's files first: a publish that fails (no credentials, store unreachable) leaves
    # the registry's champion alias and the store's pointer where they were.
    published = publish(
        cfg.store_uri,
        cfg.registry.model_name,
        version,
        candidate.booster,
        candidate.baseline,
        candidate.threshold,
        cfg.label_delay_seconds,
        candidate.metrics,
        run_id,
        champion=False,
    )
    if promoted:
        previous = decision.champion_version
        registry.promote(version)
        try:
            ModelStore(open_blob_store(cfg.store_uri), cfg.registry.model_name).set_champion(version)
        except BaseException:
            registry.restore_champion(previous)
            raise
    if not promoted and decision.champion_version is not None:
        _sync_champion(cfg, registry, decision.champion_version, step)
    seconds["total"] = time.perf_counter() - started
    report = write_json(
        report_dir / f"metrics-v{version}.json",
        {
            "version": version,
            "run_id": run_id,
            "promoted": promoted,
            "gate": decision.reason,
            "rows": len(df),
            "frauds": int(np.sum(df["is_fraud"])),
            "seconds": seconds,
            "metrics": candidate.metrics,
            "params": candidate.params,
            "boundaries": splits.boundaries,
        },
    )
    return PipelineResult(
        rows=len(df),
        frauds=int(np.sum(df["is_fraud"])),
        seconds=seconds,
        version=version,
        run_id=run_id,
        decision=decision,
        promoted=promoted,
        metrics=candidate.metrics,
        published_to=published,
        report=report,
        boundaries=splits.boundaries,
    )


def score_file(frame: pd.DataFrame, store_uri: str, model_name: str) -> pd.DataFrame:
    """Batch scoring / backtest with the published champion and point-in-time features."""
    import xgboost as xgb

    from fraud_adapters.blobs import open_blob_store
    from fraud_adapters.model_store import ModelNotFoundError, ModelStore

    store = ModelStore(open_blob_store(store_uri), model_name)
    version = store.champion_version()
    if version is None:
        raise ModelNotFoundError(f"no champion published in {store_uri}: run `fraudsys pipeline` first")
    files = store.load(version)
    booster = xgb.Booster()
    booster.load_model(bytearray(files.model))
    rows = build_features(frame, files.manifest.label_delay_seconds)
    p = predict(booster, rows, files.manifest.feature_names)
    return pd.DataFrame(
        {
            "trans_num": rows["trans_num"].to_numpy(),
            "fraud_probability": p,
            "is_fraud": (p >= files.manifest.threshold).astype(np.int8),
        }
    )
