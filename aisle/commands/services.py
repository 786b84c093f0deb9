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


def serve(
    address: str = typer.Option("0.0.0.0:50051", "--address", help="gRPC address host:port to listen on."),
    metrics_port: int = typer.Option(0, "--metrics-port", min=0, help="Serve Prometheus metrics on this port (0: none)."),
    grace: float = typer.Option(
        20.0, "--grace", min=0, help="Seconds in-flight calls get to finish after SIGTERM (health says NOT_SERVING at once)."
    ),
) -> None:
    """Run the gRPC gateway (aisle.v1.Aisle with health and reflection) until SIGTERM."""
    import asyncio

    from aisle.errors import fail
    from core import logs

    _export_settings()
    settings = get_settings()
    if not settings.database_url or not settings.triton_url:
        fail("the gateway needs AISLE_DATABASE_URL and AISLE_TRITON_URL (or a running `aisle up`)")
    logs.configure(settings.log_format)
    from gateway.server import serve as serve_gateway

    try:
        asyncio.run(serve_gateway(address, settings, metrics_port=metrics_port or None, grace_s=grace))
    except OSError as exc:
        fail(f"cannot serve on {address} (metrics port {metrics_port}): {exc}")
