"""The event archive (data lake): accepted stream events as Parquet objects in a blob store.

Layout under the store's root (local folder or ``s3://bucket/prefix``), Hive-style::

    events/kind=transaction/dt=YYYY-MM-DD/part-<id>.parquet   dt: day (UTC) of the transaction time
    events/kind=label/dt=YYYY-MM-DD/part-<id>.parquet         dt: day (UTC) of the label's arrival

One object per partition per batch. ``<id>`` is a digest of the rows' identities (source, kind,
trans_num, times, label value), so a batch delivered again as-is rewrites the same objects; a batch
delivered again in another shape adds rows that readers drop (``docs/data.md``: dedupe rule).
No card number is stored: ``card`` is the keyed hash of ``fraud_adapters.redis_store.CardHasher``.
The columns are ``LAKE_SCHEMA``; the schema version is a column and the file metadata key
``fraudsys.schema_version``.
"""

import functools
import hashlib
import io
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from fraud_adapters.blobs import BlobStore
from fraud_core.schemas import LabelEvent, TransactionEvent, epoch_seconds

if TYPE_CHECKING:
    import pyarrow as pa

SCHEMA_VERSION: Final = 1
EVENTS_PREFIX: Final = "events"
KINDS: Final = ("transaction", "label")
_DAY: Final = 86_400

# name, arrow type name, nullable, meaning (docs/data.md renders the same table)
COLUMNS: Final[tuple[tuple[str, str, bool, str], ...]] = (
    ("schema_version", "int16", False, "lake schema version of the row (SCHEMA_VERSION)"),
    ("kind", "string", False, "'transaction' or 'label'"),
    ("trans_num", "string", False, "transaction id"),
    ("card", "string", True, "keyed HMAC-SHA256 hash of the card id (never the number); labels: if given"),
    ("merchant", "string", False, "merchant name"),
    ("category", "string", True, "merchant category; null for labels"),
    ("amt", "float64", True, "amount in USD; null for labels"),
    ("event_time", "int64", False, "transaction time, epoch seconds (labels: their transaction's)"),
    ("arrival_time", "int64", False, "epoch s: tx received_at (else broker time), label label_time"),
    ("lat", "float64", True, "cardholder latitude; null for labels"),
    ("long", "float64", True, "cardholder longitude; null for labels"),
    ("city_pop", "int64", True, "cardholder city population; null for labels"),
    ("merch_lat", "float64", True, "merchant latitude; null for labels"),
    ("merch_long", "float64", True, "merchant longitude; null for labels"),
    ("dob", "date32", True, "cardholder date of birth, if known"),
    ("is_fraud", "bool", True, "the label; null for transactions"),
    ("reported_at", "int64", True, "labels: when the bank reported it (epoch s), if given"),
    ("source", "string", False, "kafka:<topic>-<partition>@<offset> or kinesis:<event id>"),
    ("ingest_time", "int64", False, "when its batch was archived, epoch milliseconds"),
)  # fmt: skip


@functools.cache
def lake_schema() -> "pa.Schema":
    """The Arrow schema of every lake object (with the schema version in its metadata)."""
    import pyarrow as pa

    fields = [
        pa.field(name, pa.type_for_alias(kind), nullable=nullable, metadata={"description": text})
        for name, kind, nullable, text in COLUMNS
    ]
    return pa.schema(fields, metadata={"fraudsys.schema_version": str(SCHEMA_VERSION)})


@dataclass(frozen=True, slots=True)
class LakeRecord:
    """One accepted event with where it came from and its arrival time (``arrival_time``)."""

    event: TransactionEvent | LabelEvent
    source: str
    arrival_time: int  # transactions: their receipt (received_at or the broker's time); labels: label_time

    @property
    def arrival(self) -> int:
        """The row's ``arrival_time``: always a label's own ``label_time``."""
        event = self.event
        return event.arrival_time if isinstance(event, LabelEvent) else self.arrival_time


def arrival_time(event: TransactionEvent | LabelEvent, received: int | None) -> int:
    """The arrival time of an event in epoch seconds: a label's ``label_time``; a transaction's
    receipt (``fraud_core.timeguard.receipt``: its ``received_at`` stamp or its record's broker
    timestamp, the earlier), else now."""
    if isinstance(event, LabelEvent):
        return event.arrival_time
    return received if received is not None else int(time.time())


def partition_day(record: LakeRecord) -> str:
    """``YYYY-MM-DD`` of the partition: transaction time for transactions, arrival for labels."""
    t = record.event.event_time if isinstance(record.event, TransactionEvent) else record.arrival
    return datetime.fromtimestamp(t - t % _DAY, UTC).strftime("%Y-%m-%d")


class LakeWriter:
    """Appends batches of accepted events to the lake; ``card_hash`` is the store's ``CardHasher``."""

    def __init__(
        self,
        store: BlobStore,
        card_hash: Callable[[str], str],
        *,
        prefix: str = EVENTS_PREFIX,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.card_hash = card_hash
        self.prefix = prefix.strip("/")
        self.clock = clock
        self._uploads: ThreadPoolExecutor | None = None

    def append(self, records: Iterable[LakeRecord]) -> list[str]:
        """Write the batch: one Parquet object per (kind, day) partition. Returns where they went.

        Raises whatever the store raises: the caller fails the batch so it is delivered again.
        """
        groups: dict[tuple[str, int], list[LakeRecord]] = {}
        for record in records:
            event = record.event
            t = event.event_time if isinstance(event, TransactionEvent) else record.arrival
            groups.setdefault((event.kind, t // _DAY), []).append(record)
        ingest_ms = int(self.clock() * 1000)
        uploads: list[Future[str]] = []
        for (kind, day_number), group in sorted(groups.items()):
            day = datetime.fromtimestamp(day_number * _DAY, UTC).strftime("%Y-%m-%d")
            name = f"{self.prefix}/kind={kind}/dt={day}/part-{batch_id(group)}.parquet"
            data = self.encode(group, ingest_ms)
            # the PUTs of a batch's partitions overlap (and with the next partition's encoding):
            # an S3 PUT is tens of milliseconds of waiting
            uploads.append(self._pool().submit(self.store.put, name, data, "application/vnd.apache.parquet"))
        return [upload.result() for upload in uploads]  # the first failure is raised

    def _pool(self) -> ThreadPoolExecutor:
        if self._uploads is None:
            # an S3 store makes its boto3 client on first use: here, on this thread (creating
            # clients from the default session is not thread-safe; using one client is)
            getattr(self.store, "client", None)
            self._uploads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lake-put")
        return self._uploads

    def encode(self, records: Sequence[LakeRecord], ingest_ms: int) -> bytes:
        """The Parquet bytes of ``records`` (Snappy; dictionary-encoded kind, category, merchant).

        Snappy, not zstd: about 2 ms less CPU per object of 500 rows for about a third more bytes;
        the updater's CPU is what the archive costs (docs/benchmarks.md)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = lake_schema()
        transactions = [r for r in records if isinstance(r.event, TransactionEvent)]
        labels = [r for r in records if isinstance(r.event, LabelEvent)]
        tables = [
            pa.Table.from_pydict(columns, schema=schema)
            for columns in (
                self._transaction_columns(transactions, ingest_ms),
                self._label_columns(labels, ingest_ms),
            )
            if columns["trans_num"]
        ]
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables or [schema.empty_table()])
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="snappy", use_dictionary=["kind", "category", "merchant"])
        return sink.getvalue()

    def _transaction_columns(self, records: Sequence[LakeRecord], ingest_ms: int) -> dict[str, list[Any]]:
        events = [r.event for r in records if isinstance(r.event, TransactionEvent)]
        n = len(events)
        hashed = self.card_hash
        return {
            "schema_version": [SCHEMA_VERSION] * n,
            "kind": ["transaction"] * n,
            "trans_num": [e.trans_num for e in events],
            "card": [hashed(e.cc_num) for e in events],
            "merchant": [e.merchant for e in events],
            "category": [e.category for e in events],
            "amt": [e.amt for e in events],
            "event_time": [epoch_seconds(e.transaction_time) for e in events],
            "arrival_time": [r.arrival_time for r in records],
            "lat": [e.lat for e in events],
            "long": [e.long for e in events],
            "city_pop": [e.city_pop for e in events],
            "merch_lat": [e.merch_lat for e in events],
            "merch_long": [e.merch_long for e in events],
            "dob": [e.dob for e in events],
            "is_fraud": [None] * n,
            "reported_at": [None] * n,
            "source": [r.source for r in records],
            "ingest_time": [ingest_ms] * n,
        }

    def _label_columns(self, records: Sequence[LakeRecord], ingest_ms: int) -> dict[str, list[Any]]:
        events = [r.event for r in records if isinstance(r.event, LabelEvent)]
        n = len(events)
        hashed = self.card_hash
        return {
            "schema_version": [SCHEMA_VERSION] * n,
            "kind": ["label"] * n,
            "trans_num": [e.trans_num for e in events],
            "card": [hashed(e.cc_num) if e.cc_num is not None else None for e in events],
            "merchant": [e.merchant for e in events],
            "category": [None] * n,
            "amt": [None] * n,
            "event_time": [e.event_time for e in events],
            "arrival_time": [e.arrival_time for e in events],
            "lat": [None] * n,
            "long": [None] * n,
            "city_pop": [None] * n,
            "merch_lat": [None] * n,
            "merch_long": [None] * n,
            "dob": [None] * n,
            "is_fraud": [e.is_fraud for e in events],
            "reported_at": [
                epoch_seconds(e.reported_at) if e.reported_at is not None else None for e in events
            ],
            "source": [r.source for r in records],
            "ingest_time": [ingest_ms] * n,
        }


def batch_id(records: Sequence[LakeRecord]) -> str:
    """A digest of the rows' identities (source, trans_num, arrival, label value): the same
    delivery gives the same object name."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update("\x1f".join([r.source for r in records]).encode())
    digest.update("\x1f".join([r.event.trans_num for r in records]).encode())
    digest.update(array("q", [r.arrival for r in records]).tobytes())
    digest.update(bytes(int(r.event.is_fraud) if isinstance(r.event, LabelEvent) else 2 for r in records))
    return digest.hexdigest()
