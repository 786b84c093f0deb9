"""`aisle worker`, `aisle beat`: the long-running processes (the gateway adds `aisle serve`)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from aisle.stack import stack_settings
from core.settings import get_settings


def _export_settings() -> None:
    """Workers read settings from the environment: fill it from the local stack where unset."""
    settings = stack_settings(get_settings())
    for key in ("database_url", "redis_url", "triton_url"):
        value = getattr(settings, key)
        if value and not os.environ.get(f"AISLE_{key.upper()}"):
            os.environ[f"AISLE_{key.upper()}"] = value
    get_settings.cache_clear()


def worker(
    queues: str = typer.Option("triton,db", help="Comma-separated queues: triton (calls Triton), db (Postgres only)."),
    concurrency: int = typer.Option(2, min=1, help="Worker processes."),
    metrics_port: int = typer.Option(0, help="Serve Prometheus metrics on this port (0: none)."),
    loglevel: str = typer.Option("INFO"),
) -> None:
    """Run a Celery worker for the refresh jobs."""
    _export_settings()
    settings = get_settings()
    if not settings.redis_url or not settings.database_url:
        from aisle.errors import fail

        fail("a worker needs AISLE_REDIS_URL and AISLE_DATABASE_URL (or a running `aisle up`)")
    from workers.app import app

    if metrics_port:
        from workers import metrics

        metrics.serve(settings, metrics_port)
    app.worker_main(
        [
            "worker",
            "-Q", queues,
            "-c", str(concurrency),
            "--loglevel", loglevel,
            "-n", f"aisle-{os.getpid()}@%h",
            # No gossip/mingle/heartbeat: workers coordinate through Postgres, not each other.
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]
    )


def beat(
    schedule: Path = typer.Option(Path("/tmp/aisle-beat-schedule"), help="Where beat keeps its schedule state."),
    loglevel: str = typer.Option("INFO"),
) -> None:
    """Run Celery beat (exactly one per deployment: each replica would schedule every job again)."""
    _export_settings()
    from workers.app import app

    app.start(["beat", "-s", str(schedule), "--loglevel", loglevel])
