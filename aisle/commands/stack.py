"""`aisle up`, `aisle status`, `aisle down`: the local stack."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from aisle import stack
from aisle.errors import EXIT_USAGE, console, say
from core.settings import load_settings


def up(
    no_triton: bool = typer.Option(False, help="Do not start tritonserver."),
    no_services: bool = typer.Option(False, help="Start only Postgres, Redis and Triton (no workers, beat, gateway)."),
) -> None:
    """Start the local stack: Postgres+pgvector, Redis, Triton, then workers, beat and gateway."""
    settings = load_settings()
    try:
        stack.up(settings, with_triton=not no_triton, with_services=not no_services, say=say)
    except stack.StackError as exc:
        say(str(exc))
        raise typer.Exit(0 if isinstance(exc, stack.AlreadyRunning) else EXIT_USAGE) from None
    _print(settings, with_jobs=False)


def down() -> None:
    """Stop everything `aisle up` started, and nothing else."""
    stopped = stack.down(load_settings(), say=say)
    say("stopped " + ", ".join(stopped) if stopped else "nothing was running")


def status(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Each component and its address; each refresh job's backlog, lag and last run."""
    settings = load_settings()
    if as_json:
        print(json.dumps({"components": stack.status(settings), "jobs": _jobs(settings)}, default=str))
        return
    _print(settings, with_jobs=True)


def _jobs(settings) -> list[dict]:
    """Freshness per job, when a database is reachable; [] otherwise."""
    from core.db import DatabaseError, connect
    from workers import dispatch
    from workers.jobs.base import Deps

    filled = stack.stack_settings(settings)
    if not filled.database_url:
        return []
    import psycopg

    try:
        with connect(filled.database_url, autocommit=True) as conn:
            rows = dispatch.freshness(Deps(conn, filled))
    except (DatabaseError, psycopg.Error):
        # Unreachable, or a schema `aisle db migrate` has not brought up to date: no job rows.
        return []
    out = []
    for f in rows:
        run = f.last_run
        out.append(
            {
                "job": f.job,
                "pending": f.pending,
                "lag_s": round(f.lag_s or 0.0, 1),
                "last_run_started": run.started_at.isoformat() if run else None,
                "last_run_finished": run.finished_at.isoformat() if run and run.finished_at else None,
                "last_run_rows": run.done if run else None,
                "last_run_rate": round(run.rate, 1) if run and run.rate else None,
                "model": f.model,
            }
        )
    return out


def _print(settings, with_jobs: bool) -> None:
    rows = stack.status(settings)
    out = Console()
    if not rows:
        console.print("aisle is not running (`aisle up` starts it)")
    else:
        table = Table("component", "address", "state", "pid", "log", title="components")
        for r in rows:
            table.add_row(r["component"], r["address"], r["state"], str(r["pid"] or ""), r["log"] or "")
        out.print(table)
    if with_jobs:
        jobs = _jobs(settings)
        if jobs:
            table = Table("job", "pending", "lag (s)", "last run finished", "rows", "rows/s", "model", title="refresh jobs")
            for j in jobs:
                table.add_row(
                    j["job"], str(j["pending"]), str(j["lag_s"]), j["last_run_finished"] or "-",
                    str(j["last_run_rows"] if j["last_run_rows"] is not None else "-"),
                    str(j["last_run_rate"] or "-"), j["model"] or "-",
                )
            out.print(table)
