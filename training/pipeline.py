"""The offline job: data -> point-in-time features -> tuned XGBoost -> evaluation -> MLflow
registry -> champion gate -> model store."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from fraud_adapters.blobs import open_blob_store
from fraud_adapters.model_store import ModelStore
from fraud_core import spec
from training.asof import asof_splits, known_at, read_range
from training.config import (
    CsvSource,
    FeatureTableSource,
    LakeSource,
    ParquetSource,
    PipelineConfig,
    SimulatedSource,
)
from training.dataset import build_features, label_events_at_delay
from training.evaluate import choose_threshold, evaluate, save_plots
from training.registry import Candidate, GateDecision, Registry, publish, write_json
from training.sampling import FeatureTable, read_feature_table, sample_legitimate
from training.train import Splits, base_params, fit, fit_rounds, importance, predict, time_splits, tune

Step = Callable[[str], None]
#: ``build_features``' signature: (transactions, label delay, label events) -> feature rows.
FeatureBuilder = Callable[[pd.DataFrame, int, pd.DataFrame | None], pd.DataFrame]


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
    or, for sources without arrival times, a fraud label per fraud at ``event_time + delay``.

    As of ``split.train_until`` (``training.asof``): only what was known before the cutoff. The
    lake reads only the day partitions of the range and the labels that arrived by then, the
    Parquet source only the months of the range; a CSV or a simulation is cut after loading.
    """
    from datetime import UTC, datetime, timedelta

    from training.data.lake import read_lake

    source = cfg.source
    window = read_range(cfg.split)
    if isinstance(source, LakeSource):
        start, end, arrived_by = source.start, source.end, None
        if window is not None:
            first, cutoff = window
            last_day = datetime.fromtimestamp(cutoff, UTC).date() - timedelta(days=1)
            end = min(end, last_day) if end is not None else last_day
            if first is not None:
                first_day = datetime.fromtimestamp(first, UTC).date()
                start = max(start, first_day) if start is not None else first_day
            arrived_by = cutoff - 1
        lake = read_lake(source.uri, start, end, cutoff=arrived_by)
        if lake.transactions.empty:
            raise ValueError(f"the lake {source.uri} holds no transactions (in {start}..{end})")
        data = SourceData(lake.transactions, lake.labels)
    else:
        frame = load_transactions(cfg)
        data = SourceData(frame, label_events_at_delay(frame, cfg.label_delay_seconds))
    return as_of(cfg, data)


def as_of(cfg: PipelineConfig, data: SourceData) -> SourceData:
    """``data`` as known at the cutoff of ``split.train_until`` (unchanged without one)."""
    window = read_range(cfg.split)
    if window is None:
        return data
    start, cutoff = window
    transactions, labels = known_at(data.transactions, data.labels, cutoff, start)
    if transactions.empty:
        raise ValueError(f"no transaction before the cutoff {cfg.split.train_until}")
    return SourceData(transactions, labels)


def make_splits(cfg: PipelineConfig, rows: pd.DataFrame) -> Splits:
    """The as-of windows with ``split.train_until``, else the windows counted from the last event."""
    window = read_range(cfg.split)
    if window is None:
        return time_splits(rows, cfg.split, cfg.label_delay_seconds)
    return asof_splits(rows, cfg.split, cfg.label_delay_seconds, window[1])


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

        window = read_range(cfg.split)
        start, end = window if window is not None else (None, None)
        return read_parquet_dataset(materialize(str(source.path), cfg.data_dir / "raw"), start=start, end=end)
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
    rounds, baseline_rounds = booster.num_boosted_rounds(), baseline.num_boosted_rounds()

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
    tags = {k: str(v) for k, v in splits.boundaries.items()}
    tags["fit_until"] = str(splits.boundaries["train_end"])
    if splits.refit is not None:
        # The hyperparameters, the rounds and the threshold were chosen on validation and the
        # test metrics measured on days this model never saw; the published model is the same
        # recipe refit on every labelled day, up to the cutoff minus the label delay.
        step(f"refitting on {len(splits.refit):,} labelled rows up to the cutoff - the label delay")
        refit_params = {**params, **_class_weight(splits.refit, cfg)}
        booster = fit_rounds(splits.refit, refit_params, rounds)
        baseline = fit_rounds(splits.refit, refit_params, baseline_rounds, spec.REQUEST_ONLY_FEATURES)
        metrics |= {"refit_rows": float(len(splits.refit)), "refit_rounds": float(rounds)}
        tags["fit_until"] = str(splits.boundaries["end"])
    return Candidate(
        booster=booster,
        baseline=baseline,
        params=params,
        threshold=threshold,
        metrics=metrics,
        artifacts=artifacts,
        tags=tags,
    )


def _class_weight(rows: pd.DataFrame, cfg: PipelineConfig) -> dict[str, float]:
    """The class weight of ``base_params`` for ``rows``."""
    return {"scale_pos_weight": base_params(rows, cfg.tuning.nthread, cfg.tuning.seed)["scale_pos_weight"]}


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
    cfg: PipelineConfig,
    auto_promote: bool = True,
    step: Step = _quiet,
    frame: pd.DataFrame | None = None,
    data: SourceData | None = None,
    features: FeatureBuilder = build_features,
) -> PipelineResult:
    """The whole job; ``frame`` (canonical transactions, labels at the delay) or ``data``
    (transactions and label events) replaces the configured source if given. ``features``
    builds the rows (``training.spark_features.build_features_spark``: the same rows on Spark)."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    rate = cfg.sampling.legit_rate
    if isinstance(cfg.source, FeatureTableSource) and data is None and frame is None:
        # built by the Spark step: read day by day, the legitimate training rows sampled as read
        step(
            f"reading the feature table {cfg.source.uri}"
            + (f", legitimate rows at {rate:g}" if rate < 1 else "")
        )
        table = read_table(cfg)
        rows, n_rows, n_frauds = table.rows, table.table_rows, table.table_frauds
        seconds["load"] = time.perf_counter() - started
        splits = make_splits(cfg, rows)
    else:
        if data is not None:
            source = as_of(cfg, data)
        elif frame is not None:
            source = as_of(cfg, SourceData(frame, label_events_at_delay(frame, cfg.label_delay_seconds)))
        else:
            step(f"loading transactions ({cfg.source.kind})")
            source = load_source(cfg)
        df = source.transactions
        n_rows, n_frauds = len(df), int(np.sum(df["is_fraud"]))
        seconds["load"] = time.perf_counter() - started

        t0 = time.perf_counter()
        step(f"point-in-time features for {len(df):,} transactions, {len(source.labels):,} label events")
        rows = features(df, cfg.label_delay_seconds, source.labels)
        seconds["features"] = time.perf_counter() - t0
        splits = sample_splits(cfg, make_splits(cfg, rows))

    t0 = time.perf_counter()
    report_dir = cfg.data_dir / "reports"
    candidate = train_candidate(cfg, splits, report_dir, step)
    seconds["train"] = time.perf_counter() - t0
    candidate.tags["legit_sample_rate"] = f"{rate:g}"
    candidate.metrics["train_rows"] = float(len(splits.train))

    step("registering in MLflow")
    registry = Registry(cfg.tracking_uri(), cfg.registry.experiment, cfg.registry.model_name)
    # As of a cutoff the published model is refit on the validation days too: champion and
    # candidate are then compared on the test days (scored by the candidate before its refit).
    held_out = "test" if splits.refit is not None else "validation"
    decision = registry.gate(
        candidate,
        getattr(splits, held_out),
        cfg.registry.gate_metric,
        cfg.registry.min_improvement,
        split=held_out,
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
            "rows": n_rows,
            "frauds": n_frauds,
            "seconds": seconds,
            "metrics": candidate.metrics,
            "params": candidate.params,
            "boundaries": splits.boundaries,
        },
    )
    return PipelineResult(
        rows=n_rows,
        frauds=n_frauds,
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


def sample_splits(cfg: PipelineConfig, splits: Splits) -> Splits:
    """``splits`` with the training rows sampled (``sampling.legit_rate`` < 1): the train split
    and the as-of refit's days before validation; validation and test stay whole."""
    rate, seed = cfg.sampling.legit_rate, cfg.sampling.seed
    if rate >= 1:
        return splits
    refit = splits.refit
    if refit is not None:
        refit = sample_legitimate(refit, rate, seed, keep_from=splits.boundaries["validation_start"])
    return replace(splits, train=sample_legitimate(splits.train, rate, seed), refit=refit)


def read_table(cfg: PipelineConfig) -> "FeatureTable":
    """The feature table of a ``features`` source, its legitimate rows sampled except in the last
    validation + test days (+ 1: the windows end at the last event, not at a day boundary)."""
    if not isinstance(cfg.source, FeatureTableSource):
        raise TypeError(f"not a feature table source: {cfg.source!r}")
    if cfg.split.train_until is not None:
        raise ValueError(
            "split.train_until (as-of training) needs the events and their label arrivals: train on "
            "the lake, or build the feature table from the events known at the cutoff"
        )
    whole_days = cfg.split.validation_days + cfg.split.test_days + 1
    return read_feature_table(cfg.source.uri, cfg.sampling.legit_rate, cfg.sampling.seed, whole_days)


def score_file(frame: pd.DataFrame, store_uri: str, model_name: str) -> pd.DataFrame:
    """Batch scoring / backtest with the published champion and point-in-time features
    (``training.scoring``: ``SCORE_COLUMNS``, streamed by day)."""
    from training.scoring import load_champion, score_frame

    return score_frame(frame, load_champion(store_uri, model_name))
