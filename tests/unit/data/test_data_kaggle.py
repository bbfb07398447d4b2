"""Kaggle CSV loader: exact header, canonical frame, lossless round trips, Parquet ingest, errors."""

from __future__ import annotations

import csv
import io
import string
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from training.data.kaggle import (
    ingest_csv_to_parquet,
    read_ingest_report,
    read_parquet_dataset,
    read_transactions_csv,
    write_transactions_csv,
)
from training.data.schema import (
    CANONICAL_COLUMNS,
    CANONICAL_DTYPES,
    CATEGORIES,
    KAGGLE_COLUMNS,
    DataFormatError,
    validate_frame,
)

FIXTURE = Path(__file__).parent / "fixtures" / "kaggle_sample.csv"
EXAMPLE_ROW = (
    '0,2019-01-01 00:00:18,2703186189652095,"fraud_Rippin, Kub and Mann",misc_net,4.97,Jennifer,Banks,F,'
    '561 Perry Cove,Moravian Falls,NC,28654,36.0788,-81.1781,3495,"Psychologist, counselling",1988-03-09,'
    "0b242abb623afc578575680df30addb9,1325376018,36.011293,-82.048315,0"
)
HEADER = ",".join(KAGGLE_COLUMNS)


def fixture_lines() -> list[str]:
    return FIXTURE.read_text().splitlines()


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_canonical(frame: pd.DataFrame) -> None:
    assert tuple(frame.columns) == CANONICAL_COLUMNS
    assert {c: str(frame[c].dtype) for c in frame.columns} == dict(CANONICAL_DTYPES)
    assert isinstance(frame.index, pd.RangeIndex)
    assert frame.index.start == 0
    keys = list(zip(frame["event_time"], frame["trans_num"], strict=True))
    assert keys == sorted(keys)


def test_fixture_starts_with_the_exact_kaggle_header_and_example_row() -> None:
    lines = fixture_lines()
    assert lines[0] == HEADER
    assert lines[0].startswith(",trans_date_trans_time,cc_num,merchant,")
    assert lines[1] == EXAMPLE_ROW


def test_reads_the_example_row_into_the_canonical_frame() -> None:
    # when
    frame = read_transactions_csv(FIXTURE)
    # then
    assert_canonical(frame)
    assert len(frame) == 6
    first = frame.iloc[0].to_dict()
    assert first == {
        "trans_date_trans_time": "2019-01-01 00:00:18",
        "cc_num": "2703186189652095",
        "merchant": "fraud_Rippin, Kub and Mann",
        "category": "misc_net",
        "amt": 4.97,
        "first": "Jennifer",
        "last": "Banks",
        "gender": "F",
        "street": "561 Perry Cove",
        "city": "Moravian Falls",
        "state": "NC",
        "zip": 28654,
        "lat": 36.0788,
        "long": -81.1781,
        "city_pop": 3495,
        "job": "Psychologist, counselling",
        "dob": "1988-03-09",
        "trans_num": "0b242abb623afc578575680df30addb9",  # pragma: allowlist secret
        "unix_time": 1325376018,
        "merch_lat": 36.011293,
        "merch_long": -82.048315,
        "is_fraud": 0,
        "event_time": 1546300818,  # 2019-01-01T00:00:18Z, not Kaggle's unix_time
    }
    assert frame["is_fraud"].tolist() == [0, 0, 0, 0, 1, 0]
    assert frame.loc[3, "merchant"] == 'fraud_Bode, "Big Al" and Sons'


def test_accepts_the_pandas_unnamed_index_header(tmp_path: Path) -> None:
    lines = fixture_lines()
    lines[0] = "Unnamed: 0" + lines[0]
    # then
    assert read_transactions_csv(write_lines(tmp_path / "t.csv", lines)).equals(
        read_transactions_csv(FIXTURE)
    )


def test_rows_are_sorted_by_event_time_then_trans_num(tmp_path: Path) -> None:
    lines = fixture_lines()
    shuffled = [lines[0], *reversed(lines[1:])]
    # then
    assert read_transactions_csv(write_lines(tmp_path / "t.csv", shuffled)).equals(
        read_transactions_csv(FIXTURE)
    )


def test_write_reproduces_the_kaggle_file_byte_for_byte(tmp_path: Path) -> None:
    # given
    frame = read_transactions_csv(FIXTURE)
    # when
    write_transactions_csv(frame, tmp_path / "out.csv")
    # then
    assert (tmp_path / "out.csv").read_bytes() == FIXTURE.read_bytes()
    assert read_transactions_csv(tmp_path / "out.csv").equals(frame)


def test_header_only_file_is_an_empty_canonical_frame(tmp_path: Path) -> None:
    frame = read_transactions_csv(write_lines(tmp_path / "empty.csv", [HEADER]))
    # then
    assert len(frame) == 0
    assert_canonical(frame)


text = st.text(alphabet=string.ascii_letters + string.digits + " ,.\"-'/éü", min_size=1, max_size=20)


@st.composite
def canonical_rows(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(min_value=1, max_value=8))
    times = draw(st.lists(st.integers(1_500_000_000, 1_700_000_000), min_size=n, max_size=n))
    cents = draw(st.lists(st.integers(0, 10**7), min_size=n, max_size=n))
    dates = st.dates(date(1900, 1, 1), date(2010, 12, 31))
    coords = st.floats(-89.999999, 89.999999, allow_nan=False).map(lambda x: round(x, 6))
    return pd.DataFrame(
        {
            "trans_date_trans_time": pd.to_datetime(times, unit="s").strftime("%Y-%m-%d %H:%M:%S"),
            "cc_num": draw(
                st.lists(st.from_regex(r"[1-9][0-9]{11,18}", fullmatch=True), min_size=n, max_size=n)
            ),
            "merchant": draw(st.lists(text, min_size=n, max_size=n)),
            "category": draw(st.lists(st.sampled_from(CATEGORIES), min_size=n, max_size=n)),
            "amt": [c / 100 for c in cents],
            "first": draw(st.lists(text, min_size=n, max_size=n)),
            "last": draw(st.lists(text, min_size=n, max_size=n)),
            "gender": draw(st.lists(st.sampled_from(["F", "M"]), min_size=n, max_size=n)),
            "street": draw(st.lists(text, min_size=n, max_size=n)),
            "city": draw(st.lists(text, min_size=n, max_size=n)),
            "state": draw(st.lists(st.from_regex(r"[A-Z]{2}", fullmatch=True), min_size=n, max_size=n)),
            "zip": draw(st.lists(st.integers(0, 99999), min_size=n, max_size=n)),
            "lat": draw(st.lists(coords, min_size=n, max_size=n)),
            "long": draw(st.lists(coords, min_size=n, max_size=n)),
            "city_pop": draw(st.lists(st.integers(0, 10**7), min_size=n, max_size=n)),
            "job": draw(st.lists(text, min_size=n, max_size=n)),
            "dob": draw(st.lists(dates.map(date.isoformat), min_size=n, max_size=n)),
            "trans_num": [f"{i:032x}" for i in range(n)],
            "unix_time": draw(st.lists(st.integers(-(2**40), 2**40), min_size=n, max_size=n)),
            "merch_lat": draw(st.lists(coords, min_size=n, max_size=n)),
            "merch_long": draw(st.lists(coords, min_size=n, max_size=n)),
            "is_fraud": draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)),
        }
    )


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=canonical_rows())
def test_write_then_read_is_lossless(tmp_path: Path, rows: pd.DataFrame) -> None:
    # when
    write_transactions_csv(rows, tmp_path / "rt.csv")
    again = read_transactions_csv(tmp_path / "rt.csv")
    # then
    pd.testing.assert_frame_equal(again, validate_frame(rows))
    write_transactions_csv(again, tmp_path / "rt2.csv")
    assert (tmp_path / "rt2.csv").read_bytes() == (tmp_path / "rt.csv").read_bytes()


def test_ingest_partitions_by_month_and_reads_back_identical(tmp_path: Path) -> None:
    # given
    expected = read_transactions_csv(FIXTURE)
    # when
    report = ingest_csv_to_parquet(FIXTURE, tmp_path / "ds", chunk_rows=2)
    # then
    assert report.rows == 6
    assert report.frauds == 1
    assert report.chunks == 3
    assert report.months == {"2019-01": 3, "2019-02": 2, "2019-03": 1}
    parts = sorted(p.relative_to(tmp_path / "ds").as_posix() for p in (tmp_path / "ds").rglob("*.parquet"))
    assert parts == [
        "month=2019-01/part-00000.parquet",
        "month=2019-01/part-00001.parquet",
        "month=2019-02/part-00001.parquet",
        "month=2019-02/part-00002.parquet",
        "month=2019-03/part-00002.parquet",
    ]
    back = read_parquet_dataset(tmp_path / "ds")
    pd.testing.assert_frame_equal(back, expected)
    assert read_ingest_report(tmp_path / "ds") == report
    february = read_parquet_dataset(tmp_path / "ds", months=["2019-02"])
    pd.testing.assert_frame_equal(february, expected.iloc[3:5].reset_index(drop=True))


def test_ingest_of_several_files_is_one_dataset_and_refuses_to_clobber(tmp_path: Path) -> None:
    # given
    lines = fixture_lines()
    first = write_lines(tmp_path / "a.csv", lines[:4])
    second = write_lines(tmp_path / "b.csv", [lines[0], *lines[4:]])
    # when
    ingest_csv_to_parquet([first, second], tmp_path / "ds")
    # then
    pd.testing.assert_frame_equal(read_parquet_dataset(tmp_path / "ds"), read_transactions_csv(FIXTURE))
    with pytest.raises(FileExistsError):
        ingest_csv_to_parquet(first, tmp_path / "ds")
    assert ingest_csv_to_parquet(first, tmp_path / "ds", overwrite=True).rows == 3
    assert len(read_parquet_dataset(tmp_path / "ds")) == 3


def test_failed_ingest_leaves_nothing_behind(tmp_path: Path) -> None:
    lines = fixture_lines()
    lines[5] = lines[5].replace(",941.57,", ",oops,")
    # when
    with pytest.raises(DataFormatError, match="row 5, column 'amt'"):
        ingest_csv_to_parquet(write_lines(tmp_path / "bad.csv", lines), tmp_path / "ds", chunk_rows=2)
    # then
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_duplicate_trans_num_is_refused(tmp_path: Path) -> None:
    lines = fixture_lines()
    path = write_lines(tmp_path / "dup.csv", [*lines, "6" + lines[1][1:]])
    # then
    with pytest.raises(DataFormatError, match=r"dup\.csv: row 7, column 'trans_num': duplicate"):
        read_transactions_csv(path)


@pytest.mark.parametrize(
    ("header", "column"),
    [
        (HEADER.replace(",amt,", ",amount,"), "amt"),
        (HEADER.replace(",merch_long", ""), "merch_long"),
        (HEADER.replace(",city,state,", ",state,city,"), "city"),
        (HEADER + ",extra", "extra"),
        (HEADER[1:], ""),
        ("idx" + HEADER, "idx"),
    ],
)
def test_bad_header_names_file_and_column(tmp_path: Path, header: str, column: str) -> None:
    path = write_lines(tmp_path / "fraudTrain.csv", [header, *fixture_lines()[1:]])
    # then
    with pytest.raises(DataFormatError) as caught:
        read_transactions_csv(path)
    assert caught.value.column == column
    assert str(caught.value).startswith(f"{path}: column {column!r}: header")
    with pytest.raises(DataFormatError):
        ingest_csv_to_parquet(path, tmp_path / "ds")


def test_empty_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="empty file"):
        read_transactions_csv(write_lines(tmp_path / "e.csv", []))


def replace_cell(line: str, column: str, value: str) -> str:
    fields = next(csv.reader([line]))
    fields[KAGGLE_COLUMNS.index(column)] = value
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("amt", "abc", "could not parse 'abc' as a number"),
        ("amt", "-5.00", "negative amount -5.0"),
        ("amt", "", "missing value"),
        ("amt", "1.005", "more than 2 decimals"),
        (
            "trans_date_trans_time",
            "2019-13-01 00:00:00",
            "could not parse '2019-13-01 00:00:00' as a timestamp",
        ),
        ("trans_date_trans_time", "2019-01-01", "as a timestamp"),
        ("dob", "03/09/1988", "as a date"),
        ("is_fraud", "2", "expected 0 or 1, got 2"),
        ("is_fraud", "yes", "could not parse 'yes' as an integer"),
        ("lat", "95.1", "latitude 95.1 out of range"),
        ("merch_long", "-181", "longitude -181.0 out of range"),
        ("cc_num", "2.703186e+15", "card number must be 8 to 19 digits"),
        ("category", "groceries", "unknown category 'groceries'"),
        ("zip", "2865a", "could not parse '2865a' as an integer"),
        ("city_pop", "-3", "negative population"),
        ("unix_time", "13253.5", "as an integer"),
        ("first", "", "missing value"),
        ("", "x", "as a row index"),
    ],
)
@pytest.mark.parametrize("reader", ["csv", "ingest"])
def test_bad_cell_names_file_row_and_column(
    tmp_path: Path, column: str, value: str, reason: str, reader: str
) -> None:
    # given: a bad cell on data row 4 (line 5)
    lines = fixture_lines()
    lines[4] = replace_cell(lines[4], column, value)
    path = write_lines(tmp_path / "fraudTrain.csv", lines)
    # when
    with pytest.raises(DataFormatError) as caught:
        load(reader, path, tmp_path / "ds")
    # then
    assert caught.value.row == 4
    assert caught.value.column == column
    assert str(caught.value).startswith(f"{path}: row 4, column {column!r}: ")
    assert reason in str(caught.value)


def load(reader: str, path: Path, out_dir: Path) -> None:
    if reader == "csv":
        read_transactions_csv(path)
    else:
        ingest_csv_to_parquet(path, out_dir, chunk_rows=3)


def test_ragged_row_names_file_and_row(tmp_path: Path) -> None:
    lines = fixture_lines()
    lines[3] = lines[3].rsplit(",", 1)[0]
    path = write_lines(tmp_path / "fraudTest.csv", lines)
    # then
    for attempt in (lambda: read_transactions_csv(path), lambda: ingest_csv_to_parquet(path, tmp_path / "d")):
        with pytest.raises(DataFormatError, match=r"fraudTest\.csv: row 3: expected 23 fields, found 22"):
            attempt()


def test_amounts_are_rounded_to_cents_and_cards_stay_text() -> None:
    frame = read_transactions_csv(FIXTURE)
    # then
    assert np.array_equal(frame["amt"].to_numpy(), np.round(frame["amt"].to_numpy(), 2))
    assert frame["cc_num"].tolist()[1] == "630423337322"
