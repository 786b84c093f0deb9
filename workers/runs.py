"""Refresh runs in ``job_runs``: one open run per job, its progress, and per-job freshness."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime

import psycopg


@dataclass(frozen=True)
class Run:
    id: int
    job: str
    started_at: datetime
    finished_at: datetime | None
    total: int
    done: int
    dispatched_at: datetime | None
    progressed_at: datetime | None
    dispatched_max_id: int
    dispatched_rows: int

    @property
    def rate(self) -> float | None:
        end = self.finished_at or datetime.now(self.started_at.tzinfo)
        seconds = (end - self.started_at).total_seconds()
        return self.done / seconds if seconds > 0 else None


_COLUMNS = "id, job, started_at, finished_at, total, done, dispatched_at, progressed_at, dispatched_max_id, dispatched_rows"


def lock(conn: psycopg.Connection, job: str) -> None:
    """Serialise run bookkeeping for ``job`` until the transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (0x4A4F42, zlib.crc32(job.encode()) & 0x7FFFFFFF))


def open_run(conn: psycopg.Connection, job: str) -> Run | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM job_runs WHERE job = %s AND finished_at IS NULL", (job,)).fetchone()
    return Run(*row) if row else None


def last_run(conn: psycopg.Connection, job: str) -> Run | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM job_runs WHERE job = %s ORDER BY started_at DESC, id DESC LIMIT 1", (job,)
    ).fetchone()
    return Run(*row) if row else None


def start_or_join(conn: psycopg.Connection, job: str, total: int) -> tuple[Run, bool]:
    """The job's open run, or a new one of ``total`` rows; True when it was started here."""
    existing = open_run(conn, job)
    if existing:
        return existing, False
    row = conn.execute(
        f"INSERT INTO job_runs (job, total) VALUES (%s, %s) "
        f"ON CONFLICT (job) WHERE finished_at IS NULL DO NOTHING RETURNING {_COLUMNS}",
        (job, total),
    ).fetchone()
    if row is None:  # another process opened it between our read and insert
        return open_run(conn, job), False
    return Run(*row), True


def add_progress(conn: psycopg.Connection, job: str, rows: int) -> None:
    """Count rows done towards the open run (inside the transaction that did the work)."""
    if rows:
        conn.execute(
            "UPDATE job_runs SET done = done + %s, progressed_at = now() WHERE job = %s AND finished_at IS NULL",
            (rows, job),
        )


def mark_dispatched(conn: psycopg.Connection, run_id: int, max_id: int, rows: int, new_round: bool) -> None:
    conn.execute(
        "UPDATE job_runs SET dispatched_at = now(), dispatched_max_id = GREATEST(dispatched_max_id, %s), "
        "dispatched_rows = CASE WHEN %s THEN done + %s ELSE dispatched_rows + %s END WHERE id = %s",
        (max_id, new_round, rows, rows, run_id),
    )


def grow(conn: psycopg.Connection, run_id: int, total: int) -> None:
    """New work arrived during the run: its total follows the backlog."""
    conn.execute("UPDATE job_runs SET total = GREATEST(total, done + %s) WHERE id = %s", (total, run_id))


def finish(conn: psycopg.Connection, run_id: int, error: str | None = None) -> None:
    conn.execute("UPDATE job_runs SET finished_at = now(), error = %s WHERE id = %s", (error, run_id))
