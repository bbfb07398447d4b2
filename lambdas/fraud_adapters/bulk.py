"""Bulk writes of the online store and the transaction index from columns (``fraudsys backfill``).

The updater's path (``RedisFeatureStore.apply``) costs ~45 us of Python per event (pydantic
events, script arguments packed one by one) and ~4 us of Redis per event (one ``redis.call`` per
event inside the scripts). This writer builds the same state from Arrow columns:

- members, keys and the commands' RESP bytes are built column-wise (numpy: ``byte_rows``) with
  the store's own encodings (``card_member_tails``, ``merchant_hash_codes``,
  ``tx_index.BulkValues``); Python touches each card, merchant and index bucket, not each
  event (but for the index's content digest: one hashlib call per transaction);
- a card's members go in with one native ``ZADD``, then the store's ``apply_card`` script in bulk
  mode (``-1`` events) derives the rest from the set (profile, older profile, trim, tiles, TTLs),
  in the same ``MULTI``/``EXEC``: no other client (the live updater) runs between the two, so
  the result is the one the updater's script builds whatever interleaves with the stream;
- a card's rows below its retention point (its newest row's time minus ``card_keep``) are not
  sent, as the script would trim them at once (the set's newest member is never older than the
  card's newest row), but for those with a date of birth at their greatest time: the profile and
  the older profile come from them as from all (they are counted late, as the script counts them);
- a ``ZADD`` of more members than a listpack holds (``zset-max-listpack-entries``) starts its set
  as a skiplist (a first member too long for a listpack, removed in the same ``MULTI``): a
  listpack looks each new member up in the whole set, so filling one up to the limit before the
  conversion costs a scan per member (the limit read with ``CONFIG GET``, Redis' default 128 where
  ``CONFIG`` is not allowed; it decides the encoding, never the content);
- a card with more than the store's ``write_chunk`` events (a busy card, whose tiles are kept
  event by event) goes through ``apply_card`` with pre-encoded arguments, ``write_chunk`` per call;
- a merchant's transactions go in with one ``ZADD``, then ``apply_merchant`` with no event trims
  its keys and sets their TTLs (same ``MULTI``/``EXEC``); labels go through ``store.apply``;
- the transaction index (``TransactionIndex``'s buckets): the rows sorted by bucket, one ``HSET``
  of a bucket's entries (the updater's values) and one ``EXPIREAT`` per bucket.

Each ``MULTI``/``EXEC`` holds at most ``chunk`` events (the server runs one at a time: a few
milliseconds at most). The commands go to each node through a connection of their own, sent by
one thread and their replies read by another (hiredis parses them) while the caller encodes the
next commands: the client's work overlaps the server's, and no chunk waits for its replies. On
a Redis Cluster, a transaction holds the keys of one hash slot and goes to its node; a reply that
is an error (a slot that moved, a node that restarted) fails the run: it is safe to run again.
"""

import contextlib
import queue
import socket
import threading
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import hiredis
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from fraud_adapters import byte_rows
from fraud_adapters.redis_store import (
    REDIS_SERVER_CONFIG,
    CorruptStateError,
    RedisFeatureStore,
    card_member_tails,
    merchant_hash_codes,
)
from fraud_adapters.tx_index import BulkValues, TransactionIndex
from fraud_core.online import NO_DOB
from fraud_core.schemas import to_cents_array

#: The columns ``BulkWriter.transactions`` reads (the lake's names and types,
#: ``fraud_adapters.lake``): ``card`` holds the keyed card hash, ``event_time`` epoch seconds.
TRANSACTION_SCHEMA = pa.schema(
    [
        ("trans_num", pa.string()),
        ("card", pa.string()),
        ("merchant", pa.string()),
        ("category", pa.string()),
        ("amt", pa.float64()),
        ("event_time", pa.int64()),
        ("lat", pa.float64()),
        ("long", pa.float64()),
        ("city_pop", pa.int64()),
        ("merch_lat", pa.float64()),
        ("merch_long", pa.float64()),
        ("dob", pa.date32()),
    ]
)
TRANSACTION_COLUMNS = tuple(TRANSACTION_SCHEMA.names)

#: The longest member sent to start a set as a skiplist (``BulkWriter._bulk_call``).
_WIDEST = 1 << 16
#: Events per ``MULTI``/``EXEC``: ~1-2 ms of the server (docs/benchmarks.md).
CHUNK = 512
#: Rows encoded at once: the work goes to Redis slab by slab, cards, merchants and index in turn.
SLAB = 16_384


@dataclass(frozen=True, slots=True)
class _Keys:
    """A card's or merchant's keys, RESP-encoded once: its hash slot, the set the ZADD writes
    (as a RESP bulk string), and every key of the script call (RESP bulk strings, back to back)."""

    slot: int
    first: bytes
    zadd: bytes
    script: bytes
    count: int


#: A piece of a key's rows in a call: its keys, first row, end row.
type _Piece = tuple[_Keys, int, int]


@dataclass
class BulkCounts:
    """What the writes did: ``applied`` members kept, ``duplicates`` already there, ``late``
    below their card's retention point (written and trimmed, as the updater's script does);
    ``indexed`` transaction index entries written."""

    applied: int = 0
    duplicates: int = 0
    late: int = 0
    indexed: int = 0


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _groups(codes: np.ndarray[Any, Any]) -> tuple[list[int], list[int]]:
    """Starts and ends of the runs of equal values in sorted ``codes``."""
    if not len(codes):
        return [], []
    cuts = (np.flatnonzero(codes[1:] != codes[:-1]) + 1).tolist()
    return [0, *cuts], [*cuts, len(codes)]


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray[Any, Any], list[Any]]:
    encoded = column.combine_chunks().dictionary_encode()
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()


def _newest_first(codes: np.ndarray[Any, Any], t: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The rows grouped by ``codes`` (ascending), each group's newest first (ties in any order):
    one sort of a combined key where it fits in 62 bits, else a lexicographic sort."""
    if not len(t):
        return np.empty(0, dtype=np.int64)
    low, high = int(t.min()), int(t.max())
    span = high - low + 1
    if (int(codes.max()) + 1) * span < 1 << 62:
        return np.argsort(codes * span + (high - t))
    return np.lexsort((-t, codes))


def _raise_errors(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, list):
            _raise_errors(reply)
        elif isinstance(reply, Exception):
            if isinstance(reply, redis.ResponseError) and str(reply).startswith("FSCORRUPT"):
                raise CorruptStateError(str(reply).removeprefix("FSCORRUPT "))
            raise reply


class _Pipe:
    """Pipelined raw commands on a connection of its own: one thread sends the payloads, another
    reads their replies, so the server always has the next commands while the caller encodes
    more; at most ``window`` bytes are in flight. ``done`` callbacks run in the reading thread."""

    def __init__(self, client: "redis.Redis", window: int = 64 << 20) -> None:
        self._pool = client.connection_pool
        self._connection = self._pool.get_connection()
        # the connection is ours until close(): its socket is read here, not by redis-py's parser
        self._socket = cast(socket.socket, self._connection._sock)
        timeout = self._socket.gettimeout()
        if timeout is not None:  # a reply may wait for every payload queued before it
            self._socket.settimeout(max(timeout, 60.0))
        self._window = window
        self._buffer = bytearray(1 << 16)
        self._view = memoryview(self._buffer)
        self._in_flight = 0
        self._space = threading.Condition()
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._pending: queue.SimpleQueue[tuple[int, int, Callable[[Any], None]] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._send, name="bulk-send", daemon=True),
            threading.Thread(target=self._receive, name="bulk-receive", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, payload: bytes, replies: int, done: Callable[[Any], None]) -> None:
        """Queue ``payload`` (whole commands); ``done`` gets what ``_read`` makes of its
        ``replies`` replies. Waits while the window is full; raises the pipe's first error."""
        with self._space:
            while self._in_flight and self._in_flight + len(payload) > self._window and self._error is None:
                self._space.wait()
            if self._error is not None:
                raise self._error
            self._in_flight += len(payload)
        self._pending.put((replies, len(payload), done))
        self._outbox.put(payload)

    def close(self) -> None:
        """Wait for every reply; give the connection back; raise the first error."""
        self._outbox.put(None)
        self._pending.put(None)
        for thread in self._threads:
            thread.join()
        self._connection.disconnect()  # type: ignore[no-untyped-call]  # its parser never saw these replies
        self._pool.release(self._connection)
        if self._error is not None:
            raise self._error

    def _fail(self, exc: BaseException) -> None:
        with self._space:
            if self._error is None:
                self._error = exc
            self._space.notify_all()
        with contextlib.suppress(OSError):  # wake the other thread (blocked on the socket)
            self._socket.shutdown(socket.SHUT_RDWR)

    def _send(self) -> None:
        while (payload := self._outbox.get()) is not None:
            if self._error is not None:
                continue
            try:
                self._socket.sendall(payload)
            except BaseException as exc:  # raised by submit() or close()
                self._fail(exc)

    def _receive(self) -> None:
        while (job := self._pending.get()) is not None:
            if self._error is not None:
                continue
            replies, size, done = job
            try:
                done(self._read(replies))
            except BaseException as exc:  # raised by submit() or close()
                self._fail(exc)
            with self._space:
                self._in_flight -= size
                self._space.notify_all()

    def _recv(self) -> bytes:
        """The next bytes the server sent (read into a buffer reused by each call: no 1 MB
        allocation per read)."""
        size = self._socket.recv_into(self._buffer)
        if not size:
            raise redis.ConnectionError("the connection to Redis closed during the bulk write")
        return bytes(self._view[:size])

    def _read(self, n: int) -> Any:
        raise NotImplementedError


class _ParsedPipe(_Pipe):
    """Replies parsed by hiredis: ``done`` gets the list of them (error replies as exceptions)."""

    def __init__(self, client: "redis.Redis") -> None:
        self._reader = hiredis.Reader(replyError=redis.ResponseError)
        super().__init__(client)

    def _read(self, n: int) -> list[Any]:
        out: list[Any] = []
        reader = self._reader
        while len(out) < n:
            reply = reader.gets()
            if reply is False:
                reader.feed(self._recv())
            else:
                out.append(reply)
        return out


class BulkWriter:
    """Writes transactions (``transactions``) to the store and the index in bulk; ``close`` (or
    leaving its ``with`` block) waits for every reply. A reply that is an error is raised by the
    next ``transactions`` or by ``close``. Not thread-safe: one caller."""

    def __init__(
        self,
        store: RedisFeatureStore,
        index: TransactionIndex | None = None,
        chunk: int = CHUNK,
        on_progress: Callable[[int], None] | None = None,
        listpack_entries: int | None = None,
    ) -> None:
        """``listpack_entries``: a ZADD of more members starts its set as a skiplist (default:
        the server's ``zset-max-listpack-entries``)."""
        if chunk < 1:
            raise ValueError("chunk must be at least 1")
        self.store = store
        self.index = index
        self.chunk = chunk
        self.on_progress = on_progress
        self.counts = BulkCounts()
        self._lock = threading.Lock()
        self._done = 0
        self._pipes: dict[str, _Pipe] = {}
        self._sha = {name: store.script(name)[1].encode() for name in ("apply_card", "apply_merchant")}
        self._head = {name: [str(x).encode() for x in store.script_head(name)] for name in self._sha}
        self._cluster = isinstance(store.client, RedisCluster)
        clients = self._node_clients()
        for client in clients:
            for name in self._sha:
                client.script_load(store.script(name)[0])
        entries, value = _listpack_limits(clients[0])
        if value >= _WIDEST:  # no member worth sending is too long for a listpack: never wide
            entries, value = 1 << 62, 0
        self._listpack_entries = entries if listpack_entries is None else listpack_entries
        self._wide = _bulk(b"\xff" * (value + 1))  # a member no listpack holds

    # ---- routing -------------------------------------------------------------------------------

    def _node_clients(self) -> list["redis.Redis"]:
        client = self.store.client
        if isinstance(client, RedisCluster):
            nodes = client.get_primaries()  # type: ignore[no-untyped-call]
            return [client.get_redis_connection(node) for node in nodes]
        return [client]

    def _pipe(self, key: bytes) -> _Pipe:
        """The pipe to the node of ``key`` (the one redis-server if not a cluster)."""
        client = self.store.client
        if isinstance(client, RedisCluster):
            node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
            name, node_client = node.name, client.get_redis_connection(node)
        else:
            name, node_client = "", client
        pipe = self._pipes.get(name)
        if pipe is None:
            pipe = self._pipes[name] = _ParsedPipe(node_client)
        return pipe

    def _slot(self, key: bytes) -> int:
        return key_slot(key) if self._cluster else 0

    # ---- counting ------------------------------------------------------------------------------

    def _count(
        self, events: int, applied: int = 0, duplicates: int = 0, late: int = 0, indexed: int = 0
    ) -> None:
        with self._lock:
            counts = self.counts
            counts.applied += applied
            counts.duplicates += duplicates
            counts.late += late
            counts.indexed += indexed
            self._done += events

    def progress(self) -> int:
        """Rows whose writes have been answered (a transaction counts once per key family:
        card, merchant, index)."""
        return self._done

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self._done)

    # ---- transactions --------------------------------------------------------------------------

    def transactions(self, table: pa.Table, indexed: np.ndarray[Any, Any] | None = None) -> None:
        """Queue the writes of ``table`` (``TRANSACTION_COLUMNS``): cards, merchants, and the index
        for the rows where ``indexed`` (default: all) is true."""
        missing = set(TRANSACTION_COLUMNS) - set(table.column_names)
        if missing:
            raise ValueError(f"missing columns: {sorted(missing)}")
        if table.num_rows == 0:
            return
        columns = _Columns(table.select(list(TRANSACTION_COLUMNS)).cast(TRANSACTION_SCHEMA).combine_chunks())
        work = [self._cards(columns), self._merchants(columns)]
        if self.index is not None:
            rows = None if indexed is None else np.flatnonzero(indexed)
            work.append(self._index(self.index, columns, rows))
        while work:  # a slab of each in turn: Redis gets every kind of work from the start
            for slabs in list(work):
                if not next(slabs, False):
                    work.remove(slabs)

    def _cards(self, columns: "_Columns") -> Iterator[bool]:
        store = self.store
        # each card's events newest first: its first call knows its retention point, and a
        # listpack takes the members at its head
        order = _newest_first(columns.card_codes, columns.t)
        order = self._recent(order, columns)
        codes = columns.card_codes[order]
        starts, ends = _groups(codes)
        sizes = np.subtract(ends, starts)
        busy = sizes > store.write_chunk if store.tile_threshold >= 0 else np.zeros(len(sizes), dtype=bool)
        plain = order[~np.repeat(busy, sizes)] if busy.any() else order  # the other cards' rows
        yield from self._keyed_slabs("apply_card", columns, plain, columns.card_codes, self._card_keys)
        # busy cards: the script's own path, their tiles kept event by event
        dobs = byte_rows.resp(columns.dobs()) if busy.any() else []
        for g in np.flatnonzero(busy).tolist():
            rows = order[starts[g] : ends[g]]
            keys = self._card_keys(columns.cards[columns.card_codes[rows[0]]])
            data, offsets = byte_rows.join(
                [
                    *columns.score,
                    *columns.member,
                    *byte_rows.resp(columns.trans_num),
                    *dobs,
                ],
                rows,
            )
            view, at = memoryview(data), offsets.tolist()
            for first in range(0, len(rows), store.write_chunk):
                self._apply_call(keys, view, at, first, min(first + store.write_chunk, len(rows)))
            yield True

    def _recent(self, order: np.ndarray[Any, Any], columns: "_Columns") -> np.ndarray[Any, Any]:
        """``order`` (rows grouped by card, newest first) without the rows the card's script would
        trim at once: those below the card's retention point (its newest row's time minus
        ``card_keep``; the set's newest member can only be newer, so they are trimmed whatever
        the store holds). Counted as late, as the script counts them. A card keeps, of those rows,
        the ones with a date of birth at their greatest time: the script derives the profile and
        the older profile (latest dob by time, then trans_num) from them as from all of them."""
        t = columns.t[order]
        starts, ends = _groups(columns.card_codes[order])
        group = np.repeat(np.arange(len(starts)), np.subtract(ends, starts))
        below = t < t[starts][group] - self.store.card_keep
        if not below.any():
            return order
        dob = below & (columns.dob_day[order] != NO_DOB)
        best = np.full(len(starts), np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(best, group[dob], t[dob])
        kept = ~below | (dob & (t == best[group]))
        dropped = len(kept) - int(np.count_nonzero(kept))
        self._count(dropped, late=dropped)
        return cast(np.ndarray[Any, Any], order[kept])

    def _merchants(self, columns: "_Columns") -> Iterator[bool]:
        order = _newest_first(columns.merchant_codes, columns.t)
        yield from self._keyed_slabs(
            "apply_merchant", columns, order, columns.merchant_codes, self._merchant_keys
        )

    def _keyed_slabs(
        self,
        name: str,
        columns: "_Columns",
        order: np.ndarray[Any, Any],
        codes: np.ndarray[Any, Any],
        keys_of: Callable[[Any], _Keys],
    ) -> Iterator[bool]:
        """Rows in ``order`` (grouped by key: ``codes``) written by ZADD + ``name`` in bulk mode,
        a slab of about ``SLAB`` rows at a time."""
        values = columns.cards if name == "apply_card" else columns.merchants
        member = columns.member if name == "apply_card" else byte_rows.resp(columns.trans_num)
        starts, ends = _groups(codes[order])
        for slab in _slabs(np.subtract(ends, starts).tolist()):
            first, last = starts[slab[0]], ends[slab[-1]]
            data, offsets = byte_rows.join([*columns.score, *member], order[first:last])
            keys = [keys_of(values[codes[order[starts[g]]]]) for g in slab]
            sizes = [ends[g] - starts[g] for g in slab]
            view, at = memoryview(data), offsets.tolist()
            for batch in _packed(self._pieces(keys, sizes), self.chunk):
                self._bulk_call(name, batch, view, at)
            yield True

    def _card_keys(self, card: str) -> _Keys:
        return self._keys(self.store.card_keys(card))

    def _merchant_keys(self, merchant: str) -> _Keys:
        return self._keys(self.store.merchant_keys(merchant))

    def _keys(self, names: list[str]) -> _Keys:
        encoded = [name.encode() for name in names]
        return _Keys(
            self._slot(encoded[0]), encoded[0], _bulk(encoded[0]), b"".join(map(_bulk, encoded)), len(encoded)
        )

    def _pieces(self, keys: list[_Keys], sizes: list[int]) -> list[_Piece]:
        """Each key's rows (consecutive in the slab) cut at ``chunk``, ordered by hash slot."""
        pieces: list[_Piece] = []
        at = 0
        for key, size in zip(keys, sizes, strict=True):
            for first in range(0, size, self.chunk):
                pieces.append((key, at + first, at + min(first + self.chunk, size)))
            at += size
        if self._cluster:
            pieces.sort(key=lambda piece: piece[0].slot)  # stable: a key's pieces stay in order
        return pieces

    def _index(
        self, index: TransactionIndex, columns: "_Columns", indexed: np.ndarray[Any, Any] | None
    ) -> Iterator[bool]:
        """The entries of the rows ``indexed`` (default: all) into their buckets of the current
        generation: per bucket, one ``HSET`` of its fields (at most ``chunk`` per command) and
        one ``EXPIREAT``."""
        generation = index.generation()
        tail = _bulk(str(index.expire_at(generation)).encode())
        ids = columns.table["trans_num"].cast(pa.binary())
        if indexed is not None:
            ids = ids.take(pa.array(indexed))
        crcs = map(zlib.crc32, ids.to_numpy(zero_copy_only=False))
        buckets = np.fromiter(crcs, dtype=np.int64, count=len(ids)) % index.buckets
        order = np.argsort(buckets.astype(np.uint16) if index.buckets <= 1 << 16 else buckets, kind="stable")
        codes = buckets[order]
        if indexed is not None:
            order = indexed[order]
        values = columns.values
        starts, ends = _groups(codes)
        for slab in _slabs(np.subtract(ends, starts).tolist()):
            rows = order[starts[slab[0]] : ends[slab[-1]]]  # a bucket's rows together
            first = starts[slab[0]]
            data, offsets = byte_rows.join(
                [*byte_rows.resp(columns.trans_num.take(rows)), *byte_rows.resp(*values.parts(rows))]
            )
            view, at = memoryview(data), offsets.tolist()
            payloads: dict[_Pipe, list[bytes | memoryview]] = defaultdict(list)
            counts: dict[_Pipe, list[int]] = defaultdict(lambda: [0, 0])  # replies, rows
            for g in slab:
                key = index.bucket_key(int(codes[starts[g]]), generation).encode()
                pipe = self._pipe(key)
                out, count = payloads[pipe], counts[pipe]
                for lo in range(starts[g] - first, ends[g] - first, self.chunk):
                    hi = min(lo + self.chunk, ends[g] - first)
                    out.append(b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * (hi - lo)) + _bulk(key))
                    out.append(view[at[lo] : at[hi]])
                    count[0] += 1
                out.append(b"*3\r\n$8\r\nEXPIREAT\r\n" + _bulk(key) + tail)
                count[0] += 1
                count[1] += ends[g] - starts[g]
            for pipe, out in payloads.items():
                replies, n_rows = counts[pipe]
                pipe.submit(b"".join(out), replies, self._index_done(n_rows))
                self._report()
            yield True

    def _index_done(self, n: int) -> Callable[[list[Any]], None]:
        def done(replies: list[Any]) -> None:
            _raise_errors(replies)
            self._count(n, indexed=n)

        return done

    # ---- calls ---------------------------------------------------------------------------------

    def _bulk_call(self, name: str, batch: list[_Piece], data: memoryview, offsets: list[int]) -> None:
        """MULTI, one ZADD per key's piece, the script in bulk mode for those keys, EXEC."""
        parts: list[bytes | memoryview] = [b"*1\r\n$5\r\nMULTI\r\n"]
        n_keys = events = 0
        zadds: list[int] = []  # the ZADDs' places in EXEC's reply
        commands = 0
        for keys, first, last in batch:
            # more members than a listpack holds: the set starts as a skiplist (a first member
            # too long for a listpack, removed right after) rather than becoming one after as
            # many listpack inserts, each a scan of the whole listpack
            wide = last - first > self._listpack_entries
            if wide:
                parts.append(b"*4\r\n$4\r\nZADD\r\n" + keys.zadd + b"$1\r\n0\r\n" + self._wide)
                commands += 1
            zadds.append(commands)
            parts.append(b"*%d\r\n$4\r\nZADD\r\n" % (2 + 2 * (last - first)) + keys.zadd)
            parts.append(data[offsets[first] : offsets[last]])
            commands += 1
            if wide:
                parts.append(b"*3\r\n$4\r\nZREM\r\n" + keys.zadd + self._wide)
                commands += 1
            n_keys += keys.count
            events += last - first
        # per key: a card's -1 (its new members are in its set), a merchant's 0 transactions, 0 labels
        per_key = b"$2\r\n-1\r\n" if name == "apply_card" else b"$1\r\n0\r\n$1\r\n0\r\n"
        n_args = 3 + n_keys + len(self._head[name]) + len(batch) * (1 if name == "apply_card" else 2)
        parts.append(b"*%d\r\n$7\r\nEVALSHA\r\n" % n_args + _bulk(self._sha[name]) + _bulk(b"%d" % n_keys))
        parts += [keys.script for keys, _, _ in batch]
        parts.append(b"".join(map(_bulk, self._head[name])) + per_key * len(batch) + b"*1\r\n$4\r\nEXEC\r\n")
        commands += 1
        counted = name == "apply_card"  # (a transaction counts by its card)

        def done(replies: list[Any]) -> None:
            _raise_errors(replies)
            results = replies[-1]
            if not isinstance(results, list) or len(results) != commands:
                raise redis.ResponseError(f"unexpected EXEC reply {results!r:.200}")
            if counted:  # members trimmed at once count as late (some may be older members of the key)
                added = sum(results[z] for z in zadds)
                late = min(results[-1].count(b"l"), added)
                self._count(events, applied=added - late, duplicates=events - added, late=late)
            else:
                self._count(events)

        self._pipe(batch[0][0].first).submit(b"".join(parts), commands + 2, done)
        self._report()

    def _apply_call(self, keys: _Keys, data: memoryview, offsets: list[int], first: int, last: int) -> None:
        """One ``apply_card`` call with its events' pre-encoded arguments (a busy card)."""
        events = last - first
        head = b"*%d\r\n$7\r\nEVALSHA\r\n" % (3 + keys.count + len(self._head["apply_card"]) + 1 + 4 * events)
        head += _bulk(self._sha["apply_card"]) + _bulk(b"%d" % keys.count) + keys.script
        head += b"".join(map(_bulk, self._head["apply_card"])) + _bulk(b"%d" % events)

        def done(replies: list[Any]) -> None:
            _raise_errors(replies)
            reply = replies[0]
            self._count(
                events, applied=reply.count(b"a"), duplicates=reply.count(b"d"), late=reply.count(b"l")
            )

        self._pipe(keys.first).submit(head + data[offsets[first] : offsets[last]], 1, done)
        self._report()

    def __enter__(self) -> "BulkWriter":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        if error is None:
            self.close()
        else:  # the error that stopped the caller is the one to see
            with contextlib.suppress(Exception):
                self.close()

    def close(self) -> BulkCounts:
        """Wait for every reply; raises the first error."""
        errors: list[BaseException] = []
        for pipe in self._pipes.values():
            try:
                pipe.close()
            except BaseException as exc:  # the first is raised below
                errors.append(exc)
        self._pipes.clear()
        self._report()
        if errors:
            raise errors[0]
        return self.counts


class _Columns:
    """A table of transactions (``TRANSACTION_COLUMNS``) and its encoded columns
    (``byte_rows``: one value per row): ``score``, the RESP bulk string of the transaction time;
    ``member``, of its card member (``card_member``: trans_num, NUL, the 56-byte tail);
    ``values``, the index values (``tx_index.BulkValues``, whose columns these reuse)."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.values = BulkValues(table)
        head = self.values.head
        self.t = head["t"]
        self.card_codes, self.cards = _codes(table["card"])
        self.merchant_codes, self.merchants = _codes(table["merchant"])
        tails = card_member_tails(
            t=self.t,
            cents=to_cents_array(head["amt"]),
            category=head["category"],
            merch_lat=head["merch_lat"],
            merch_long=head["merch_long"],
            merchant=merchant_hash_codes(self.merchants)[self.merchant_codes],
            dob_day=head["dob_day"],
        )
        self.dob_day = head["dob_day"]
        self.trans_num = self.values.trans_num
        self.score = byte_rows.resp(self.values.time)
        self.member = byte_rows.resp(self.trans_num, b"\0", byte_rows.fixed(tails))

    def dobs(self) -> byte_rows.Texts:
        """The dob argument of ``apply_card``: ISO (``date.isoformat``), '' when unknown."""
        return byte_rows.texts(pc.fill_null(self.table["dob"].combine_chunks().cast(pa.string()), ""))


def _listpack_limits(client: "redis.Redis") -> tuple[int, int]:
    """The server's ``zset-max-listpack-entries`` and ``-value``: Redis' defaults (128, and the
    value of ``REDIS_SERVER_CONFIG``) where ``CONFIG`` is not allowed (ElastiCache). They only
    decide when a set starts as a skiplist (``BulkWriter._bulk_call``): never what it holds."""
    limits = [128, int(REDIS_SERVER_CONFIG["zset-max-listpack-value"])]
    for i, name in enumerate(("zset-max-listpack-entries", "zset-max-listpack-value")):
        with contextlib.suppress(redis.RedisError, KeyError, ValueError):
            limits[i] = int(cast(str, client.config_get(name)[name]))
    return limits[0], limits[1]


def _slabs(sizes: list[int]) -> Iterator[list[int]]:
    """Consecutive groups (indices into ``sizes``) of about ``SLAB`` rows."""
    current: list[int] = []
    rows = 0
    for g, size in enumerate(sizes):
        if current and rows + size > SLAB:
            yield current
            current, rows = [], 0
        current.append(g)
        rows += size
    if current:
        yield current


def _packed(pieces: list[_Piece], chunk: int) -> Iterator[list[_Piece]]:
    """Pieces (sorted by slot) packed into calls of one slot and at most ``chunk`` events."""
    batch: list[_Piece] = []
    events = 0
    for piece in pieces:
        size = piece[2] - piece[1]
        if batch and (piece[0].slot != batch[0][0].slot or events + size > chunk):
            yield batch
            batch, events = [], 0
        batch.append(piece)
        events += size
    if batch:
        yield batch
