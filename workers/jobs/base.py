"""What a refresh job is: pending work keyed by ascending ids, processed in claimed batches.

``process(first, last)`` claims the pending rows of an id range with ``FOR NO KEY UPDATE SKIP
LOCKED``, does the work and writes the result in the same transaction. Two workers never hold
the same row, a crash rolls back (the rows stay pending), and a range already done is a no-op:
running a batch twice, concurrently or after a redelivery, is harmless. (NO KEY: rows another
transaction merely references, as the graph job's foreign keys to items do, stay claimable.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, Protocol

import psycopg

from core.settings import Settings
from core.triton import TritonClient


@dataclass
class Deps:
    conn: psycopg.Connection
    settings: Settings
    # None for Postgres-only jobs.
    triton: TritonClient | None = None


@dataclass(frozen=True)
class Backlog:
    pending: int
    # When the oldest unprocessed change happened (None: nothing pending).
    oldest: datetime | None


class BatchJob(Protocol):
    name: ClassVar[str]
    # Celery queue: "triton" for jobs that call Triton, "db" for Postgres-only ones.
    queue: ClassVar[str]
    # The table whose rows a batch claims, by the job's keys ("items", "users", "reviews").
    claims: ClassVar[str]

    def batch_size(self, settings: Settings) -> int: ...

    def pending_ids(self, conn: psycopg.Connection, after: int, limit: int) -> list[int]:
        """Keys with pending work greater than ``after``, ascending, at most ``limit``."""

    def backlog(self, conn: psycopg.Connection) -> Backlog: ...

    def process(self, deps: Deps, first: int, last: int) -> int:
        """Claim and process the pending rows with keys in [first, last]; return rows done."""

    # Jobs that store a served model's answers also define ``observe(deps) -> str``: record which
    # model Triton serves, so that the backlog counts what an older model made (served_model.py).


@dataclass(frozen=True)
class Range:
    first: int
    last: int
    rows: int


def plan(job: BatchJob, conn: psycopg.Connection, batch: int, after: int = 0, limit: int | None = None) -> list[Range]:
    """Split the backlog with keys above ``after`` into id ranges of at most ``batch`` rows
    (the first ``limit`` of them)."""
    ranges = []
    while limit is None or len(ranges) < limit:
        ids = job.pending_ids(conn, after, batch)
        if not ids:
            return ranges
        ranges.append(Range(ids[0], ids[-1], len(ids)))
        after = ids[-1]
    return ranges
