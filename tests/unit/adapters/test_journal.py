"""The producer journal's format (``fraud_adapters.journal``): what a writer appends, a reader
gets back, torn tails included; segments roll and a reader can tell an open one from a closed one."""

from pathlib import Path

from fraud_adapters import journal
from fraud_adapters.journal import Journal, Span, read_entries


def _all(path: Path) -> list[journal.Entry]:
    return list(read_entries(path.read_bytes(), 0, 0))


def test_records_and_the_brokers_answers_are_read_back_in_order(tmp_path: Path) -> None:
    writer = Journal(tmp_path)
    first = writer.append([("t", b"k1", b"v1"), ("u", b"", b"v2")])
    second = writer.append([("t", b"k3", b'{"a": "\\n"}')])
    writer.acknowledged(first, [(0, 10), (1, 4)])
    writer.failed(second)

    (path,) = journal.segments(tmp_path)
    entries = _all(path)
    assert [(e.kind, e.index, e.count) for e in entries] == [
        (b"R", 0, 1),
        (b"R", 1, 1),
        (b"R", 2, 1),
        (b"A", 0, 2),
        (b"F", 2, 1),
    ]
    assert [e.record for e in entries[:3]] == [
        ("t", b"k1", b"v1"),
        ("u", b"", b"v2"),
        ("t", b"k3", b'{"a": "\\n"}'),
    ]
    assert entries[3].offsets == ((0, 10), (1, 4))
    assert (first, second) == (Span(0, 0, 2), Span(0, 2, 1))


def test_a_torn_or_damaged_tail_ends_the_segment(tmp_path: Path) -> None:
    writer = Journal(tmp_path)
    writer.append([("t", b"k", b"v" * 100)])
    writer.append([("t", b"k", b"w" * 100)])
    writer.close()
    (path,) = journal.segments(tmp_path)
    data = path.read_bytes()

    # a writer killed in the middle of its second write
    assert [e.record for e in read_entries(data[:-10], 0, 0)] == [("t", b"k", b"v" * 100)]
    # a damaged byte in the second record's value
    damaged = data[:-5] + b"x" + data[-4:]
    assert len(list(read_entries(damaged, 0, 0))) == 1
    # reading on from where a first read stopped numbers the records on
    first = next(read_entries(data, 0, 0))
    assert [(e.index, e.record) for e in read_entries(data, first.end, 1)] == [(1, ("t", b"k", b"w" * 100))]


def test_segments_roll_and_only_closed_ones_read_as_closed(tmp_path: Path) -> None:
    writer = Journal(tmp_path, segment_bytes=1)  # a new segment at every append
    spans = [writer.append([("t", b"k", f"v{i}".encode())]) for i in range(3)]
    assert [s.segment for s in spans] == [0, 1, 2]
    paths = journal.segments(tmp_path)
    assert len(paths) == 3
    assert [journal.closed(p) for p in paths] == [True, True, False]  # the writer holds the last
    # an answer for a closed segment is dropped (the relay sends its record again)
    writer.acknowledged(spans[0], [(0, 1)])
    assert [e.kind for e in _all(paths[0])] == [b"R"]
    writer.close()
    assert journal.closed(paths[2])


def test_an_fsynced_journal_reads_the_same(tmp_path: Path) -> None:
    writer = Journal(tmp_path, fsync=True)
    writer.append([("t", b"k", b"v")])
    writer.close()
    (path,) = journal.segments(tmp_path)
    assert [e.record for e in _all(path)] == [("t", b"k", b"v")]
