"""Byte strings of many rows at once, built with numpy (``fraudsys backfill``'s bulk writes).

A column of byte strings is held as ``Texts``: a 2-D ``uint8`` array, one row per value, each
value left-aligned and zero-padded to the widest, with the lengths (``None`` when every value
has the array's width: the common case, a transaction id or a time of fixed length, where the
array is a view of the Arrow buffer). ``join`` concatenates, row by row, such columns and
constant bytes: it lays them side by side in one ``rows x width`` array and keeps the bytes
that are part of a value (a boolean mask, row-major: the values' bytes in order), so the cost
is a few passes over ``rows x width`` bytes in C, whatever the lengths, and no Python per row.

The RESP protocol's bulk strings (``$<length>\\r\\n<bytes>\\r\\n``) of a column are ``resp``.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

type _Bytes = np.ndarray[Any, np.dtype[np.uint8]]
type _Ints = np.ndarray[Any, np.dtype[np.int64]]


@dataclass(frozen=True, slots=True)
class Texts:
    """One byte string per row: ``data[i, :lengths[i]]`` (``lengths`` ``None``: every row is
    ``data.shape[1]`` bytes)."""

    data: _Bytes
    lengths: _Ints | None = None

    def __len__(self) -> int:
        return len(self.data)

    @property
    def width(self) -> int:
        return int(self.data.shape[1])

    def sizes(self) -> _Ints:
        """The length of each row's value."""
        if self.lengths is None:
            return np.full(len(self.data), self.width, dtype=np.int64)
        return self.lengths

    def take(self, rows: _Ints) -> "Texts":
        """The values of ``rows``, in that order (``np.take`` copies whole rows: several times
        faster than fancy indexing a 2-D array)."""
        return Texts(
            np.take(self.data, rows, axis=0), None if self.lengths is None else np.take(self.lengths, rows)
        )


def texts(array: pa.Array | pa.ChunkedArray) -> Texts:
    """The values of a string or binary Arrow array (no nulls) as ``Texts``: a view of its data
    when all have one length, else a padded copy."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.null_count:
        raise ValueError("a text column holds nulls")
    if pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type):
        offset_type: Any = np.int64
    elif pa.types.is_string(array.type) or pa.types.is_binary(array.type):
        offset_type = np.int32
    else:
        raise TypeError(f"not a string or binary array: {array.type}")
    n = len(array)
    if n == 0:
        return Texts(np.empty((0, 0), dtype=np.uint8))
    _, offsets_buffer, values_buffer = array.buffers()
    size = np.dtype(offset_type).itemsize
    offsets = np.frombuffer(offsets_buffer, dtype=offset_type, count=n + 1, offset=array.offset * size)
    offsets = offsets.astype(np.int64)
    start, end = int(offsets[0]), int(offsets[-1])
    values = np.empty(0, np.uint8) if values_buffer is None else np.frombuffer(values_buffer, dtype=np.uint8)
    values = values[start:end]
    lengths = np.diff(offsets)
    width = int(lengths.max())
    if int(lengths.min()) == width:
        return Texts(values.reshape(n, width))
    data = np.zeros((n, width), dtype=np.uint8)
    data[_below(lengths, width)] = values
    return Texts(data, lengths)


def fixed(data: np.ndarray[Any, Any]) -> Texts:
    """Rows of one width: a 2-D array of any dtype (its rows' bytes), or 1-D of a fixed-size
    dtype (a structured array: each row's bytes)."""
    rows = np.ascontiguousarray(data)
    return Texts(rows.view(np.uint8).reshape(len(rows), -1))


def decimal(values: np.ndarray[Any, Any]) -> Texts:
    """Integers as ASCII decimal (``str(int)``)."""
    return texts(pc.cast(pa.array(np.asarray(values, dtype=np.int64)), pa.string()))


def resp(*parts: Texts | bytes) -> list[Texts | bytes]:
    """The parts of the RESP bulk strings of ``parts``' concatenation, row by row:
    ``$<length>\\r\\n<parts>\\r\\n``."""
    lengths = sum(p.sizes() if isinstance(p, Texts) else len(p) for p in parts)
    if isinstance(lengths, int) or int(lengths.min()) == int(lengths.max()):
        return [b"$%d\r\n" % (lengths if isinstance(lengths, int) else int(lengths[0])), *parts, b"\r\n"]
    return [b"$", decimal(lengths), b"\r\n", *parts, b"\r\n"]


def join(parts: Sequence[Texts | bytes], rows: _Ints | None = None) -> tuple[_Bytes, _Ints]:
    """Per row (of ``rows``, default all, in that order), ``parts`` (columns, or bytes repeated
    on every row) back to back: the bytes of all rows, and each row's offset (row ``i`` is
    ``data[offsets[i]:offsets[i + 1]]``; ``len(offsets)`` is the number of rows + 1)."""
    columns = [p.take(rows) if isinstance(p, Texts) and rows is not None else p for p in parts]
    n = next((len(p) for p in columns if isinstance(p, Texts)), None)
    if n is None:
        raise ValueError("join needs at least one column")
    width = sum(len(p) if isinstance(p, bytes) else p.width for p in columns)
    out = np.empty((n, width), dtype=np.uint8)
    mask: np.ndarray[Any, np.dtype[np.bool_]] | None = None
    sizes: _Ints = np.zeros(n, dtype=np.int64)
    at = 0
    for part in columns:
        if isinstance(part, bytes):
            out[:, at : at + len(part)] = np.frombuffer(part, dtype=np.uint8)
            sizes += len(part)
            at += len(part)
            continue
        out[:, at : at + part.width] = part.data
        if part.lengths is not None:
            if mask is None:
                mask = np.ones((n, width), dtype=bool)
            mask[:, at : at + part.width] = _below(part.lengths, part.width)
            sizes += part.lengths
        else:
            sizes += part.width
        at += part.width
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return (out.reshape(-1) if mask is None else out[mask]), offsets


def _below(lengths: _Ints, width: int) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """``mask[i, j]``: ``j < lengths[i]`` (the bytes of each row's value)."""
    return np.arange(width) < lengths[:, None]
