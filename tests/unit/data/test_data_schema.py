"""validate_frame: the canonical frame contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.data.kaggle import read_transactions_csv
from training.data.schema import (
    CANONICAL_COLUMNS,
    CANONICAL_DTYPES,
    CATEGORIES,
    KAGGLE_COLUMNS,
    DataFormatError,
    empty_frame,
    format_timestamps,
    validate_frame,
)

FIXTURE = Path(__file__).parent / "fixtures" / "kaggle_sample.csv"


@pytest.fixture
def canonical() -> pd.DataFrame:
    return read_transactions_csv(FIXTURE)


def test_constants_match_the_kaggle_dataset() -> None:
    assert len(KAGGLE_COLUMNS) == 23
    assert KAGGLE_COLUMNS[0] == ""
    assert len(CATEGORIES) == 14
    assert list(CATEGORIES) == sorted(CATEGORIES)
    assert (*KAGGLE_COLUMNS[1:], "event_time") == CANONICAL_COLUMNS
    assert set(CANONICAL_DTYPES) == set(CANONICAL_COLUMNS)


def test_validate_is_idempotent_on_a_canonical_frame(canonical: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(validate_frame(canonical), canonical)


def test_coerces_a_naively_read_frame(canonical: pd.DataFrame) -> None:
    # given: pandas' default read -- cc_num as int64, index column present, no event_time
    naive = pd.read_csv(FIXTURE)
    assert naive["cc_num"].dtype == "int64"
    # when
    frame = validate_frame(naive)
    # then
    pd.testing.assert_frame_equal(frame, canonical)


def test_computes_event_time_and_sorts(canonical: pd.DataFrame) -> None:
    # given
    shuffled = canonical.drop(columns="event_time").iloc[::-1]
    shuffled["is_fraud"] = shuffled["is_fraud"].astype(bool)
    # when
    frame = validate_frame(shuffled)
    # then
    pd.testing.assert_frame_equal(frame, canonical)


def test_refuses_card_numbers_stored_as_floats(canonical: pd.DataFrame) -> None:
    broken = canonical.assign(cc_num=canonical["cc_num"].astype("float64"))
    # then
    with pytest.raises(DataFormatError, match="column 'cc_num': must be text or integers, got floats"):
        validate_frame(broken)


def test_refuses_event_time_that_disagrees_with_the_timestamp(canonical: pd.DataFrame) -> None:
    broken = canonical.copy()
    broken["event_time"] = broken["event_time"].where(broken.index != 2, broken["unix_time"])
    # then
    with pytest.raises(DataFormatError, match="frame: row 3, column 'event_time': does not match"):
        validate_frame(broken)


def test_refuses_line_breaks_in_text(canonical: pd.DataFrame) -> None:
    broken = canonical.copy()
    broken.loc[1, "street"] = "1 Main St\nApt 2"
    # then
    with pytest.raises(DataFormatError, match="row 2, column 'street': line break"):
        validate_frame(broken)


def test_missing_column_and_missing_value(canonical: pd.DataFrame) -> None:
    with pytest.raises(DataFormatError, match="column 'merch_lat': missing column"):
        validate_frame(canonical.drop(columns="merch_lat"))
    broken = canonical.copy()
    broken.loc[4, "amt"] = float("nan")
    with pytest.raises(DataFormatError, match=r"my\.csv: row 15, column 'amt': missing value"):
        validate_frame(broken, source="my.csv", row_offset=10)


def test_empty_frame_is_canonical() -> None:
    frame = validate_frame(empty_frame())
    assert tuple(frame.columns) == CANONICAL_COLUMNS
    assert {c: str(t) for c, t in frame.dtypes.items()} == dict(CANONICAL_DTYPES)


def test_format_timestamps_is_utc() -> None:
    assert format_timestamps(np.array([0, 1546300818], dtype=np.int64)).tolist() == [
        "1970-01-01 00:00:00",
        "2019-01-01 00:00:18",
    ]


@pytest.mark.parametrize(
    ("stamp", "ok"),
    [
        ("2020-02-29 23:59:59", True),
        ("2019-02-29 10:00:00", False),
        ("2019-04-31 10:00:00", False),
        ("2019-01-01 24:00:00", False),
        ("2019-01-01 23:60:00", False),
        ("2019-01-01 23:59:60", False),
        ("2019-00-10 10:00:00", False),
        ("2019-1-01 10:00:00", False),
        ("2019-01-01T10:00:00", False),
        ("2019-01-01 10:00:00 ", False),
    ],
)
def test_timestamps_are_parsed_strictly(canonical: pd.DataFrame, stamp: str, ok: bool) -> None:
    # given: the stamp on the second row, event_time recomputed
    frame = canonical.drop(columns="event_time")
    frame["trans_date_trans_time"] = frame["trans_date_trans_time"].where(frame.index != 1, stamp)
    # then
    if ok:
        parsed = validate_frame(frame)
        assert stamp in set(parsed["trans_date_trans_time"])
        assert (
            format_timestamps(parsed["event_time"].to_numpy()).tolist()
            == parsed["trans_date_trans_time"].tolist()
        )
    else:
        with pytest.raises(DataFormatError, match="row 2, column 'trans_date_trans_time': could not parse"):
            validate_frame(frame)
