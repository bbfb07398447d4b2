"""``fraud_adapters.byte_rows`` (the backfill's byte layout) gives, row by row, what Python's
bytes concatenation and RESP encoding give, for values of any lengths, in any row order."""

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from fraud_adapters import byte_rows

values = st.lists(st.binary(max_size=40), min_size=1, max_size=30)


def _resp(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


@settings(max_examples=300, deadline=None)
@given(
    first=values,
    data=st.data(),
    constant=st.binary(max_size=5),
    large=st.booleans(),
    offset=st.integers(0, 3),
)
def test_rows_joined_and_taken_are_pythons(
    first: list[bytes], data: st.DataObject, constant: bytes, large: bool, offset: int
) -> None:
    # given two columns of byte strings (one an Arrow slice: its data starts at an offset), integers
    n = len(first)
    second = data.draw(st.lists(st.binary(max_size=40), min_size=n + offset, max_size=n + offset))
    numbers = data.draw(st.lists(st.integers(-(2**62), 2**62), min_size=n, max_size=n))
    rows = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=2 * n)), dtype=np.int64)
    kind = pa.large_binary() if large else pa.binary()
    a = byte_rows.texts(pa.array(first, kind))
    b = byte_rows.texts(pa.array(second, pa.binary()).slice(offset))
    c = byte_rows.decimal(np.array(numbers, dtype=np.int64))

    # when their RESP bulk strings and a constant are joined, for the rows taken in any order
    parts = [*byte_rows.resp(a), constant, *byte_rows.resp(b, constant, c)]
    out, offsets = byte_rows.join(parts, rows)

    # then each row holds what Python's concatenation gives
    expected = [
        _resp(first[i]) + constant + _resp(second[offset + i] + constant + str(numbers[i]).encode())
        for i in rows.tolist()
    ]
    assert [bytes(out[offsets[i] : offsets[i + 1]]) for i in range(len(rows))] == expected
