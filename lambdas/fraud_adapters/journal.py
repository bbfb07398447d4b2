"""A producer journal (the "transactional outbox" of a stream producer), for the local stack.

The local broker keeps its log in memory: a broker killed loses what it had acknowledged and
nobody had consumed yet. So every local producer appends each record (topic, key, value) to an
append-only journal on disk *before* it sends it, and marks afterwards whether the broker
acknowledged it (``A``) or not (``F``). A relay (``local_stack.relay``) re-sends what a broker
lost or never took, and deletes the segments whose records every consumer group has consumed.

Layout: one directory; each writer (one per producer object: an API process's publisher, a
replay, ...) writes its own segment files ``<writer>-<seq>.jnl``, one at a time, holding an
exclusive ``flock`` on the open one (the relay treats a segment it can lock as closed: its writer
rolled over to the next one, or died). A new segment is created as ``.tmp``, locked, then renamed,
so a reader never sees an unlocked segment that is still being written. A segment is rolled at
its next append once it holds ``segment_bytes`` or is ``segment_seconds`` old.

Entries (big-endian):

- ``R`` crc32(u32) topic_len(u16) key_len(u16) value_len(u32) topic key value: a record; the
  records of a segment are numbered 0, 1, ... in order.
- ``A`` first(u32) count(u32), then per record partition(i32) offset(i64): records
  ``first .. first+count-1`` were acknowledged by the broker, there (the relay compares these
  offsets with the consumer groups' committed offsets to trim the journal).
- ``F`` first(u32) count(u32): their publish failed (or timed out: maybe delivered later).

Each ``append`` is one ``write`` (the records of one publish call: a group commit), followed by
an ``fdatasync`` when ``fsync`` (an operating-system crash then loses nothing either; without it,
a process killed loses nothing, the page cache keeps what was written). Markers are written
without sync: a marker lost only makes the relay send the record again, and the consumers are
idempotent. A torn tail (a writer killed in the middle of a write) ends a segment for readers.
"""

import fcntl
import logging
import os
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("fraudsys.journal")

SUFFIX = ".jnl"
RECORD = b"R"
ACKED = b"A"
FAILED = b"F"
_RECORD_HEAD = struct.Struct(">IHHI")
_MARK = struct.Struct(">II")
_OFFSET = struct.Struct(">iq")

#: topic, key, value of one record as the broker gets it
type Record = tuple[str, bytes, bytes]


@dataclass(frozen=True)
class Span:
    """Records ``first .. first+count-1`` of the segment ``segment`` of a journal."""

    segment: int
    first: int
    count: int


def encode_record(topic: str, key: bytes, value: bytes) -> bytes:
    name = topic.encode()
    crc = zlib.crc32(value, zlib.crc32(key, zlib.crc32(name)))
    return RECORD + _RECORD_HEAD.pack(crc, len(name), len(key), len(value)) + name + key + value


class Journal:
    """One writer's journal in ``directory`` (thread-safe)."""

    def __init__(
        self,
        directory: Path,
        fsync: bool = False,
        segment_bytes: int = 8 << 20,
        segment_seconds: float = 30.0,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.segment_seconds = segment_seconds
        self.writer = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._segment = -1
        self._records = 0  # records in the open segment
        self._bytes = 0
        self._opened = 0.0
        self.appended = 0  # records appended in all (this writer)

    def _path(self, segment: int) -> Path:
        return self.directory / f"{self.writer}-{segment:06d}{SUFFIX}"

    def _open(self) -> int:
        self._segment += 1
        final = self._path(self._segment)
        tmp = final.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(tmp, final)
        self._fd, self._records, self._bytes, self._opened = fd, 0, 0, time.monotonic()
        return fd

    def _close_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock: the relay now treats the segment as closed
            self._fd = None

    def append(self, records: Sequence[Record]) -> Span:
        """Write ``records`` (one write, then a sync when ``fsync``) and return where they are."""
        data = b"".join(encode_record(topic, key, value) for topic, key, value in records)
        with self._lock:
            if self._fd is not None and (
                self._bytes >= self.segment_bytes or time.monotonic() - self._opened >= self.segment_seconds
            ):
                self._close_segment()
            fd = self._fd if self._fd is not None else self._open()
            _write_all(fd, data)
            if self.fsync:
                os.fdatasync(fd)
            span = Span(self._segment, self._records, len(records))
            self._records += len(records)
            self._bytes += len(data)
            self.appended += len(records)
            return span

    def acknowledged(self, span: Span, offsets: Sequence[tuple[int, int]]) -> None:
        """The broker acknowledged ``span``'s records at these (partition, offset), in order."""
        if len(offsets) != span.count:
            raise ValueError(f"{span.count} records, {len(offsets)} offsets")
        where = b"".join(_OFFSET.pack(partition, offset) for partition, offset in offsets)
        self._mark(ACKED + _MARK.pack(span.first, span.count) + where, span)

    def failed(self, span: Span) -> None:
        """``span``'s publish failed or timed out: the relay sends its records again."""
        self._mark(FAILED + _MARK.pack(span.first, span.count), span)

    def _mark(self, entry: bytes, span: Span) -> None:
        """Dropped when ``span``'s segment is already closed: the relay then sends its records
        again (harmless: the consumers are idempotent)."""
        with self._lock:
            if self._fd is not None and span.segment == self._segment:
                _write_all(self._fd, entry)
                self._bytes += len(entry)

    def close(self) -> None:
        with self._lock:
            self._close_segment()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# --------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Entry:
    """One entry read back: a record (``kind`` ``R``, its ``index`` in the segment, ``record``)
    or a marker (``A``/``F``, records ``index .. index+count-1``; ``A``: their (partition,
    offset)). ``end``: the byte after it."""

    kind: bytes
    index: int
    count: int
    end: int
    record: Record | None = None
    offsets: tuple[tuple[int, int], ...] = ()


def read_entries(data: bytes, start: int, first_index: int) -> Iterator[Entry]:
    """The whole entries of ``data`` from byte ``start`` (records numbered from ``first_index``);
    stops at an incomplete or damaged entry (a tail being written, or torn by a crash)."""
    pos, index = start, first_index
    size = len(data)
    while pos < size:
        kind = data[pos : pos + 1]
        if kind == RECORD:
            head_end = pos + 1 + _RECORD_HEAD.size
            if head_end > size:
                return
            crc, topic_len, key_len, value_len = _RECORD_HEAD.unpack_from(data, pos + 1)
            end = head_end + topic_len + key_len + value_len
            if end > size:
                return
            topic = data[head_end : head_end + topic_len]
            key = data[head_end + topic_len : head_end + topic_len + key_len]
            value = data[head_end + topic_len + key_len : end]
            if zlib.crc32(value, zlib.crc32(key, zlib.crc32(topic))) != crc:
                log.warning("journal: damaged record at byte %d; the segment ends there", pos)
                return
            yield Entry(RECORD, index, 1, end, (topic.decode(), key, value))
            index += 1
        elif kind in (ACKED, FAILED):
            end = pos + 1 + _MARK.size
            if end > size:
                return
            first, count = _MARK.unpack_from(data, pos + 1)
            offsets: tuple[tuple[int, int], ...] = ()
            if kind == ACKED:
                start_offsets, end = end, end + count * _OFFSET.size
                if end > size:
                    return
                offsets = tuple(
                    _OFFSET.unpack_from(data, start_offsets + i * _OFFSET.size) for i in range(count)
                )
            yield Entry(kind, first, count, end, offsets=offsets)
        else:
            log.warning("journal: unknown entry %r at byte %d; the segment ends there", kind, pos)
            return
        pos = end


def segments(directory: Path) -> list[Path]:
    """The journal's segment files (not the ``.tmp`` of one being created)."""
    return sorted(directory.glob(f"*{SUFFIX}")) if directory.exists() else []


def closed(path: Path) -> bool:
    """Whether no writer holds ``path`` (it rolled over to its next segment, or died)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # releases the lock if it was taken
    return True
