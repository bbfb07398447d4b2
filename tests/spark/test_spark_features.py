"""The Spark engine against the pandas engine: the same feature rows, row for row.

Real Spark in local mode (one session for the run, ``conftest.py``), no mock. The data: ~290,000
simulated transactions plus a busy merchant (35,000 transactions, split into time ranges by a low
``split_rows``), a busy card (4,000 transactions in 20 days, up to 5 in one second), same-second
ties, missing dates of birth; label events arriving early, at the delay and late, reversed (and
reported again), both ways in one second, redelivered, on legitimate transactions, naming another
merchant than their transaction's, and for unknown transactions.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
from pyspark.sql import SparkSession
from typer.testing import CliRunner

from fraud_core import spec
from fraudsys_cli import app
from training.data.simulator import SimulatorConfig, simulate
from training.dataset import ID_COLUMNS, LABEL_COLUMN, build_features, label_events_at_delay
from training.spark_features import (
    DAY_COLUMN,
    SparkFeatureConfig,
    build_features_spark,
    canonical_input,
    context_seconds,
    main,
    merchant_ranges,
    run_job,
    spark_frame,
)

DELAY = spec.DEFAULT_LABEL_DELAY
BUSY_MERCHANT = "fraud_Busy Megastore"
BUSY_CARD = "4000123412341234"
#: ~5 card buckets and ~5 merchant buckets; merchants above 6,000 rows (the busy one and the three
#: busiest simulated ones) are split into time ranges shorter than their context.
CONFIG = SparkFeatureConfig(bucket_rows=60_000, split_rows=6_000)
TOLERANCE = 1e-9
FEATURES = list(spec.FEATURE_NAMES)

pytestmark = [
    pytest.mark.spark,
    # PySpark 4.x on pandas 3 (the lock's): its own warnings; the parity below checks the values
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


def _ids(prefix: str, n: int) -> np.ndarray:
    return np.array([f"{prefix}-{i:07d}" for i in range(n)], dtype=object)


def make_transactions(seed: int = 11) -> pd.DataFrame:
    base = simulate(SimulatorConfig(seed=seed, n_cards=1000, n_merchants=150, n_days=100))
    rng = np.random.default_rng(seed)
    t0, t1 = int(base["event_time"].min()), int(base["event_time"].max())
    # the busy merchant: existing cards, the whole period, 2 % frauds
    busy = base.sample(n=25_000, replace=True, random_state=seed).assign(
        merchant=BUSY_MERCHANT,
        event_time=rng.integers(t0, t1, 25_000),
        trans_num=_ids("busy-merchant", 25_000),
        is_fraud=(rng.random(25_000) < 0.02).astype(np.int8),
    )
    # the busy card: 4,000 transactions in 20 days, 1 to 5 in the same second
    seconds = np.sort(rng.integers(t0 + 30 * spec.DAY, t0 + 50 * spec.DAY, 1_500))
    times = np.repeat(seconds, rng.integers(1, 6, len(seconds)))[:4_000]
    card = base.sample(n=len(times), replace=True, random_state=seed + 1).assign(
        cc_num=BUSY_CARD, event_time=times, trans_num=_ids("busy-card", len(times))
    )
    frame = pd.concat([base, busy, card], ignore_index=True)
    # same-second ties: 5 % of the rows take the time of their card's previous row
    frame = frame.sort_values(["cc_num", "event_time"], kind="stable").reset_index(drop=True)
    t = frame["event_time"].to_numpy().copy()
    same_card = np.r_[False, frame["cc_num"].to_numpy()[1:] == frame["cc_num"].to_numpy()[:-1]]
    tie = same_card & (rng.random(len(frame)) < 0.05)
    t[1:][tie[1:]] = t[:-1][tie[1:]]
    # no date of birth on 10 % of the rows (the card's earlier one is used)
    dob = np.array(frame["dob"], dtype=object)
    dob[rng.random(len(frame)) < 0.1] = ""
    frame = frame.assign(event_time=t, dob=dob)
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def make_labels(transactions: pd.DataFrame, seed: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frauds = label_events_at_delay(transactions, DELAY)
    n = len(frauds)
    arrival = frauds["label_time"].to_numpy().copy()
    late = rng.random(n) < 0.35  # after the delay: up to 60 days late
    arrival[late] += rng.integers(1, 60 * spec.DAY, late.sum())
    early = ~late & (rng.random(n) < 0.2)  # an hour after the transaction
    arrival[early] = frauds["event_time"].to_numpy()[early] + spec.HOUR
    first = frauds.assign(label_time=arrival)
    reversed_ = first.sample(frac=0.2, random_state=seed)
    reversal = reversed_.assign(
        label_time=reversed_["label_time"] + rng.integers(1, 20 * spec.DAY, len(reversed_)),
        is_fraud=np.int8(0),
    )
    again = reversal.sample(frac=0.3, random_state=seed).pipe(
        lambda r: r.assign(label_time=r["label_time"] + 3 * spec.DAY, is_fraud=np.int8(1))
    )
    both_ways = first.sample(n=60, random_state=seed + 1)
    both_ways = pd.concat([both_ways, both_ways.assign(is_fraud=np.int8(0))])
    legit = transactions.loc[transactions["is_fraud"].to_numpy() == 0].sample(n=300, random_state=seed)
    chargebacks = pd.DataFrame(
        {
            "trans_num": legit["trans_num"].to_numpy(),
            "merchant": legit["merchant"].to_numpy(),
            "event_time": legit["event_time"].to_numpy(),
            "label_time": legit["event_time"].to_numpy() + rng.integers(DELAY, DELAY + 40 * spec.DAY, 300),
            "is_fraud": np.int8(1),
        }
    )
    merchants = transactions["merchant"].unique()
    elsewhere = first.sample(n=50, random_state=seed + 2).assign(
        merchant=rng.choice(merchants, 50), label_time=lambda f: f["label_time"] + 1
    )
    unknown = chargebacks.head(40).assign(
        trans_num=_ids("unknown", 40), merchant=["fraud_Nowhere", *rng.choice(merchants, 39)]
    )
    events = pd.concat(
        [first, reversal, again, both_ways, chargebacks, elsewhere, unknown], ignore_index=True
    )
    redelivered = events.sample(frac=0.05, random_state=seed)
    return pd.concat([events, redelivered], ignore_index=True).sample(frac=1.0, random_state=seed)


@pytest.fixture(scope="module")
def transactions() -> pd.DataFrame:
    return make_transactions()


@pytest.fixture(scope="module")
def labels(transactions: pd.DataFrame) -> pd.DataFrame:
    return make_labels(transactions)


def assert_same_rows(expected: pd.DataFrame, actual: pd.DataFrame) -> None:
    """Row for row: ids and labels equal, every feature within 1e-9 (relative above 1)."""
    assert list(actual.columns) == list(expected.columns)
    assert len(actual) == len(expected)
    for name in (*ID_COLUMNS, LABEL_COLUMN):
        if name in expected:
            same = expected[name].astype(str).to_numpy() == actual[name].astype(str).to_numpy()
            assert same.all(), f"{name}: {(~same).sum()} rows differ"
    a = expected[FEATURES].to_numpy(dtype=np.float64)
    b = actual[FEATURES].to_numpy(dtype=np.float64)
    bad = ~(np.abs(a - b) <= TOLERANCE * np.maximum(1.0, np.abs(a)))
    rows, cols = bad.nonzero()
    shown = [
        f"{expected['trans_num'].iloc[r]} {FEATURES[c]}: pandas {a[r, c]!r} spark {b[r, c]!r}"
        for r, c in zip(rows[:10], cols[:10], strict=True)
    ]
    assert bad.sum() == 0, f"{bad.sum()} mismatches beyond {TOLERANCE}:\n" + "\n".join(shown)


def test_the_data_holds_what_the_parity_is_about(transactions: pd.DataFrame, labels: pd.DataFrame) -> None:
    assert 250_000 < len(transactions) < 400_000
    assert transactions["trans_num"].is_unique
    assert (transactions["merchant"] == BUSY_MERCHANT).sum() > 3 * CONFIG.split_threshold()
    busy = transactions.loc[transactions["cc_num"] == BUSY_CARD, "event_time"]
    assert busy.value_counts().max() >= 3  # several in one second
    assert transactions.duplicated(["cc_num", "event_time"]).sum() > 10_000  # same-second ties
    late = labels["label_time"] > labels["event_time"] + DELAY
    assert late.sum() > 1_000
    assert (labels["is_fraud"] == 0).sum() > 100  # reversals
    assert labels.duplicated().sum() > 0  # redeliveries


def test_spark_rows_equal_pandas_rows_with_label_arrivals(
    spark: SparkSession, transactions: pd.DataFrame, labels: pd.DataFrame
) -> None:
    # Given the busy merchant is split in time ranges by the configuration under test
    ranges = merchant_ranges(
        spark, canonical_input(spark_frame(spark, transactions)), CONFIG.split_threshold()
    )
    assert ranges is not None
    split = {row["merchant"]: row for row in ranges.collect()}
    busy = transactions.loc[transactions["merchant"] == BUSY_MERCHANT, "event_time"]
    first_range = int(busy.min()) // split[BUSY_MERCHANT]["_seconds"]
    assert split[BUSY_MERCHANT]["_last_range"] - first_range >= 3
    assert len(split) >= 3
    assert split[BUSY_MERCHANT]["_seconds"] < context_seconds(DELAY)  # ranges carry context rows
    # When both engines build the features of the same transactions and label events
    expected = build_features(transactions, DELAY, labels)
    actual = build_features_spark(transactions, DELAY, labels, spark=spark, config=CONFIG)
    # Then every row is the same
    assert_same_rows(expected, actual)
    assert expected["merch_fraud_cnt_30d"].max() > 0
    assert expected.loc[transactions["cc_num"] == BUSY_CARD, "card_cnt_1h"].max() > 30


def test_spark_rows_equal_pandas_rows_with_labels_at_the_delay(
    spark: SparkSession, transactions: pd.DataFrame
) -> None:
    # 60 days of the data, a 3-day delay, labels at the delay (no label table)
    window = transactions.loc[transactions["event_time"] < transactions["event_time"].min() + 60 * spec.DAY]
    config = SparkFeatureConfig(buckets=3, split_rows=5_000)
    expected = build_features(window, 3 * spec.DAY)
    actual = build_features_spark(window, 3 * spec.DAY, spark=spark, config=config)
    assert_same_rows(expected, actual)


def test_duplicate_transaction_ids_are_refused(spark: SparkSession, transactions: pd.DataFrame) -> None:
    frame = transactions.head(100)
    twice = pd.concat([frame, frame.head(1)], ignore_index=True)
    with pytest.raises(ValueError, match="trans_num is not unique"):
        build_features_spark(twice, spark=spark)


def _small(seed: int = 3) -> pd.DataFrame:
    return simulate(SimulatorConfig(seed=seed, n_cards=60, n_merchants=30, n_days=40))


def _read_table(folder: Path) -> pd.DataFrame:
    table: pd.DataFrame = ds.dataset(folder, format="parquet", partitioning="hive").to_table().to_pandas()
    return table.astype({DAY_COLUMN: str})


def test_the_parquet_job_writes_a_table_partitioned_by_day(spark: SparkSession, tmp_path: Path) -> None:
    # Given canonical transactions and label events as Parquet (as `fraudsys ingest` and a lake export)
    frame = _small()
    labels = make_labels(frame).head(400)
    frame.to_parquet(tmp_path / "transactions.parquet")
    labels.to_parquet(tmp_path / "labels.parquet")
    # When the job runs from Parquet to Parquet
    run_job(
        spark,
        str(tmp_path / "transactions.parquet"),
        str(tmp_path / "features"),
        DELAY,
        str(tmp_path / "labels.parquet"),
        SparkFeatureConfig(bucket_rows=3_000),
    )
    # Then the table has one folder per UTC day holding that day's rows, and build_features' values
    table = _read_table(tmp_path / "features")
    days = pd.to_datetime(table["event_time"], unit="s").dt.strftime("%Y-%m-%d")
    assert (table[DAY_COLUMN] == days).all()
    assert len(list((tmp_path / "features").glob("dt=*"))) == days.nunique()
    expected = build_features(frame, DELAY, labels)
    actual = table.set_index("trans_num").loc[expected["trans_num"]].reset_index()
    assert_same_rows(expected, actual[list(expected.columns)])


def test_the_entry_point_takes_spark_submit_arguments(spark: SparkSession, tmp_path: Path) -> None:
    frame = _small(seed=4)
    frame.to_parquet(tmp_path / "transactions.parquet")
    # the shared session is active: main() uses it (under spark-submit, the cluster's) and leaves it running
    main(["--transactions", str(tmp_path / "transactions.parquet"), "--output", str(tmp_path / "out")])
    assert not spark.sparkContext._jsc.sc().isStopped()
    table = _read_table(tmp_path / "out")
    expected = build_features(frame, DELAY)
    actual = table.set_index("trans_num").loc[expected["trans_num"]].reset_index()
    assert_same_rows(expected, actual[list(expected.columns)])


def test_cli_features_with_both_engines(spark: SparkSession, tmp_path: Path) -> None:
    runner = CliRunner()
    tiny = ["--set", "source.n_cards=40", "--set", "source.n_days=45", "--set", f"data_dir={tmp_path}"]
    pandas_out, spark_out = tmp_path / "pandas.parquet", tmp_path / "spark"
    done = runner.invoke(app, ["features", *tiny, "-o", str(pandas_out)])
    assert done.exit_code == 0, done.output
    done = runner.invoke(app, ["features", *tiny, "-o", str(spark_out), "--engine", "spark"])
    assert done.exit_code == 0, done.output
    assert "dt=*" in done.output
    expected = pd.read_parquet(pandas_out)
    table = _read_table(spark_out)
    actual = table.set_index("trans_num").loc[expected["trans_num"]].reset_index()
    assert_same_rows(expected, actual[list(expected.columns)])


@pytest.mark.slow
def test_cli_pipeline_and_score_with_the_spark_engine(spark: SparkSession, tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--set", f"data_dir={tmp_path}"]
    tiny = [
        *("--set", "source.n_cards=60", "--set", "source.n_days=60", *data),
        *("--set", "tuning.n_trials=1", "--set", "tuning.n_folds=2", "--set", "tuning.max_rounds=30"),
    ]
    # Given a champion trained on features built by Spark
    done = runner.invoke(app, ["pipeline", *tiny, "--engine", "spark"])
    assert done.exit_code == 0, done.output
    assert "champion" in done.output
    # When a file is scored from a day on with both engines
    csv = tmp_path / "sim.csv"
    done = runner.invoke(
        app, ["simulate", "-o", str(csv), "--n-cards", "50", "--n-days", "50", "--seed", "9"]
    )
    assert done.exit_code == 0, done.output
    scores = {}
    for engine in ("pandas", "spark"):
        out = tmp_path / f"scores-{engine}.csv"
        args = ["score", str(csv), "-o", str(out), "--from", "2019-01-20", *data, "--engine", engine]
        done = runner.invoke(app, args)
        assert done.exit_code == 0, done.output
        scores[engine] = pd.read_csv(out).set_index("trans_num").sort_index()
    # Then the same transactions get the same probabilities and decisions
    assert len(scores["pandas"]) > 1_000
    pd.testing.assert_frame_equal(scores["spark"], scores["pandas"], check_exact=False, rtol=1e-9)


def write_lake(frame: pd.DataFrame, labels: pd.DataFrame, root: Path, seed: int = 5) -> int:
    """``frame`` and ``labels`` as the archiver lays them out (``fraud_adapters.lake``), with 5 %
    of the transactions delivered again later with other values (the first arrival must win);
    returns the number of redelivered rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fraud_adapters.lake import lake_schema

    rng = np.random.default_rng(seed)
    arrival = frame["event_time"].to_numpy() + rng.integers(0, 5, len(frame))
    tx = pd.DataFrame(
        {
            "schema_version": np.int16(1),
            "kind": "transaction",
            "trans_num": frame["trans_num"].astype(str),
            "card": frame["cc_num"].astype(str),
            "merchant": frame["merchant"].astype(str),
            "category": frame["category"].astype(str),
            "amt": frame["amt"].astype(float),
            "event_time": frame["event_time"].astype(np.int64),
            "arrival_time": arrival,
            "lat": frame["lat"].astype(float),
            "long": frame["long"].astype(float),
            "city_pop": frame["city_pop"].astype(np.int64),
            "merch_lat": frame["merch_lat"].astype(float),
            "merch_long": frame["merch_long"].astype(float),
            "dob": pd.to_datetime(frame["dob"].replace("", None)).dt.date,
            "is_fraud": None,
            "reported_at": None,
            "source": [f"kafka:fraudsys.transactions-0@{i}" for i in range(len(frame))],
            "ingest_time": arrival * 1000,
        }
    )
    again = tx.sample(frac=0.05, random_state=seed)
    again = again.assign(
        arrival_time=again["arrival_time"] + 3_600,
        amt=again["amt"] * 7 + 1,
        ingest_time=again["ingest_time"] + 9,
    )
    lab = pd.DataFrame(
        {
            "schema_version": np.int16(1),
            "kind": "label",
            "trans_num": labels["trans_num"].astype(str),
            "card": None,
            "merchant": labels["merchant"].astype(str),
            "category": None,
            "amt": None,
            "event_time": labels["event_time"].astype(np.int64),
            "arrival_time": labels["label_time"].astype(np.int64),
            "lat": None,
            "long": None,
            "city_pop": None,
            "merch_lat": None,
            "merch_long": None,
            "dob": None,
            "is_fraud": labels["is_fraud"].astype(bool),
            "reported_at": None,
            "source": [f"kafka:fraudsys.labels-0@{i}" for i in range(len(labels))],
            "ingest_time": labels["label_time"].astype(np.int64) * 1000,
        }
    )
    for kind, rows, when in (
        ("transaction", pd.concat([tx, again]), "event_time"),
        ("label", lab, "arrival_time"),
    ):
        day = pd.to_datetime(rows[when], unit="s").dt.strftime("%Y-%m-%d")
        for value, part in rows.groupby(day):
            folder = root / "events" / f"kind={kind}" / f"dt={value}"
            folder.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pandas(part, schema=lake_schema(), preserve_index=False)
            pq.write_table(table, folder / "part-0.parquet")
    return len(again)


def test_the_job_reads_the_event_lake_as_training_reads_it(spark: SparkSession, tmp_path: Path) -> None:
    from training.data.lake import read_lake

    # Given an event lake with redelivered transactions and label arrivals (reversals, late ones)
    frame = simulate(SimulatorConfig(seed=5, n_cards=300, n_merchants=60, n_days=90))
    labels = make_labels(frame)
    redelivered = write_lake(frame, labels, tmp_path / "lake")
    assert redelivered > 100
    # When the job reads the lake itself (as the EMR Serverless step does)
    main(["--lake", str(tmp_path / "lake"), "--output", str(tmp_path / "out"), "--bucket-rows", "20000"])
    # Then it has the rows of build_features on the lake as the pandas pipeline reads it (the first
    # arrival of each transaction, the latest label by arrival as its target)
    lake = read_lake(str(tmp_path / "lake"))
    expected = build_features(lake.transactions, DELAY, lake.labels)
    table = _read_table(tmp_path / "out")
    assert len(table) == len(frame)
    actual = table.set_index("trans_num").loc[expected["trans_num"]].reset_index()
    assert_same_rows(expected, actual[list(expected.columns)])
    assert 0 < expected[LABEL_COLUMN].sum() < frame[LABEL_COLUMN].sum() + 300  # reversals and chargebacks
