"""Labels: `fraudsys labels import FILE`, a bank's bulk chargeback file through the label intake."""

from pathlib import Path
from typing import Annotated

import typer

from fraudsys_cli.common import app, console, use_local_stack

labels_app = typer.Typer(no_args_is_help=True, help="Labels (chargebacks and their reversals).")
app.add_typer(labels_app, name="labels")
LISTED_LINES = 20


@labels_app.command("import")
def labels_import(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, help="CSV: transaction_id (or trans_num), is_fraud, reported_at?"
        ),
    ],
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="use the local stack (`fraudsys local up`: Redis :6380, Kafka :19092) for unset settings",
        ),
    ] = False,
) -> None:
    """Send a bank's bulk chargeback file through the label intake (as POST /labels does).

    Uses the handlers' settings (REDIS_URL, STREAM_KIND, KAFKA_BOOTSTRAP_SERVERS or
    KINESIS_STREAM_NAME, LABELS_TOPIC, ...), like the Lambdas. Bad rows are listed with their
    line numbers and skipped; importing a file again is safe."""
    from handlers import bootstrap
    from handlers.labels import LabelIntakeUnavailableError, intake
    from handlers.settings import settings
    from training.label_import import ImportSummary, LabelFileError, import_labels, parse_rows

    if local:
        use_local_stack()
    if settings().stream_kind == "none":
        console.print("[red]STREAM_KIND is none: labels would go nowhere[/red] (set it, or use --local)")
        raise typer.Exit(2)
    label_intake = intake(timeout_ms=5000, publish_timeout=10.0)

    with console.status("importing labels") as status, file.open(newline="", encoding="utf-8-sig") as text:

        def progress(summary: ImportSummary) -> None:
            status.update(
                f"{summary.rows:,} rows: {summary.accepted:,} accepted, {len(summary.unknown_lines):,} "
                f"unknown, {len(summary.invalid):,} invalid"
            )

        try:
            summary = import_labels(parse_rows(text), label_intake.submit, progress)
        except LabelFileError as exc:
            console.print(f"[red]{file}: {exc}[/red]")
            raise typer.Exit(2) from exc
        except LabelIntakeUnavailableError as exc:
            console.print(f"[red]stopped: {exc}[/red]; rows sent before stay sent, importing again is safe")
            raise typer.Exit(1) from exc
        finally:
            bootstrap.publisher().close()
    console.print(
        f"{file}: {summary.rows:,} rows: {summary.accepted:,} accepted, {len(summary.unknown_lines):,} "
        f"unknown transaction, {len(summary.invalid):,} invalid",
        soft_wrap=True,
    )
    if summary.unknown_lines:
        shown = ", ".join(map(str, summary.unknown_lines[:LISTED_LINES]))
        more = " ..." if len(summary.unknown_lines) > LISTED_LINES else ""
        console.print(
            f"unknown transaction (not in the index: nothing published) on lines {shown}{more}",
            soft_wrap=True,
        )
    for line, reason in summary.invalid[:LISTED_LINES]:
        console.print(f"line {line}: invalid: {reason}", markup=False, soft_wrap=True)
    if len(summary.invalid) > LISTED_LINES:
        console.print(f"... and {len(summary.invalid) - LISTED_LINES:,} more invalid rows")
