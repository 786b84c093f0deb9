"""Per-process resources of a worker: one Postgres connection and one Triton client, created on
first use and re-created after Postgres restarts."""

from __future__ import annotations

import psycopg

from core.db import connect
from core.settings import Settings, get_settings
from core.triton import TritonClient
from workers.jobs.base import Deps

_conn: psycopg.Connection | None = None
_triton: TritonClient | None = None


def deps(need_triton: bool, settings: Settings | None = None) -> Deps:
    global _conn, _triton
    settings = settings or get_settings()
    if settings.database_url is None:
        raise RuntimeError("AISLE_DATABASE_URL is not set")
    if _conn is None or _conn.closed or _conn.broken:
        if _conn is not None:
            _conn.close()
        # autocommit: every job scopes its own transactions explicitly.
        _conn = connect(settings.database_url, autocommit=True)
        # Background work does not take every core of the database: a beat tick's backlog counts
        # ran as parallel scans, ~65 ms of CPU on both of the machine's two cores every 10 s,
        # with the gateway's searches in flight waiting for them.
        _conn.execute("SET max_parallel_workers_per_gather = 0")
    if need_triton and _triton is None:
        if settings.triton_url is None:
            raise RuntimeError("AISLE_TRITON_URL is not set")
        _triton = TritonClient(settings.triton_url, settings.triton_timeout_s)
    return Deps(_conn, settings, _triton if need_triton else None)


def reset() -> None:
    """Drop the connections (after a fork: a child must not share its parent's sockets)."""
    global _conn, _triton
    _conn = None
    _triton = None
