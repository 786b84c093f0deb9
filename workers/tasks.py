"""Celery tasks: thin wrappers that take ids and call the plain job modules."""

from __future__ import annotations

import logging

import psycopg

from core.db import DatabaseUnavailable
from core.triton import TritonUnavailable
from workers import dispatch, resources
from workers.app import app
from workers.jobs import BATCH_JOBS

log = logging.getLogger(__name__)

# Retry while Triton or Postgres is down, or another task holds rows of the range (a batch holds
# its rows ~1 s): backoff doubling from 2 s up to 60 s, 30 tries (about 25 minutes) before the
# task gives up and the run's stall redispatch takes over.
RETRY = {
    "autoretry_for": (TritonUnavailable, DatabaseUnavailable, psycopg.OperationalError, dispatch.RangeBusy),
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 30,
}


def _enqueue(job: str, first: int, last: int) -> None:
    process.apply_async((job, first, last), queue=BATCH_JOBS[job].queue)


@app.task(name="aisle.tick", acks_late=True, **RETRY)
def tick(job: str) -> dict:
    # Jobs on the Triton queue ask it which model it serves before counting their backlog.
    result = dispatch.tick(resources.deps(need_triton=BATCH_JOBS[job].queue == "triton"), BATCH_JOBS[job], _enqueue)
    if result.dispatched:
        log.info("job %s: run %s dispatched %d batches", job, result.run.id, result.dispatched)
    return {"run": result.run.id if result.run else None, "dispatched": result.dispatched}


@app.task(name="aisle.process", acks_late=True, **RETRY)
def process(job: str, first: int, last: int) -> int:
    spec = BATCH_JOBS[job]
    return dispatch.process(resources.deps(need_triton=spec.queue == "triton"), spec, first, last, _enqueue)


@app.task(name="aisle.rebuild_graph", acks_late=True, **RETRY)
def rebuild_graph(force: bool = False) -> dict:
    from workers.jobs import GRAPH

    deps = resources.deps(need_triton=False)
    if not force:
        with deps.conn.transaction():
            if GRAPH.backlog(deps.conn).pending == 0:
                return {"run": None}
    run = dispatch.rebuild_graph(deps)
    return {"run": run.id}


@app.task(name="aisle.warm_recommendations", acks_late=True, max_retries=3, default_retry_delay=30)
def warm_recommendations() -> dict:
    """One batch of stale users' recommendations; queues the next batch while a full one made
    progress (beat's next tick picks up the rest otherwise)."""
    from workers.jobs import recommendations

    deps = resources.deps(need_triton=False)
    if not deps.settings.gateway_address:
        return {"asked": 0}
    with recommendations.gateway_client(deps.settings) as client:
        result = recommendations.warm(deps.conn, deps.settings, client.recommend)
    if result.asked == recommendations.WARM_BATCH and result.stored:
        warm_recommendations.delay()
    if result.failed:
        log.warning("recommendation warm-up: %d of %d calls failed", result.failed, result.asked)
    return {"asked": result.asked, "failed": result.failed, "stored": result.stored, "busy": result.busy}
