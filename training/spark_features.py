"""Point-in-time features on Apache Spark: the pandas feature code, distributed by card and merchant.

No feature is written here. A row's ``CARD_FEATURES`` depend only on its card's transactions, its
``MERCHANT_FEATURES`` only on its merchant's transactions and label events
(``training.dataset``). So the job runs the same functions on groups of whole cards and whole
merchants, ``groupBy(...).applyInPandas``:

1. **merchant pass**: rows bucketed by a hash of the merchant (many merchants per bucket: numpy's
   fixed cost per call is paid once per bucket, not per merchant); each bucket, cogrouped with the
   label events of its merchants, goes through ``training.dataset.merchant_features``. A merchant
   with more than ``split_rows`` transactions (skew) is split into time ranges: each range's
   group also holds the merchant's transactions and labels of the ``context_seconds`` before it
   (label delay + 30 days + 1 day of slack: what its risk and volume windows look back), and only
   the range's own rows are kept.
2. **card pass**: the merchant pass's rows (every input column and the merchant features),
   bucketed by a hash of the card, go through ``training.dataset.card_features``; the merchant
   columns are carried along, so no join is needed, and the rows come out in the columns of
   ``build_features`` (``ID_COLUMNS``, ``is_fraud``, ``spec.FEATURE_NAMES``).

The result equals ``build_features`` of the whole table row for row
(``tests/spark/test_spark_features.py``), given the canonical frame's contract of unique
``trans_num`` (the tie-break of same-second events). Two shuffles of the input rows and one of the
feature rows (by day, for the table), no join.

Local mode (``local_session``) is the default Spark; the same job runs under ``spark-submit`` on
a cluster (EMR Serverless: ``docs/architecture.md``), reading and writing Parquet URIs::

    spark-submit training/spark_features.py --transactions s3://.../parquet --output s3://.../features
    spark-submit training/spark_features.py --lake s3://<lake>/archive --output s3://.../features
    uv run python -m training.spark_features --transactions data/kaggle/parquet --output data/features
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as sf
from pyspark.sql.types import DateType, DoubleType, StructField, StructType, TimestampType

from fraud_core import spec
from training.dataset import (
    ID_COLUMNS,
    LABEL_COLUMN,
    LABEL_EVENT_COLUMNS,
    MERCHANT_FEATURES,
    card_features,
    merchant_features,
)

if TYPE_CHECKING:
    from training.scoring import Champion

#: The columns ``build_features`` reads (``is_fraud`` and ``dob`` are optional), by Spark type.
INPUT_TYPES: Mapping[str, str] = {
    "trans_num": "string",
    "cc_num": "string",
    "merchant": "string",
    "event_time": "bigint",
    LABEL_COLUMN: "tinyint",
    "category": "string",
    "amt": "double",
    "lat": "double",
    "long": "double",
    "merch_lat": "double",
    "merch_long": "double",
    "city_pop": "double",
    "dob": "string",
}
OPTIONAL_INPUTS = (LABEL_COLUMN, "dob")
LABEL_TYPES: Mapping[str, str] = {
    "trans_num": "string",
    "merchant": "string",
    "event_time": "bigint",
    "label_time": "bigint",
    "is_fraud": "tinyint",
}
#: Partition column of the feature table: the transaction's UTC day, ``YYYY-MM-DD``.
DAY_COLUMN = "dt"
DEFAULT_BUCKET_ROWS = 500_000
#: Rows per Parquet file of the feature table (~0.5 GB): a busy day is written as several files.
MAX_RECORDS_PER_FILE = 1_000_000
_BUCKET, _RANGE, _OWN = "_bucket", "_range", "_own"
_PANDAS_3_WARNING = "PySpark does not yet fully support pandas >= 3"


@dataclass(frozen=True, slots=True)
class SparkFeatureConfig:
    """How the rows are grouped. Any setting gives the same rows; they change time and memory."""

    #: Rows per group (card buckets and merchant buckets): each group is one pandas frame in one
    #: Python worker (~1.5 kB per row at its peak), so this bounds a worker's memory.
    bucket_rows: int = DEFAULT_BUCKET_ROWS
    #: A merchant with more transactions than this is split into time ranges of about this many
    #: rows (plus the context before each range); None: ``bucket_rows``.
    split_rows: int | None = None
    #: Fixed number of buckets (None: rows / ``bucket_rows``, at least 1).
    buckets: int | None = None

    def bucket_count(self, rows: int) -> int:
        return self.buckets or max(1, math.ceil(rows / self.bucket_rows))

    def split_threshold(self) -> int:
        return self.split_rows if self.split_rows is not None else self.bucket_rows


def context_seconds(label_delay: int) -> int:
    """What a merchant row's windows look back: the delayed risk windows (and the shorter volume
    windows), plus a day of slack; a split range's group carries this much history."""
    volume = max(seconds for _, seconds in spec.MERCHANT_VOLUME_WINDOWS)
    widest = max(label_delay + spec.MAX_MERCHANT_RISK_WINDOW, volume)
    return widest + spec.DAY


def quiet_pandas_warning() -> None:
    """PySpark 4 warns on every pandas conversion that pandas >= 3 is not fully supported; the
    features it carries (numbers and strings through Arrow) are checked by the parity test."""
    warnings.filterwarnings("ignore", message=_PANDAS_3_WARNING, category=FutureWarning)
    warnings.filterwarnings("ignore", message="The copy keyword is deprecated", module="pyspark")


def local_session(
    cores: int | None = None,
    driver_memory: str = "4g",
    shuffle_partitions: int | None = None,
    conf: Mapping[str, str] | None = None,
) -> SparkSession:
    """A local-mode SparkSession for the feature job (``cores``: None for all).

    Its Python workers run this interpreter (``PYSPARK_PYTHON``, when unset: otherwise Spark
    starts the system ``python3``, another version, and the workers fail); it binds to
    127.0.0.1, has no UI and uses UTC for day partitions. Local files are written without
    Hadoop's ``.crc`` side files: without its native library Hadoop sets each file's permissions
    by starting a ``chmod`` process, a cost paid per file (``docs/benchmarks.md``).
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    quiet_pandas_warning()
    builder = (
        SparkSession.builder.master(f"local[{cores or '*'}]")
        .appName("fraudsys-features")
        .config("spark.driver.memory", driver_memory)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions or 2 * (cores or os.cpu_count() or 2)))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.hadoop.fs.file.impl", "org.apache.hadoop.fs.RawLocalFileSystem")
    )
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def configure(spark: SparkSession) -> None:
    """Session settings the job relies on, also under ``spark-submit`` (a cluster's session)."""
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")


def canonical_input(frame: DataFrame) -> DataFrame:
    """The columns ``build_features`` reads, cast to ``INPUT_TYPES`` (a ``dob`` of Parquet date
    type becomes ``YYYY-MM-DD``; other columns, such as ingest's ``month``, are dropped)."""
    missing = [c for c in INPUT_TYPES if c not in frame.columns and c not in OPTIONAL_INPUTS]
    if missing:
        raise ValueError(f"the transactions lack the columns {missing}")
    columns = []
    for name, kind in INPUT_TYPES.items():
        if name not in frame.columns:
            continue
        column = sf.col(name)
        if name == "dob" and isinstance(frame.schema[name].dataType, DateType | TimestampType):
            column = sf.coalesce(sf.date_format(column, "yyyy-MM-dd"), sf.lit(""))
        columns.append(column.cast(kind).alias(name))
    return frame.select(*columns)


def canonical_labels(frame: DataFrame) -> DataFrame:
    missing = [c for c in LABEL_EVENT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"the label events lack the columns {missing}")
    return frame.select(*(sf.col(c).cast(LABEL_TYPES[c]).alias(c) for c in LABEL_EVENT_COLUMNS))


def _with_fields(schema: StructType, names: Sequence[str]) -> StructType:
    return StructType([*schema.fields, *(StructField(n, DoubleType(), False) for n in names)])


def _output_schema(schema: StructType) -> StructType:
    """``build_features``' columns: ``ID_COLUMNS``, ``is_fraud`` when present, the features."""
    ids = [schema[c] for c in (*ID_COLUMNS, LABEL_COLUMN) if c in schema.fieldNames()]
    return _with_fields(StructType(ids), spec.FEATURE_NAMES)


def _merchant_rows(
    columns: list[str], label_delay: int, transactions: pd.DataFrame, labels: pd.DataFrame | None
) -> pd.DataFrame:
    """One merchant group (with its label events; None: at the delay): its own rows, with
    ``MERCHANT_FEATURES`` (a split range's context rows are dropped)."""
    own = transactions[_OWN].to_numpy(dtype=bool) if len(transactions) else np.zeros(0, dtype=bool)
    if not own.any():  # a range holding only context, or labels of a merchant without transactions
        return pd.DataFrame(columns=[*columns, *MERCHANT_FEATURES])
    frame = transactions[columns]
    features = merchant_features(frame, label_delay, labels)
    return _plain(pd.concat([frame.loc[own], features.loc[own, list(MERCHANT_FEATURES)]], axis=1))


def _card_rows(columns: list[str], frame: pd.DataFrame) -> pd.DataFrame:
    """One card bucket: ``build_features``' rows from ``card_features`` and the carried merchant columns."""
    rows = card_features(frame[columns])
    merchant = frame[list(MERCHANT_FEATURES)]
    out = pd.concat([rows, merchant], axis=1)
    ids = [c for c in (*ID_COLUMNS, LABEL_COLUMN) if c in rows.columns]
    return _plain(out[[*ids, *spec.FEATURE_NAMES]])


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns as NumPy object arrays. With pandas 3 a group's text arrives as Arrow-backed
    ``str`` columns, chunked when the group came in several Arrow batches, and PySpark 4's
    writer of the returned frame fails on chunked arrays ("Cannot convert ChunkedArray")."""
    text = [
        str(name) for name, dtype in frame.dtypes.items() if isinstance(dtype, pd.StringDtype | pd.ArrowDtype)
    ]
    if not text:
        return frame
    return frame.assign(**{name: frame[name].to_numpy(dtype=object) for name in text})


def merchant_ranges(spark: SparkSession, transactions: DataFrame, threshold: int) -> DataFrame | None:
    """The merchants split into time ranges: those above ``threshold`` transactions, with their
    range length (``_seconds``: whole days, about ``threshold`` rows per range) and last range
    (``_last_range``: ranges are ``event_time // _seconds``); None when there are none."""
    big = (
        transactions.groupBy("merchant")
        .agg(
            sf.count("*").alias("n"), sf.min("event_time").alias("first"), sf.max("event_time").alias("last")
        )
        .where(sf.col("n") > threshold)
        .collect()
    )
    if not big:
        return None
    rows = []
    for row in big:
        span = int(row["last"]) - int(row["first"]) + 1
        seconds = max(spec.DAY, span * threshold // int(row["n"]) // spec.DAY * spec.DAY)
        rows.append((str(row["merchant"]), seconds, int(row["last"]) // seconds))
    return spark.createDataFrame(rows, "merchant string, _seconds bigint, _last_range bigint")


def _ranged(frame: DataFrame, time_column: str, splits: DataFrame | None, context: int) -> DataFrame:
    """``frame`` with ``_range`` (-1: the merchant is not split) and ``_own``; a row of a split
    merchant is repeated in every later range whose context it falls in."""
    if splits is None:
        return frame.withColumn(_RANGE, sf.lit(-1).cast("bigint")).withColumn(_OWN, sf.lit(True))
    joined = frame.join(sf.broadcast(splits), "merchant", "left")
    t, seconds = sf.col(time_column), sf.col("_seconds")
    first = sf.floor(t / seconds).cast("bigint")
    last = sf.greatest(
        first, sf.least(sf.floor((t + sf.lit(context)) / seconds).cast("bigint"), sf.col("_last_range"))
    )
    ranges = sf.when(seconds.isNull(), sf.array(sf.lit(-1).cast("bigint"))).otherwise(
        sf.sequence(first, last)
    )
    return (
        joined.withColumn("_first", sf.when(seconds.isNull(), sf.lit(-1).cast("bigint")).otherwise(first))
        .withColumn(_RANGE, sf.explode(ranges))
        .withColumn(_OWN, sf.col(_RANGE) == sf.col("_first"))
        .drop("_seconds", "_last_range", "_first")
    )


def feature_rows(
    spark: SparkSession,
    transactions: DataFrame,
    label_delay: int = spec.DEFAULT_LABEL_DELAY,
    labels: DataFrame | None = None,
    config: SparkFeatureConfig | None = None,
    rows: int | None = None,
) -> DataFrame:
    """``build_features(transactions, label_delay, labels)`` as a Spark DataFrame (no order).

    ``transactions``: any frame with the canonical columns ``build_features`` reads; ``labels``:
    label events (``LABEL_EVENT_COLUMNS``), default one per fraud at ``event_time + label_delay``
    (``label_events_at_delay``, applied to each merchant group); ``rows``: the number of
    transactions, if known (else counted, to choose the bucket count).
    """
    config = config or SparkFeatureConfig()
    configure(spark)
    transactions = canonical_input(transactions)
    columns = list(transactions.columns)
    buckets = config.bucket_count(rows if rows is not None else transactions.count())
    context = context_seconds(label_delay)
    splits = merchant_ranges(spark, transactions, config.split_threshold())

    def bucketed(frame: DataFrame, key: str) -> DataFrame:
        return frame.withColumn(_BUCKET, sf.pmod(sf.xxhash64(key), sf.lit(buckets)))

    by_merchant = _ranged(bucketed(transactions, "merchant"), "event_time", splits, context)
    merchant_schema = _with_fields(transactions.schema, MERCHANT_FEATURES)
    grouped = by_merchant.groupBy(_BUCKET, _RANGE)

    # closures, not functools.partial: applyInPandas reads the function's signature
    def merchant_group(frame: pd.DataFrame) -> pd.DataFrame:
        return _merchant_rows(columns, label_delay, frame, None)

    def merchant_cogroup(frame: pd.DataFrame, label_events: pd.DataFrame) -> pd.DataFrame:
        return _merchant_rows(columns, label_delay, frame, label_events[list(LABEL_EVENT_COLUMNS)])

    def card_group(frame: pd.DataFrame) -> pd.DataFrame:
        return _card_rows(columns, frame)

    if labels is None:
        merchant_rows = grouped.applyInPandas(merchant_group, schema=merchant_schema)
    else:
        label_events = _ranged(bucketed(canonical_labels(labels), "merchant"), "event_time", splits, context)
        merchant_rows = grouped.cogroup(label_events.groupBy(_BUCKET, _RANGE)).applyInPandas(
            merchant_cogroup, schema=merchant_schema
        )
    return (
        bucketed(merchant_rows, "cc_num")
        .groupBy(_BUCKET)
        .applyInPandas(card_group, schema=_output_schema(transactions.schema))
    )


def with_day(rows: DataFrame) -> DataFrame:
    """``rows`` with the partition column ``dt``: the UTC day of ``event_time``."""
    return rows.withColumn(DAY_COLUMN, sf.date_format(sf.timestamp_seconds("event_time"), "yyyy-MM-dd"))


def write_feature_table(rows: DataFrame, uri: str, mode: str = "overwrite") -> None:
    """The feature table: Parquet under ``uri``, partitioned by ``dt`` (``<uri>/dt=YYYY-MM-DD/``).

    The rows are first shuffled by day, so that each day is written by one task: one file per
    day (more above ``MAX_RECORDS_PER_FILE`` rows) instead of one per day and card bucket.
    """
    day = with_day(rows)
    (
        day.repartition(DAY_COLUMN)
        .write.mode(mode)
        .option("maxRecordsPerFile", MAX_RECORDS_PER_FILE)
        .partitionBy(DAY_COLUMN)
        .parquet(uri)
    )


def build_features_spark(
    df: pd.DataFrame,
    label_delay: int = spec.DEFAULT_LABEL_DELAY,
    labels: pd.DataFrame | None = None,
    *,
    spark: SparkSession | None = None,
    config: SparkFeatureConfig | None = None,
) -> pd.DataFrame:
    """``build_features`` computed by Spark, with its contract: the rows of ``df`` in its order and
    index (``trans_num`` unique). For frames that fit in memory (the pipeline, tests); a larger
    table goes from Parquet to Parquet (``run_job``). Without ``spark``: the active session, else
    a local one for this call."""
    if not df["trans_num"].is_unique:
        raise ValueError("trans_num is not unique: a transaction id is the tie-break of same-second events")
    if spark is None:
        with spark_session() as session:
            return build_features_spark(df, label_delay, labels, spark=session, config=config)
    quiet_pandas_warning()
    transactions = spark_frame(spark, df)
    label_frame = None if labels is None else spark_frame(spark, labels[list(LABEL_EVENT_COLUMNS)])
    out = feature_rows(spark, transactions, label_delay, label_frame, config, rows=len(df)).toPandas()
    position = pd.Index(out["trans_num"]).get_indexer(df["trans_num"].astype(str))
    if len(out) != len(df) or (position < 0).any():
        raise ValueError("the Spark feature rows do not match the transactions")
    rows: pd.DataFrame = out.iloc[position].set_axis(df.index)
    return rows.astype({name: df[name].dtype for name in (*ID_COLUMNS, LABEL_COLUMN) if name in rows})


def spark_frame(spark: SparkSession, frame: pd.DataFrame) -> DataFrame:
    """A pandas frame of transactions or label events as a Spark DataFrame (through Arrow), with
    the columns the job reads, typed as ``INPUT_TYPES`` / ``LABEL_TYPES``."""
    return spark.createDataFrame(_arrow_ready(frame))


def _arrow_ready(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns as ``INPUT_TYPES`` / ``LABEL_TYPES`` expect them (text as text, numbers as numbers)."""
    out = {}
    for name in frame.columns:
        kind = INPUT_TYPES.get(name) or LABEL_TYPES.get(name)
        column = frame[name]
        if kind is None:
            continue
        if kind == "string":
            out[name] = column.astype(str).to_numpy(dtype=object)
        elif kind == "double":
            out[name] = column.to_numpy(dtype=np.float64)
        elif kind == "bigint":
            out[name] = column.to_numpy(dtype=np.int64)
        else:
            out[name] = column.to_numpy(dtype=np.int8)
    return pd.DataFrame(out)


def score_rows(
    spark: SparkSession,
    transactions: DataFrame,
    model: Champion,
    start: int | None = None,
    end: int | None = None,
    config: SparkFeatureConfig | None = None,
) -> DataFrame:
    """``fraudsys score --engine spark``: the champion's scores (``scoring.SCORE_COLUMNS`` and
    ``event_time``) of the transactions dated in ``[start, end)``, from features built with the
    history before ``start`` that they need (``scoring.context_seconds``). The pandas engine
    streams the file by day and gives the same scores, except that there a row without a date of
    birth takes its card's latest one only from within that history (here: from any earlier row)."""
    from training.scoring import context_seconds as history
    from training.scoring import scores_of

    when = sf.col("event_time")
    if start is not None:
        transactions = transactions.where(when >= start - history(model.label_delay))
    if end is not None:
        transactions = transactions.where(when < end)
    rows = feature_rows(spark, transactions, model.label_delay, None, config)
    if start is not None:
        rows = rows.where(when >= start)

    def scored(parts: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for part in parts:
            yield scores_of(model, part).assign(event_time=part["event_time"].to_numpy())

    schema = "trans_num string, predicted_fraud tinyint, fraud_probability double, model_version string, "
    return rows.mapInPandas(scored, schema=schema + "event_time bigint")


def read_lake(spark: SparkSession, uri: str) -> tuple[DataFrame, DataFrame]:
    """The event lake's transactions (the columns ``canonical_input`` reads, ``cc_num`` = the card
    hash, ``is_fraud`` = the latest label by arrival, same second: fraud wins) and its label
    events, deduplicated by the rules of ``training.data.lake.read_lake`` (``docs/data.md``): a
    transaction's earliest arrival (then earliest ingest, then smallest source) wins; one label per
    (``trans_num``, ``label_time``, ``is_fraud``). ``uri``: the lake root (``events/`` below it)."""
    from pyspark.sql.window import Window

    from fraud_adapters.lake import EVENTS_PREFIX, SCHEMA_VERSION

    root = f"{uri.rstrip('/')}/{EVENTS_PREFIX}"
    events = spark.read.option("basePath", root).parquet(root)
    if not events.where(sf.col("schema_version") > SCHEMA_VERSION).isEmpty():
        raise ValueError(f"the lake holds rows of schema version > {SCHEMA_VERSION}: upgrade the reader")
    first = Window.partitionBy("trans_num").orderBy("arrival_time", "ingest_time", "source")
    transactions = (
        events.where(sf.col("kind") == "transaction")
        .withColumn("_n", sf.row_number().over(first))
        .where(sf.col("_n") == 1)
        .select(
            "trans_num",
            sf.col("card").alias("cc_num"),
            "merchant",
            "event_time",
            "category",
            "amt",
            "lat",
            "long",
            "merch_lat",
            "merch_long",
            "city_pop",
            "dob",
        )
    )
    labels = (
        events.where(sf.col("kind") == "label")
        .select(
            "trans_num",
            "merchant",
            "event_time",
            sf.col("arrival_time").alias("label_time"),
            sf.col("is_fraud").cast("tinyint").alias("is_fraud"),
        )
        .dropDuplicates(["trans_num", "label_time", "is_fraud"])
    )
    latest = Window.partitionBy("trans_num").orderBy(sf.col("label_time").desc(), sf.col("is_fraud").desc())
    targets = (
        labels.withColumn("_n", sf.row_number().over(latest))
        .where(sf.col("_n") == 1)
        .select("trans_num", sf.col("is_fraud").alias("_target"))
    )
    labelled = (
        transactions.join(targets, "trans_num", "left")
        .withColumn(LABEL_COLUMN, sf.coalesce(sf.col("_target"), sf.lit(0)).cast("tinyint"))
        .drop("_target")
    )
    return labelled, labels


def run_job(
    spark: SparkSession,
    transactions_uri: str | None,
    output_uri: str,
    label_delay: int = spec.DEFAULT_LABEL_DELAY,
    labels_uri: str | None = None,
    config: SparkFeatureConfig | None = None,
    lake_uri: str | None = None,
) -> None:
    """Parquet in (canonical transactions and optional label events, or the event lake), the
    feature table out: the job both local mode and a cluster run."""
    labels: DataFrame | None
    if lake_uri is not None:
        transactions, labels = read_lake(spark, lake_uri)
    elif transactions_uri is not None:
        transactions = spark.read.parquet(transactions_uri)
        labels = spark.read.parquet(labels_uri) if labels_uri else None
    else:
        raise ValueError("the job needs --transactions or --lake")
    write_feature_table(feature_rows(spark, transactions, label_delay, labels, config), output_uri)


@contextmanager
def spark_session(cores: int | None = None, driver_memory: str = "4g") -> Iterator[SparkSession]:
    """The active SparkSession if there is one (a test's, a notebook's), else a local one stopped
    at the end; under ``spark-submit`` the cluster's (its master and settings)."""
    quiet_pandas_warning()
    active = SparkSession.getActiveSession()
    if active is not None:
        yield active
        return
    if "PYSPARK_GATEWAY_PORT" in os.environ:  # started by spark-submit: its master, its settings
        session = SparkSession.builder.appName("fraudsys-features").getOrCreate()
    else:
        session = local_session(cores, driver_memory)
    try:
        yield session
    finally:
        session.stop()


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="spark_features",
        description="The point-in-time feature table (Parquet, partitioned by day) of canonical "
        "transactions: spark-submit training/spark_features.py ..., or python -m training.spark_features ... "
        "for local mode",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--transactions", help="Parquet URI: canonical columns (fraudsys ingest)")
    source.add_argument(
        "--lake", help="the event lake's root URI (events/ below it): transactions and label arrivals"
    )
    p.add_argument(
        "--labels",
        help="Parquet URI of label events (trans_num, merchant, event_time, label_time, is_fraud); "
        "default: one per fraud at event_time + label delay",
    )
    p.add_argument("--output", required=True, help="Parquet URI of the feature table (replaced)")
    p.add_argument("--label-delay", type=int, default=spec.DEFAULT_LABEL_DELAY, help="seconds")
    p.add_argument("--bucket-rows", type=int, default=DEFAULT_BUCKET_ROWS, help="rows per group")
    p.add_argument("--split-rows", type=int, default=None, help="split merchants above this many rows")
    p.add_argument("--cores", type=int, default=None, help="local mode: cores (default all)")
    p.add_argument("--driver-memory", default="4g", help="local mode: the JVM's heap")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """``spark-submit training/spark_features.py --transactions URI --output URI [...]``."""
    args = _parse(argv)
    config = SparkFeatureConfig(bucket_rows=args.bucket_rows, split_rows=args.split_rows)
    with spark_session(args.cores, args.driver_memory) as spark:
        run_job(spark, args.transactions, args.output, args.label_delay, args.labels, config, args.lake)


if __name__ == "__main__":
    main()
