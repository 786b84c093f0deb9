"""``load``: one file of a kind into Postgres, in bounded batches, with a report of what it did."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from core.db import DatabaseError, connect
from workers.loading import datasets, standard
from workers.loading.progress import LoadProgress, ProgressHook
from workers.loading.records import Event, Item, Parsed, Review
from workers.loading.report import LoadError, LoadReport, RowError
from workers.loading.rows import RowFile
from workers.loading.store import BatchResult, Store, unknown_item_errors

# Records per transaction. Store time of the Home Depot catalog (54,667 items; 2 cores shared
# with other work, load average 5) by batch size, first load / identical reload:
# 1,000: 3.5 s / 3.2 s; 5,000: 2.9 / 1.1; 10,000: 2.6 / 0.6; one batch of all: 2.6 / 0.5.
# 10,000 gets the speed while bounding memory and each transaction's length.
BATCH_ROWS = 10_000

Source = Callable[..., Iterator[Parsed]]


def _standard(kind: str) -> Source:
    return lambda file: standard.read(kind, file)


# kind -> (source, the options it takes)
KINDS: dict[str, tuple[Source, frozenset[str]]] = {
    "items": (_standard("items"), frozenset()),
    "events": (_standard("events"), frozenset()),
    "reviews": (_standard("reviews"), frozenset()),
    "homedepot": (datasets.homedepot, frozenset()),
    "scientific-items": (datasets.scientific_items, frozenset()),
    "scientific-interactions": (datasets.scientific_interactions, frozenset({"splits", "anchor"})),
    "instacart": (datasets.instacart, frozenset()),
    "sentiment": (datasets.sentiment, frozenset()),
}


def load(
    kind: str,
    path: Path | str,
    database_url: str,
    progress: ProgressHook | None = None,
    *,
    batch_rows: int = BATCH_ROWS,
    **options: Any,
) -> LoadReport:
    """Load ``path`` as ``kind`` (one of ``KINDS``) and report what changed.

    ``options`` are the kind's own (scientific-interactions: ``splits``, ``anchor``); an option
    given as None is ignored. ``progress`` is called after every batch and once at the end.

    Malformed rows are skipped and listed in the report; everything else loads. Raises
    ``LoadError`` when the file cannot be loaded at all (unknown kind or option, missing or
    unreadable file, a header without the required columns, a database without the schema) and
    ``core.db.DatabaseError`` when Postgres cannot be reached.
    """
    if kind not in KINDS:
        raise LoadError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    source, allowed = KINDS[kind]
    # None means "not given", so a CLI can pass every flag it has to every kind.
    options = {name: value for name, value in options.items() if value is not None}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise LoadError(f"{kind} takes no option {', '.join(unknown)}" + (
            f" (it takes {', '.join(sorted(allowed))})" if allowed else ""))
    if batch_rows < 1:
        raise LoadError(f"batch_rows must be positive, not {batch_rows}")
    path = Path(path)
    report = LoadReport(kind, path)
    started = time.monotonic()
    with RowFile(path) as file:
        records = source(file, **options)
        try:
            with connect(database_url, register=False) as conn:
                _Loader(conn, file, report, progress, batch_rows, started).run(records)
                _analyse(conn, report)
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedObject) as exc:
            raise LoadError(
                f"the database has no aisle schema ({exc.diag.message_primary}): run `aisle db migrate`"
            ) from None
        except psycopg.OperationalError as exc:
            raise DatabaseError(f"lost the database connection while loading {path}: {exc}") from None
    report.seconds = time.monotonic() - started
    return report


def _analyse(conn: psycopg.Connection, report: LoadReport) -> None:
    """Fresh planner statistics for the tables the load changed. Until autovacuum gets round
    to its own ANALYZE (a minute or more after a bulk load), the planner sizes these tables as
    they were before the load (empty, after an import) and plans the gateway's joins for that.
    ANALYZE reads a fixed sample (~0.3 s per table here), whatever the table's size."""
    for table, counts in report.tables.items():
        if counts.inserted or counts.updated:
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
    conn.commit()


class _Loader:
    def __init__(
        self, conn: psycopg.Connection, file: RowFile, report: LoadReport,
        progress: ProgressHook | None, batch_rows: int, started: float,
    ) -> None:
        self._store = Store(conn)
        self._file = file
        self._report = report
        self._progress = progress
        self._batch_rows = batch_rows
        self._started = started
        self._items: list[Item] = []
        self._events: list[Event] = []
        self._reviews: list[Review] = []
        # Key -> first line, for items and reviews: a key twice in one file is an error, not
        # an update (events are immutable: a repeated one is simply not inserted again).
        self._item_lines: dict[str, int] = {}
        self._review_lines: dict[str, int] = {}

    def run(self, records: Iterator[Parsed]) -> None:
        for record in records:
            if isinstance(record, RowError):
                self._report.reject(record)
            elif isinstance(record, Item):
                if self._first(self._item_lines, record.external_id, record.line, "external_id"):
                    self._items.append(record)
                    if len(self._items) >= self._batch_rows:
                        self._flush_items()
            elif isinstance(record, Event):
                self._events.append(record)
                if len(self._events) >= self._batch_rows:
                    self._flush_events()
            elif self._first(self._review_lines, record.external_id, record.line, "review_id"):
                self._reviews.append(record)
                if len(self._reviews) >= self._batch_rows:
                    self._flush_reviews()
        self._flush_items()
        self._flush_reviews()
        self._flush_events()
        self._report.read = self._file.rows_read
        self._report.skipped = self._file.skipped
        self._report.errors.sort(key=lambda e: e.line)
        self._tick(done=True)

    def _first(self, lines: dict[str, int], key: str, line: int, name: str) -> bool:
        first = lines.setdefault(key, line)
        if first != line:
            self._report.reject(self._file.error(line, f"duplicate {name} {key!r} (first on line {first})"))
            return False
        return True

    def _flush_items(self) -> None:
        if self._items:
            self._count("items", self._write(self._store.items, self._items))
            self._items = []
            self._tick()

    def _flush_events(self) -> None:
        if self._events:
            self._flush_items()  # events may refer to items of the same file
            self._count("events", self._write(self._store.events, self._events))
            self._events = []
            self._tick()

    def _flush_reviews(self) -> None:
        if self._reviews:
            self._flush_items()
            self._count("reviews", self._write(self._store.reviews, self._reviews))
            self._reviews = []
            self._tick()

    def _write(self, write: Callable[[list], BatchResult], batch: list) -> BatchResult:
        try:
            return write(batch)
        except (psycopg.DataError, psycopg.IntegrityError):
            pass
        # Validation should have caught every value Postgres refuses; if one slipped through,
        # find it row by row so only that row is lost.
        total = BatchResult(unknown_items=[])
        for record in batch:
            try:
                result = write([record])
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                reason = exc.diag.message_primary or str(exc)
                self._report.reject(self._file.error(record.line, f"refused by Postgres: {reason}"))
                continue
            total.inserted += result.inserted
            total.updated += result.updated
            total.unchanged += result.unchanged
            total.users_inserted += result.users_inserted
            total.unknown_items.extend(result.unknown_items or [])
        return total

    def _count(self, table: str, result: BatchResult) -> None:
        counts = self._report.table(table)
        counts.inserted += result.inserted
        counts.updated += result.updated
        counts.unchanged += result.unchanged
        if result.users_inserted:
            self._report.table("users").inserted += result.users_inserted
        for error in unknown_item_errors(self._file.label, result.unknown_items or []):
            self._report.reject(error)

    def _tick(self, done: bool = False) -> None:
        if self._progress is not None:
            self._progress(LoadProgress(
                rows=self._file.rows_read, bytes_read=self._file.position, bytes_total=self._file.size,
                seconds=time.monotonic() - self._started, done=done,
            ))
