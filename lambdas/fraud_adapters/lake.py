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

import hashlib
import io
import time
from collections.abc import Callable, Iterable, Sequence
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
    ("ingest_time", "int64", False, "when the updater archived it, epoch milliseconds"),
)  # fmt: skip


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
    """One accepted event with where it came from and the arrival time the updater used."""

    event: TransactionEvent | LabelEvent
    source: str
    arrival_time: int  # transactions: received_at, else the broker's timestamp; labels: label_time

    @property
    def arrival(self) -> int:
        """The row's ``arrival_time``: always a label's own ``label_time``."""
        event = self.event
        return event.arrival_time if isinstance(event, LabelEvent) else self.arrival_time


def arrival_time(event: TransactionEvent | LabelEvent, broker_time: float | None) -> int:
    """The arrival time of an event in epoch seconds: a label's ``label_time``; a transaction's
    ``received_at``, else the broker timestamp of its record (``broker_time``, epoch seconds),
    else now."""
    if isinstance(event, LabelEvent):
        return event.arrival_time
    if event.received_at is not None:
        return epoch_seconds(event.received_at)
    return int((broker_time if broker_time is not None else time.time()) // 1)


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

    def append(self, records: Iterable[LakeRecord]) -> list[str]:
        """Write the batch: one Parquet object per (kind, day) partition. Returns where they went.

        Raises whatever the store raises: the caller fails the batch so it is delivered again.
        """
        groups: dict[tuple[str, str], list[LakeRecord]] = {}
        for record in records:
            groups.setdefault((record.event.kind, partition_day(record)), []).append(record)
        ingest_ms = int(self.clock() * 1000)
        written = []
        for (kind, day), group in sorted(groups.items()):
            name = f"{self.prefix}/kind={kind}/dt={day}/part-{batch_id(group)}.parquet"
            written.append(
                self.store.put(name, self.encode(group, ingest_ms), "application/vnd.apache.parquet")
            )
        return written

    def encode(self, records: Sequence[LakeRecord], ingest_ms: int) -> bytes:
        """The Parquet bytes of ``records`` (zstd, dictionary-encoded strings)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = lake_schema()
        columns: dict[str, list[Any]] = {name: [] for name in schema.names}
        for record in records:
            for name, value in self._row(record, ingest_ms).items():
                columns[name].append(value)
        table = pa.Table.from_pydict(columns, schema=schema)
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue()

    def _row(self, record: LakeRecord, ingest_ms: int) -> dict[str, Any]:
        event = record.event
        common = {
            "schema_version": SCHEMA_VERSION,
            "kind": event.kind,
            "trans_num": event.trans_num,
            "merchant": event.merchant,
            "event_time": event.event_time,
            "source": record.source,
            "ingest_time": ingest_ms,
        }
        if isinstance(event, LabelEvent):
            return common | {
                "card": self.card_hash(event.cc_num) if event.cc_num is not None else None,
                "category": None,
                "amt": None,
                "arrival_time": event.arrival_time,
                "lat": None,
                "long": None,
                "city_pop": None,
                "merch_lat": None,
                "merch_long": None,
                "dob": None,
                "is_fraud": event.is_fraud,
                "reported_at": epoch_seconds(event.reported_at) if event.reported_at is not None else None,
            }
        return common | {
            "card": self.card_hash(event.cc_num),
            "category": event.category,
            "amt": event.amt,
            "arrival_time": record.arrival,
            "lat": event.lat,
            "long": event.long,
            "city_pop": event.city_pop,
            "merch_lat": event.merch_lat,
            "merch_long": event.merch_long,
            "dob": event.dob,
            "is_fraud": None,
            "reported_at": None,
        }


def batch_id(records: Sequence[LakeRecord]) -> str:
    """A digest of the rows' identities: the same delivery gives the same object name."""
    digest = hashlib.blake2b(digest_size=12)
    for record in records:
        event = record.event
        label = f"{event.arrival_time}:{int(event.is_fraud)}" if isinstance(event, LabelEvent) else ""
        digest.update(f"{record.source}\x1f{event.kind}\x1f{event.trans_num}\x1f{event.event_time}".encode())
        digest.update(f"\x1f{record.arrival}\x1f{label}\x1e".encode())
    return digest.hexdigest()
