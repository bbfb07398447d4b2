"""The online store: `fraudsys backfill` materializes it from the event lake."""

from typing import Annotated

import typer

from fraudsys_cli.common import app, console, use_local_stack


@app.command()
def backfill(
    lake: Annotated[
        str | None, typer.Option(help="the lake root (s3://bucket/prefix or a folder); default LAKE_URI")
    ] = None,
    newest: Annotated[
        str | None,
        typer.Option(help="the time the state is built up to (ISO 8601); default: the lake's latest event"),
    ] = None,
    batch: Annotated[
        int, typer.Option(min=1, help="events per Redis transaction (MULTI/EXEC) of the bulk writes")
    ] = 1024,
    local: Annotated[
        bool, typer.Option("--local", help="the local stack (`fraudsys local up`) for unset settings")
    ] = False,
) -> None:
    """Materialize the online store (and the label intake's transaction index) from the event lake.

    For go-live, a Redis loss or a layout change. Uses the handlers' settings (REDIS_URL,
    REDIS_CLUSTER, CARD_HASH_KEY..., LABEL_DELAY_SECONDS, LAKE_URI), like the updater. Safe to run
    while the stream is live and to run again: the state written is the updater's, idempotent."""
    from datetime import UTC, datetime, time

    from rich.progress import Progress

    from handlers import bootstrap
    from handlers.settings import settings
    from training.backfill import backfill as run_backfill
    from training.backfill import lake_start_day
    from training.data.lake import latest_dob_transactions, newest_transaction_day, read_lake_tables

    if local:
        use_local_stack()
    uri = lake or settings().lake_uri
    if not uri:
        console.print("[red]no lake: give --lake or set LAKE_URI[/red]")
        raise typer.Exit(2)
    store = bootstrap.feature_store(5000)
    if newest:
        until: int | None = int(datetime.fromisoformat(newest).replace(tzinfo=UTC).timestamp())
    else:  # the end of the lake's newest day: only the days the window needs are read
        last_day = newest_transaction_day(uri)
        until = int(datetime.combine(last_day, time.max, UTC).timestamp()) if last_day else None
    start = lake_start_day(store, until) if until is not None else None
    with console.status(f"reading the lake {uri}"):
        transactions, labels = read_lake_tables(uri, start=start)
    if not newest and transactions.num_rows:
        until = int(transactions["event_time"].to_numpy().max())
    profiles = latest_dob_transactions(uri, lake_start_day(store, until)) if until is not None else None
    with Progress(console=console) as progress:
        task = progress.add_task("backfilling", total=None)
        stats = run_backfill(
            transactions,
            labels,
            store,
            bootstrap.transaction_index(5000),
            newest=until,
            batch=batch,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            profiles=profiles,
        )
    console.print(
        f"{stats.transactions:,} transactions and {stats.labels:,} labels since "
        f"{datetime.fromtimestamp(stats.since, UTC):%Y-%m-%d %H:%M} in {stats.seconds:.1f} s "
        f"({stats.rate:,.0f} events/s): {stats.applied:,} applied, {stats.duplicates:,} already there, "
        f"{stats.late:,} older than their key's retention"
    )
