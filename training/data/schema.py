"""The canonical transaction frame shared by the Kaggle loader and the simulator.

Both `training.data.kaggle` and `training.data.simulator` return a pandas DataFrame with
exactly `CANONICAL_COLUMNS`, typed as `CANONICAL_DTYPES`, sorted by (`event_time`,
`trans_num`) with a fresh RangeIndex. `validate_frame` checks and coerces any frame into it.

`event_time` (int64 epoch seconds of `trans_date_trans_time` read as UTC) is the one time
axis of the project. Kaggle's own `unix_time` column is kept as-is but is offset by years
(2019-01-01 00:00:18 has unix_time 1325376018, i.e. 2012-01-01): never use it as a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fraud_core import spec

type ColumnKind = Literal["str", "float64", "int64", "int8"]

KAGGLE_INDEX_ALIASES: Final[tuple[str, ...]] = ("", "Unnamed: 0")
"""Accepted header cells of Kaggle's unnamed first (row index) column."""

KAGGLE_COLUMNS: Final[tuple[str, ...]] = (
    "",
    "trans_date_trans_time",
    "cc_num",
    "merchant",
    "category",
    "amt",
    "first",
    "last",
    "gender",
    "street",
    "city",
    "state",
    "zip",
    "lat",
    "long",
    "city_pop",
    "job",
    "dob",
    "trans_num",
    "unix_time",
    "merch_lat",
    "merch_long",
    "is_fraud",
)
"""Exact header of fraudTrain.csv / fraudTest.csv (first cell empty: the pandas row index)."""

CATEGORIES: Final[tuple[str, ...]] = spec.CATEGORIES
"""The 14 Sparkov merchant categories, in a fixed order (the feature spec's category codes)."""

ONLINE_CATEGORIES: Final[tuple[str, ...]] = tuple(sorted(spec.ONLINE_CATEGORIES))
"""Card-not-present categories: merchant coordinates are the merchant's seat, not a store."""

TIMESTAMP_FORMAT: Final = "%Y-%m-%d %H:%M:%S"
DATE_FORMAT: Final = "%Y-%m-%d"
TIMESTAMP_PATTERN: Final = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}"
DATE_PATTERN: Final = r"\d{4}-\d{2}-\d{2}"
CC_NUM_PATTERN: Final = r"\d{8,19}"

CANONICAL_COLUMNS: Final[tuple[str, ...]] = (*KAGGLE_COLUMNS[1:], "event_time")
"""Kaggle's named columns in Kaggle's order, then `event_time`."""

CANONICAL_DTYPES: Final[Mapping[str, ColumnKind]] = {
    "trans_date_trans_time": "str",
    "cc_num": "str",
    "merchant": "str",
    "category": "str",
    "amt": "float64",
    "first": "str",
    "last": "str",
    "gender": "str",
    "street": "str",
    "city": "str",
    "state": "str",
    "zip": "int64",
    "lat": "float64",
    "long": "float64",
    "city_pop": "int64",
    "job": "str",
    "dob": "str",
    "trans_num": "str",
    "unix_time": "int64",
    "merch_lat": "float64",
    "merch_long": "float64",
    "is_fraud": "int8",
    "event_time": "int64",
}
"""pandas dtype per canonical column; "str" is pandas' default string dtype (pyarrow-backed)."""

SORT_KEY: Final[tuple[str, str]] = ("event_time", "trans_num")

_FLOAT_PATTERN: Final = r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?"
_INT_PATTERN: Final = r"[-+]?\d{1,18}"
_LATITUDE_COLUMNS: Final = ("lat", "merch_lat")
_LONGITUDE_COLUMNS: Final = ("long", "merch_long")


class DataFormatError(ValueError):
    """A file or frame that does not follow the canonical/Kaggle schema.

    `source` names the file (or "frame"), `row` is the 1-based data row (the header is not
    counted: row 1 is the first transaction, on line 2 of a CSV), `column` the column name.
    """

    def __init__(self, source: str, reason: str, *, row: int | None = None, column: str | None = None):
        self.source = source
        self.reason = reason
        self.row = row
        self.column = column
        parts = ([f"row {row}"] if row is not None else []) + (
            [f"column {column!r}"] if column is not None else []
        )
        super().__init__(f"{source}: {', '.join(parts)}: {reason}" if parts else f"{source}: {reason}")


def empty_frame() -> pd.DataFrame:
    """A canonical frame with no rows."""
    return pd.DataFrame({name: pd.Series([], dtype=CANONICAL_DTYPES[name]) for name in CANONICAL_COLUMNS})


def validate_frame(
    df: pd.DataFrame,
    *,
    source: str = "frame",
    row_offset: int = 0,
    check_unique: bool = True,
) -> pd.DataFrame:
    """Check `df` against the canonical schema and return a canonical copy.

    Coerces dtypes (numbers given as text, card numbers given as integers, booleans for
    `is_fraud`...), computes `event_time` from `trans_date_trans_time` when absent (and checks
    it when present), checks value domains, drops other columns, sorts by (`event_time`,
    `trans_num`) and resets the index. Raises `DataFormatError` naming `source`, the 1-based
    row (position in `df` plus `row_offset`) and the column of the first bad cell. Card
    numbers stored as floats are refused: they have already lost digits.
    """
    missing = [c for c in CANONICAL_COLUMNS if c not in df.columns and c != "event_time"]
    if missing:
        raise DataFormatError(source, "missing column", column=missing[0])
    out: dict[str, pd.Series] = {}
    for name in CANONICAL_COLUMNS:
        if name == "event_time" and name not in df.columns:
            continue
        out[name] = _coerce(df[name], name, CANONICAL_DTYPES[name], source, row_offset)
    frame = pd.DataFrame(out)
    frame.index = pd.RangeIndex(len(frame))
    parsed_time = parse_timestamps(
        frame["trans_date_trans_time"], "trans_date_trans_time", source, row_offset
    )
    if "event_time" in frame.columns:
        _fail_first(
            frame["event_time"].to_numpy() != parsed_time,
            frame["event_time"],
            source,
            row_offset,
            "event_time",
            "does not match trans_date_trans_time read as UTC: {value!r}",
        )
    else:
        frame["event_time"] = parsed_time
    _check_values(frame, source, row_offset)
    if check_unique:
        ids = pa.chunked_array(pa.array(frame["trans_num"]))
        unique = len(pc.unique(ids)) == len(ids)
        dup = (
            np.zeros(len(frame), dtype=bool)
            if unique
            else frame["trans_num"].duplicated(keep="first").to_numpy()
        )
        _fail_first(dup, frame["trans_num"], source, row_offset, "trans_num", "duplicate trans_num {value!r}")
    return sort_frame(frame[list(CANONICAL_COLUMNS)])


def sort_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Sort by (`event_time`, `trans_num`) and reset the index; skips the sort when already sorted."""
    if not is_sorted(frame):
        frame = frame.sort_values(list(SORT_KEY), kind="stable")
    return frame.reset_index(drop=True)


def is_sorted(frame: pd.DataFrame) -> bool:
    """True when rows are in (`event_time`, `trans_num`) order."""
    t = frame["event_time"].to_numpy()
    if len(t) < 2:
        return True
    step = np.diff(t)
    if bool((step < 0).any()):
        return False
    tie = np.flatnonzero(step == 0)
    if len(tie) == 0:
        return True
    tn = frame["trans_num"]
    return bool((tn.iloc[tie].to_numpy() <= tn.iloc[tie + 1].to_numpy()).all())


def parse_timestamps(values: pd.Series, column: str, source: str, row_offset: int) -> npt.NDArray[np.int64]:
    """Epoch seconds of 'YYYY-MM-DD HH:MM:SS' strings read as UTC; `DataFormatError` on a bad cell."""
    return _parse_datetimes(values, column, source, row_offset, TIMESTAMP_PATTERN, TIMESTAMP_FORMAT)


def format_timestamps(epoch_seconds: npt.NDArray[np.int64]) -> pd.Series:
    """'YYYY-MM-DD HH:MM:SS' strings of epoch seconds read as UTC, as a "str" Series."""
    return pd.Series(timestamp_strings(epoch_seconds).to_pandas(), dtype="str")


def timestamp_strings(epoch_seconds: npt.NDArray[np.int64]) -> pa.StringArray:
    """'YYYY-MM-DD HH:MM:SS' (UTC) as an arrow string array; years 0..9999 (3x faster than strftime)."""
    seconds = np.asarray(epoch_seconds, dtype=np.int64)
    days = (seconds // 86_400).astype("datetime64[D]")
    months = days.astype("datetime64[M]")
    in_day = seconds % 86_400
    year = months.astype(np.int64) // 12 + 1970
    fields = (
        (0, year // 100),
        (2, year % 100),
        (5, months.astype(np.int64) % 12 + 1),
        (8, (days - months).astype(np.int64) + 1),
        (11, in_day // 3_600),
        (14, in_day % 3_600 // 60),
        (17, in_day % 60),
    )
    pairs = np.frombuffer("".join(f"{i:02d}" for i in range(100)).encode(), dtype=np.uint8).reshape(100, 2)
    text = np.empty((len(seconds), 19), dtype=np.uint8)
    text[:] = np.frombuffer(b"0000-00-00 00:00:00", dtype=np.uint8)
    for start, value in fields:
        text[:, start : start + 2] = pairs[value]
    offsets = np.arange(0, 19 * (len(seconds) + 1), 19, dtype=np.int32)
    return pa.StringArray.from_buffers(len(seconds), pa.py_buffer(offsets), pa.py_buffer(text))


def _parse_datetimes(
    values: pd.Series, column: str, source: str, row_offset: int, pattern: str, fmt: str
) -> npt.NDArray[np.int64]:
    fast = _parse_fixed_width(values, with_time=fmt == TIMESTAMP_FORMAT)
    if fast is not None:
        return fast
    ok = values.str.fullmatch(pattern).fillna(False).to_numpy(dtype=bool)
    parsed = pd.to_datetime(values.where(ok), format=fmt, errors="coerce")
    bad = ~ok | parsed.isna().to_numpy()
    seconds = np.where(bad, 0, parsed.to_numpy(dtype="datetime64[s]").astype(np.int64))
    # pandas normalises some impossible stamps (a 60th second): insist on an exact round trip
    width = 19 if fmt == TIMESTAMP_FORMAT else 10
    again = pc.utf8_slice_codeunits(timestamp_strings(seconds), 0, width)
    bad |= ~pc.equal(again, _arrow(values).combine_chunks()).fill_null(False).to_numpy(zero_copy_only=False)
    _fail_first(bad, values, source, row_offset, column, "could not parse {value!r} as " + _describe(fmt))
    return seconds


def _parse_fixed_width(values: pd.Series, *, with_time: bool) -> npt.NDArray[np.int64] | None:
    """Epoch seconds straight from the character bytes when every cell is a valid
    'YYYY-MM-DD[ HH:MM:SS]'; None when any is not (the caller then finds and reports it)."""
    width = 19 if with_time else 10
    array = _arrow(values).combine_chunks()
    n = len(array)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if array.null_count or not bool(np.all(pc.binary_length(array).to_numpy(zero_copy_only=False) == width)):
        return None
    offset_type = np.int64 if pa.types.is_large_string(array.type) else np.int32
    offsets = np.frombuffer(array.buffers()[1], dtype=offset_type)[array.offset : array.offset + n + 1]
    chars = np.frombuffer(array.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]].reshape(n, width)
    layout = "0000-00-00 00:00:00"[:width]
    separators = [i for i, c in enumerate(layout) if c != "0"]
    expected = np.frombuffer(layout.replace("0", "").encode(), dtype=np.uint8)
    digit_at = [i for i, c in enumerate(layout) if c == "0"]
    valid = np.all(chars[:, separators] == expected, axis=1) & np.all(
        chars[:, digit_at] - ord("0") <= 9, axis=1
    )

    def number(first: int, width: int) -> npt.NDArray[np.int64]:
        value = np.zeros(n, dtype=np.int64)
        for position in range(first, first + width):
            value = value * 10 + (chars[:, position].astype(np.int64) - ord("0"))
        return value

    year, month, day = number(0, 4), number(5, 2), number(8, 2)
    valid &= (year >= 1) & (month >= 1) & (month <= 12) & (day >= 1)
    month_start = np.where(valid, (year - 1970) * 12 + month - 1, 0).astype("datetime64[M]")
    first_day = month_start.astype("datetime64[D]").astype(np.int64)
    valid &= (
        day <= (month_start + np.timedelta64(1, "M")).astype("datetime64[D]").astype(np.int64) - first_day
    )
    seconds = (first_day + day - 1) * 86_400
    if with_time:
        hour, minute, second = number(11, 2), number(14, 2), number(17, 2)
        valid &= (hour < 24) & (minute < 60) & (second < 60)
        seconds += hour * 3_600 + minute * 60 + second
    if not valid.all():
        return None
    result: npt.NDArray[np.int64] = seconds.astype(np.int64)
    return result


def _is_empty(text: pd.Series) -> npt.NDArray[np.bool_]:
    empty: npt.NDArray[np.bool_] = (
        pc.binary_length(_arrow(text)).to_numpy(zero_copy_only=False) == 0
    ).astype(bool)
    return empty


def _arrow(values: pd.Series) -> pa.ChunkedArray:
    return pa.chunked_array(pa.array(values))


def _matches(values: pd.Series, pattern: str) -> npt.NDArray[np.bool_]:
    """Whole-cell regex match (RE2) as a numpy mask; missing cells do not match."""
    found = pc.fill_null(pc.match_substring_regex(_arrow(values), f"^(?:{pattern})$"), False)
    mask: npt.NDArray[np.bool_] = found.to_numpy(zero_copy_only=False).astype(bool)
    return mask


def _describe(fmt: str) -> str:
    return "a timestamp 'YYYY-MM-DD HH:MM:SS'" if fmt == TIMESTAMP_FORMAT else "a date 'YYYY-MM-DD'"


def _coerce(values: pd.Series, column: str, kind: ColumnKind, source: str, row_offset: int) -> pd.Series:
    values = values.reset_index(drop=True)
    _fail_first(values.isna().to_numpy(), values, source, row_offset, column, "missing value")
    if kind == "str":
        if pd.api.types.is_float_dtype(values.dtype):
            raise DataFormatError(
                source, "must be text or integers, got floats (they lose digits)", column=column
            )
        if pd.api.types.is_bool_dtype(values.dtype):
            raise DataFormatError(source, "must be text, got booleans", column=column)
        text = values if str(values.dtype) == "str" else values.astype("str")
        _fail_first(_is_empty(text), text, source, row_offset, column, "missing value")
        return text
    if pd.api.types.is_bool_dtype(values.dtype):
        return values.astype(kind)
    if not pd.api.types.is_numeric_dtype(values.dtype):
        values = _parse_numbers(values, column, kind, source, row_offset)
    if kind == "float64":
        floats = values.astype("float64")
        _fail_first(
            ~np.isfinite(floats.to_numpy()),
            floats,
            source,
            row_offset,
            column,
            "not a finite number: {value!r}",
        )
        return floats
    array = values.to_numpy()
    if np.issubdtype(array.dtype, np.floating):
        _fail_first(array != np.round(array), values, source, row_offset, column, "not an integer: {value!r}")
    if kind == "int8":
        _fail_first(
            (array < -128) | (array > 127), values, source, row_offset, column, "out of range: {value!r}"
        )
    return pd.Series(array.astype(kind))


def _parse_numbers(
    values: pd.Series, column: str, kind: ColumnKind, source: str, row_offset: int
) -> pd.Series:
    """Text to numbers: one pyarrow cast when every cell is fine, else locate the first bad cell."""
    text = values if str(values.dtype) == "str" else values.astype("str")
    _fail_first(_is_empty(text), text, source, row_offset, column, "missing value")
    target = pa.float64() if kind == "float64" else pa.int64()
    try:
        return pd.Series(pa.array(text).cast(target).to_numpy(zero_copy_only=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    ok = text.str.fullmatch(_FLOAT_PATTERN if kind == "float64" else _INT_PATTERN).to_numpy(dtype=bool)
    numbers = pd.to_numeric(text.where(ok), errors="coerce")
    what = "a number" if kind == "float64" else "an integer"
    _fail_first(
        ~ok | numbers.isna().to_numpy(),
        text,
        source,
        row_offset,
        column,
        "could not parse {value!r} as " + what,
    )
    return numbers.astype(kind)


def _check_values(frame: pd.DataFrame, source: str, row_offset: int) -> None:
    def fail(mask: npt.NDArray[np.bool_], column: str, reason: str) -> None:
        _fail_first(mask, frame[column], source, row_offset, column, reason)

    for column, kind in CANONICAL_DTYPES.items():
        if kind == "str" and _may_hold_line_breaks(frame[column]):
            fail(
                frame[column].str.contains("[\r\n]").to_numpy(dtype=bool),
                column,
                "line break in text {value!r}",
            )
    fail(~frame["is_fraud"].isin([0, 1]).to_numpy(), "is_fraud", "expected 0 or 1, got {value!r}")
    fail(~frame["category"].isin(CATEGORIES).to_numpy(), "category", "unknown category {value!r}")
    fail(
        ~_matches(frame["cc_num"], CC_NUM_PATTERN),
        "cc_num",
        "card number must be 8 to 19 digits, got {value!r}",
    )
    amt = frame["amt"].to_numpy()
    fail(amt < 0, "amt", "negative amount {value!r}")
    fail(np.abs(amt * 100 - np.round(amt * 100)) > 1e-6, "amt", "amount {value!r} has more than 2 decimals")
    for column in _LATITUDE_COLUMNS:
        lat = frame[column].to_numpy()
        fail((lat < -90) | (lat > 90), column, "latitude {value!r} out of range [-90, 90]")
    for column in _LONGITUDE_COLUMNS:
        lon = frame[column].to_numpy()
        fail((lon < -180) | (lon > 180), column, "longitude {value!r} out of range [-180, 180]")
    zips = frame["zip"].to_numpy()
    fail((zips < 0) | (zips > 99999), "zip", "zip code {value!r} out of range [0, 99999]")
    fail(frame["city_pop"].to_numpy() < 0, "city_pop", "negative population {value!r}")
    fail(
        ~_matches(frame["state"], r"[A-Z]{2}"),
        "state",
        "state must be two capital letters, got {value!r}",
    )
    _parse_datetimes(frame["dob"], "dob", source, row_offset, DATE_PATTERN, DATE_FORMAT)
    frame["amt"] = np.round(amt, 2)


def _may_hold_line_breaks(text: pd.Series) -> bool:
    """Scan the raw character buffers (fast); True also when a buffer holds bytes outside the slice."""
    for chunk in pa.chunked_array(pa.array(text)).chunks:
        data = chunk.buffers()[2]
        if data is not None:
            raw = data.to_pybytes()
            if b"\n" in raw or b"\r" in raw:
                return True
    return False


def _fail_first(
    mask: npt.NDArray[np.bool_],
    values: pd.Series,
    source: str,
    row_offset: int,
    column: str,
    reason: str,
) -> None:
    if not mask.any():
        return
    position = int(np.argmax(mask))
    value = values.iloc[position]
    shown: object = value.item() if isinstance(value, np.generic) else value
    raise DataFormatError(source, reason.format(value=shown), row=row_offset + position + 1, column=column)
