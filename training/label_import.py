"""A bank's bulk chargeback file (CSV) through the label intake (``fraudsys labels import``).

Columns: ``transaction_id`` (or ``trans_num``), ``is_fraud`` (``1``/``0``/``true``/``false``,
any case), optionally ``reported_at`` (ISO 8601; empty: not given); other columns are ignored.
Each row is validated on its own (``LabelRequest``, as ``POST /labels``): a bad row is reported
with its line number and skipped, the file goes on. Valid rows go to the intake in batches of
``MAX_LABELS_PER_REQUEST``; each batch's labels arrive when it is submitted. Importing a file
again is safe: a label of the same value changes no feature (``handlers.labels``).
"""

import csv
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from pydantic import ValidationError

from fraud_core.schemas import MAX_LABELS_PER_REQUEST, LabelRequest, LabelsResponse

ID_COLUMNS = ("transaction_id", "trans_num")
_BOOLEANS = {"1": True, "true": True, "0": False, "false": False}

Submit = Callable[[Sequence[LabelRequest]], LabelsResponse]


class LabelFileError(ValueError):
    """The file cannot be read as a label file at all (no id or ``is_fraud`` column)."""


@dataclass
class ImportSummary:
    accepted: int = 0
    unknown_lines: list[int] = field(default_factory=list)
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)

    @property
    def rows(self) -> int:
        return self.accepted + len(self.unknown_lines) + len(self.invalid)


def parse_rows(file: TextIO) -> Iterator[tuple[int, LabelRequest | str]]:
    """``(line number, label or the reason it is invalid)`` per data row (the header is line 1)."""
    reader = csv.DictReader(file)
    columns = [c.strip() for c in reader.fieldnames or []]
    reader.fieldnames = columns
    id_column = next((c for c in ID_COLUMNS if c in columns), None)
    if id_column is None or "is_fraud" not in columns:
        raise LabelFileError(f"need a transaction_id (or trans_num) and an is_fraud column; found {columns}")
    for row in reader:
        yield reader.line_num, _label(row, id_column)


def _label(row: dict[str, str | None], id_column: str) -> LabelRequest | str:
    if None in row:
        return "more fields than columns"
    flag = (row.get("is_fraud") or "").strip().lower()
    if flag not in _BOOLEANS:
        return f"is_fraud: expected 1, 0, true or false, got {flag!r}"
    values: dict[str, object] = {"transaction_id": row.get(id_column) or "", "is_fraud": _BOOLEANS[flag]}
    if reported := (row.get("reported_at") or "").strip():
        values["reported_at"] = reported
    try:
        return LabelRequest.model_validate(values)
    except ValidationError as exc:
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


def import_labels(
    rows: Iterable[tuple[int, LabelRequest | str]],
    submit: Submit,
    on_progress: Callable[[ImportSummary], None] = lambda _: None,
    batch_size: int = MAX_LABELS_PER_REQUEST,
) -> ImportSummary:
    """Send the valid rows through ``submit`` (the intake) in batches; count and report every row.
    An intake failure (``LabelIntakeUnavailableError``) propagates: rows sent before it stay sent."""
    summary = ImportSummary()
    batch: list[tuple[int, LabelRequest]] = []

    def flush() -> None:
        if not batch:
            return
        answer = submit([label for _, label in batch])
        for (line, _), outcome in zip(batch, answer.results, strict=True):
            if outcome.status == "accepted":
                summary.accepted += 1
            else:
                summary.unknown_lines.append(line)
        batch.clear()
        on_progress(summary)

    for line, parsed in rows:
        if isinstance(parsed, str):
            summary.invalid.append((line, parsed))
            continue
        batch.append((line, parsed))
        if len(batch) >= batch_size:
            flush()
    flush()
    return summary
