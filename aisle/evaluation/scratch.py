"""A scratch database on the stack's Postgres, for evaluations and training that must control
exactly which events the system has seen."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from core.db import prepare
from core.embeddings import DEFAULT_VERSION


def with_database(url: str, dbname: str) -> str:
    """``url`` naming database ``dbname`` instead; a postgresql:// URL stays one (the settings
    accept only URLs)."""
    from urllib.parse import quote, urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.scheme in ("postgresql", "postgres"):
        return urlunsplit(parts._replace(path="/" + quote(dbname)))
    info = conninfo_to_dict(url)
    info["dbname"] = dbname
    return make_conninfo(**info)


@contextmanager
def scratch_database(server_url: str, prefix: str = "aisle_scratch", keep: bool = False) -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    url = with_database(server_url, name)
    created = False
    try:
        # Created inside the try: an interrupt (Ctrl-C, SIGTERM) right after CREATE DATABASE
        # commits still drops it.
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            created = True
        prepare(url, DEFAULT_VERSION)
        yield url
    finally:
        if not keep:
            try:
                with psycopg.connect(server_url, autocommit=True) as conn:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            except psycopg.Error:
                # Where it was never created, the error that stopped it is the one to report.
                if created:
                    raise


def refresh_all(settings, say=lambda m: None) -> None:
    """Every refresh job to the end, in-process (embeddings, profiles, graph)."""
    from workers import dispatch, resources
    from workers.jobs import BATCH_JOBS

    resources.reset()
    deps = resources.deps(need_triton=True, settings=settings)
    try:
        for name in ("embeddings", "profiles"):
            run = dispatch.run_inline(deps, BATCH_JOBS[name])
            say(f"{name}: {run.done if run else 0} rows")
        dispatch.rebuild_graph(deps)
        say("graph rebuilt")
        from core import embeddings

        with deps.conn.transaction():
            embeddings.ensure_index(deps.conn, embeddings.active(deps.conn))
    finally:
        deps.conn.close()
        if deps.triton is not None:
            deps.triton.close()
        resources.reset()


def load_history(url: str, items_path: Path, history) -> None:
    """The items file (Scientific format) and exactly ``history`` (user -> interactions) as
    purchase events, through the real loaders."""
    import tempfile

    from aisle.evaluation.recommend import write_history_csv
    from workers.loading import load

    report = load("scientific-items", items_path, url)
    if not report.inserted:
        raise ValueError(f"{items_path}: no item loaded ({report.summary()}; first errors: {report.errors[:3]})")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.csv"
        write_history_csv(history, path, {})
        report = load("scientific-interactions", path, url)
        if report.rejected:
            # Most often an interaction on an item the items file lacks.
            raise ValueError(f"{report.rejected} history rows rejected, e.g. {', '.join(e.reason for e in report.errors[:3])}")
