"""Read and write the Kaggle "Credit Card Transactions Fraud Detection" CSV files.

`read_transactions_csv` loads a whole file into the canonical frame (`training.data.schema`).
`ingest_csv_to_parquet` streams large files (fraudTrain.csv: 1.3M rows, 335 MB) chunk by chunk
into Parquet partitions by month of `event_time`, `out_dir/month=YYYY-MM/part-NNNNN.parquet`,
with memory bounded by the chunk size; `read_parquet_dataset` reads them back canonical.
`write_transactions_csv` writes the exact Kaggle layout, so write -> read is lossless.

Every malformed header or cell raises `DataFormatError` naming the file, the 1-based data row
(row 1 = line 2, the first line after the header; blank lines are skipped) and the column.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from training.data.schema import (
    CANONICAL_COLUMNS,
    CANONICAL_DTYPES,
    KAGGLE_COLUMNS,
    KAGGLE_INDEX_ALIASES,
    DataFormatError,
    empty_frame,
    validate_frame,
)

type StrPath = str | os.PathLike[str]

DEFAULT_CHUNK_ROWS: Final = 250_000
PARTITION_PREFIX: Final = "month="
REPORT_FILE: Final = "_ingest.json"

_INDEX: Final = "_index"
_FILE_COLUMNS: Final[tuple[str, ...]] = (_INDEX, *KAGGLE_COLUMNS[1:])
_WHOLE_FILE_BLOCK_BYTES: Final = 8 << 20
# The streaming reader reads ~36 blocks ahead: 1 MB blocks keep that near 40 MB (8 MB blocks: ~300 MB).
_STREAM_BLOCK_BYTES: Final = 1 << 20
_WRITE_ROWS: Final = 100_000
_ARROW_TYPES: Final = {"str": pa.string(), "float64": pa.float64(), "int64": pa.int64(), "int8": pa.int8()}


class IngestReport(BaseModel):
    """What `ingest_csv_to_parquet` wrote."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sources: tuple[str, ...]
    out_dir: str
    rows: int
    frauds: int
    chunks: int
    files: int
    months: dict[str, int]
    seconds: float


def read_transactions_csv(path: StrPath) -> pd.DataFrame:
    """Load one Kaggle-format CSV into the canonical frame (whole file in memory)."""
    source = os.fspath(path)
    index_name = check_header(path)
    try:
        table = pcsv.read_csv(source, **_csv_options(block_bytes=_WHOLE_FILE_BLOCK_BYTES))
    except pa.ArrowInvalid as exc:
        raise _locate_parse_error(path, exc) from exc
    if table.num_rows == 0:
        return empty_frame()
    return _to_frame(table, source, 0, index_name, check_unique=True)


def iter_transactions_csv(path: StrPath, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """One Kaggle-format CSV as canonical frames of `chunk_rows` rows, read as a stream (memory
    bounded by the chunk size; `trans_num` uniqueness is checked within each chunk only)."""
    source = os.fspath(path)
    index_name = check_header(path)
    for first_row, table in _chunks(path, chunk_rows):
        yield _to_frame(table, source, first_row, index_name, check_unique=True)


def write_transactions_csv(df: pd.DataFrame, path: StrPath) -> None:
    """Write `df` (validated first) as a Kaggle CSV: unnamed 0..n-1 index column, Kaggle order.

    Formatting follows pandas' `to_csv` as used for the Kaggle files: minimal quoting, floats
    in shortest round-trip form with a trailing ".0" for whole numbers. The file is written
    next to `path` and renamed into place, so readers never see half a file.
    """
    frame = validate_frame(df)
    table = pa.Table.from_pandas(
        frame[list(KAGGLE_COLUMNS[1:])], schema=_arrow_schema(KAGGLE_COLUMNS[1:]), preserve_index=False
    )
    table = table.add_column(0, _INDEX, pa.array(np.arange(len(frame), dtype=np.int64)))
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    try:
        with partial.open("wb") as sink:
            sink.write((",".join(KAGGLE_COLUMNS) + "\n").encode())
            for start in range(0, table.num_rows, _WRITE_ROWS):
                sink.write(_csv_lines(table.slice(start, _WRITE_ROWS)))
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def _csv_lines(table: pa.Table) -> bytes:
    """The CSV text of `table` (no header), built column-wise with pyarrow compute."""
    cells = []
    for chunked, field in zip(table.itercolumns(), table.schema, strict=True):
        column = chunked.combine_chunks()
        if pa.types.is_string(field.type):
            quoted = pc.binary_join_element_wise('"', pc.replace_substring(column, '"', '""'), '"', "")
            cells.append(pc.if_else(pc.match_substring_regex(column, '[,"\r\n]'), quoted, column))
        elif pa.types.is_floating(field.type):
            text = column.cast(pa.string())
            whole = pc.match_substring_regex(text, r"^-?\d+$")
            cells.append(pc.if_else(whole, pc.binary_join_element_wise(text, ".0", ""), text))
        else:
            cells.append(column.cast(pa.string()))
    lines = pc.binary_join_element_wise(pc.binary_join_element_wise(*cells, ","), "\n", "")
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset : lines.offset + len(lines) + 1]
    data: bytes = lines.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_pybytes()
    return data


def ingest_csv_to_parquet(
    csv_path: StrPath | Sequence[StrPath],
    out_dir: StrPath,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    overwrite: bool = False,
) -> IngestReport:
    """Stream one or more Kaggle CSVs into one Parquet dataset partitioned by month.

    Reads `chunk_rows` rows at a time (pyarrow streaming CSV reader), validates each chunk,
    and writes `out_dir/month=YYYY-MM/part-NNNNN.parquet` (N = chunk number across all
    inputs, each part sorted by (event_time, trans_num)). The dataset is built in a sibling
    folder and renamed into place at the end: a failure leaves no partial dataset. An
    existing `out_dir` is replaced only with `overwrite=True` and only if it holds nothing
    but partitions and the `_ingest.json` report. `trans_num` uniqueness across chunks is
    checked by `read_parquet_dataset`, not here (that would need every id in memory).
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    paths = [csv_path] if isinstance(csv_path, (str, os.PathLike)) else list(csv_path)
    target = Path(out_dir)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists (pass overwrite=True to replace it)")
    if target.exists():
        _check_is_dataset(target)
    started = time.perf_counter()
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    months: dict[str, int] = {}
    rows = frauds = chunks = files = 0
    try:
        for path in paths:
            index_name = check_header(path)
            for first_row, table in _chunks(path, chunk_rows):
                frame = _to_frame(table, os.fspath(path), first_row, index_name, check_unique=True)
                for month, part in _split_by_month(frame):
                    folder = staging / f"{PARTITION_PREFIX}{month}"
                    folder.mkdir(exist_ok=True)
                    pq.write_table(_to_arrow(part), folder / f"part-{chunks:05d}.parquet", compression="zstd")
                    months[month] = months.get(month, 0) + len(part)
                    files += 1
                rows += len(frame)
                frauds += int(frame["is_fraud"].sum())
                chunks += 1
        report = IngestReport(
            sources=tuple(os.fspath(p) for p in paths),
            out_dir=os.fspath(target),
            rows=rows,
            frauds=frauds,
            chunks=chunks,
            files=files,
            months=dict(sorted(months.items())),
            seconds=round(time.perf_counter() - started, 3),
        )
        (staging / REPORT_FILE).write_text(report.model_dump_json(indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def read_parquet_dataset(
    out_dir: StrPath,
    *,
    months: Iterable[str] | None = None,
    start: int | None = None,
    end: int | None = None,
) -> pd.DataFrame:
    """Read a dataset written by `ingest_csv_to_parquet` (optionally only some 'YYYY-MM' months).

    `start` / `end` (epoch seconds, `end` exclusive): only the transactions dated in that range;
    the month partitions outside it are not opened, the others are filtered while read.
    """
    root = Path(out_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    wanted = None if months is None else {f"{PARTITION_PREFIX}{m}" for m in months}
    parts = sorted(
        p
        for p in root.glob(f"{PARTITION_PREFIX}*/part-*.parquet")
        if (wanted is None or p.parent.name in wanted) and _month_overlaps(p.parent.name, start, end)
    )
    if not parts:
        return empty_frame()
    filters = [("event_time", ">=", start)] if start is not None else []
    filters += [("event_time", "<", end)] if end is not None else []
    table = pa.concat_tables([pq.read_table(p, filters=filters or None) for p in parts])
    if table.num_rows == 0:
        return empty_frame()
    return validate_frame(table.to_pandas(), source=os.fspath(root))


def _month_overlaps(partition: str, start: int | None, end: int | None) -> bool:
    """Whether the partition `month=YYYY-MM` holds days in `[start, end)`."""
    month = np.datetime64(partition.removeprefix(PARTITION_PREFIX), "M")
    first = int(month.astype("datetime64[s]").astype(np.int64))
    after = int((month + np.timedelta64(1, "M")).astype("datetime64[s]").astype(np.int64))
    return (start is None or after > start) and (end is None or first < end)


def read_ingest_report(out_dir: StrPath) -> IngestReport:
    """The report `ingest_csv_to_parquet` left in `out_dir`."""
    return IngestReport.model_validate(json.loads((Path(out_dir) / REPORT_FILE).read_text()))


def check_header(path: StrPath) -> str:
    """Check the first line of `path` is the exact Kaggle header; return its index-column cell."""
    source = os.fspath(path)
    with Path(path).open(newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise DataFormatError(source, "empty file: no header line")
    if header[0] not in KAGGLE_INDEX_ALIASES:
        if header[0] == KAGGLE_COLUMNS[1]:
            raise DataFormatError(source, "header: missing the unnamed index column", column="")
        raise DataFormatError(
            source, f"header: expected the unnamed index column, found {header[0]!r}", column=header[0]
        )
    expected = KAGGLE_COLUMNS[1:]
    found = header[1:]
    for position, name in enumerate(expected):
        seen = found[position] if position < len(found) else None
        if seen == name:
            continue
        if name in found:
            reason = f"header: expected at position {position + 1}, found {seen!r} there"
        else:
            reason = "header: missing column" + (
                f" (found {seen!r} in its place)" if seen is not None else ""
            )
        raise DataFormatError(source, reason, column=name)
    if len(found) > len(expected):
        raise DataFormatError(source, "header: unexpected extra column", column=found[len(expected)])
    return header[0]


def _csv_options(*, block_bytes: int) -> dict[str, object]:
    return {
        "read_options": pcsv.ReadOptions(
            column_names=list(_FILE_COLUMNS), skip_rows=1, block_size=block_bytes, use_threads=True
        ),
        "parse_options": pcsv.ParseOptions(newlines_in_values=False),
        "convert_options": pcsv.ConvertOptions(
            column_types=dict.fromkeys(_FILE_COLUMNS, pa.string()),
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    }


def _chunks(path: StrPath, chunk_rows: int) -> Iterator[tuple[int, pa.Table]]:
    """(number of rows before the chunk, chunk) pairs of exactly `chunk_rows` rows (the last fewer)."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    emitted = 0
    try:
        reader = pcsv.open_csv(os.fspath(path), **_csv_options(block_bytes=_STREAM_BLOCK_BYTES))
        for batch in reader:
            pending.append(batch)
            pending_rows += batch.num_rows
            while pending_rows >= chunk_rows:
                table = pa.Table.from_batches(pending)
                yield emitted, table.slice(0, chunk_rows)
                rest = table.slice(chunk_rows)
                pending = rest.to_batches()
                pending_rows = rest.num_rows
                emitted += chunk_rows
    except pa.ArrowInvalid as exc:
        raise _locate_parse_error(path, exc) from exc
    if pending_rows:
        yield emitted, pa.Table.from_batches(pending)


def _to_frame(
    table: pa.Table, source: str, first_row: int, index_name: str, *, check_unique: bool
) -> pd.DataFrame:
    index = table.column(_INDEX)
    ok = pc.match_substring_regex(index, r"^\d+$").to_numpy(zero_copy_only=False)
    if not ok.all():
        position = int(np.argmin(ok))
        raise DataFormatError(
            source,
            f"could not parse {index[position].as_py()!r} as a row index (an integer)",
            row=first_row + position + 1,
            column=index_name,
        )
    frame = table.drop_columns([_INDEX]).to_pandas()
    return validate_frame(frame, source=source, row_offset=first_row, check_unique=check_unique)


def _locate_parse_error(path: StrPath, exc: Exception) -> DataFormatError:
    """Find the record pyarrow refused (it does not report positions) with the csv module."""
    source = os.fspath(path)
    row = 0
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as handle:
            records = csv.reader(handle, strict=True)
            next(records, None)
            for record in records:
                if not record:
                    continue
                row += 1
                if len(record) != len(KAGGLE_COLUMNS):
                    return DataFormatError(
                        source, f"expected {len(KAGGLE_COLUMNS)} fields, found {len(record)}", row=row
                    )
                broken = next((i for i, cell in enumerate(record) if "\n" in cell or "\r" in cell), None)
                if broken is not None:
                    column = KAGGLE_COLUMNS[broken]
                    return DataFormatError(source, "line break inside a quoted field", row=row, column=column)
    except (csv.Error, UnicodeDecodeError) as error:
        return DataFormatError(source, f"could not parse CSV: {error}", row=row + 1)
    return DataFormatError(source, f"could not parse CSV: {exc}")


def _split_by_month(frame: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    month = frame["event_time"].to_numpy().astype("datetime64[s]").astype("datetime64[M]")
    for value in np.unique(month):
        yield str(value), frame.loc[month == value]


def _arrow_schema(columns: Sequence[str]) -> pa.Schema:
    return pa.schema([(name, _ARROW_TYPES[CANONICAL_DTYPES[name]]) for name in columns])


def _to_arrow(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame, schema=_arrow_schema(CANONICAL_COLUMNS), preserve_index=False)


def _check_is_dataset(root: Path) -> None:
    strangers = [
        p.name for p in root.iterdir() if not (p.name.startswith(PARTITION_PREFIX) or p.name == REPORT_FILE)
    ]
    if strangers:
        raise FileExistsError(
            f"{root} holds more than a Parquet dataset ({strangers[0]!r}); not replacing it"
        )
