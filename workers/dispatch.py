"""Running jobs: the Celery path (a tick opens or joins the job's run and dispatches id ranges
as tasks) and the batch path (`aisle refresh` processes the same ranges in-process)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from psycopg import sql

from core.triton import TritonError
from workers import runs
from workers.jobs import BATCH_JOBS, GRAPH, recommendations
from workers.jobs.base import BatchJob, Deps, plan

Enqueue = Callable[[str, int, int], None]
log = logging.getLogger(__name__)


def _observe(deps: Deps, job: BatchJob) -> None:
    """Let a job whose results come from a served model record which model Triton serves before
    its backlog is counted: a new model makes the older predictions pending even when nothing
    else is (workers/jobs/served_model.py). Without Triton the last recorded model stands."""
    observe = getattr(job, "observe", None)
    if observe is None or deps.triton is None:
        return
    try:
        observe(deps)
    except TritonError as exc:
        log.warning("job %s: could not ask Triton which model it serves: %s", job.name, exc)


@dataclass(frozen=True)
class TickResult:
    run: runs.Run | None
    started: bool
    dispatched: int


def tick(deps: Deps, job: BatchJob, enqueue: Enqueue) -> TickResult:
    """Open a run when there is work and none is open; finish it when the backlog is empty.

    A job has at most ``queued_batches_per_job`` batches queued, so jobs sharing a queue take
    turns; every finished batch tops its job's queue up again (`top_up`), so the tick only
    starts rounds and recovers stalls. While a run is open, each tick hands out work nobody
    holds: keys above what was dispatched (new items), everything pending once all dispatched
    rows are done (changed items), and everything pending when the run made no progress for a
    while (tasks lost with a dead worker; running a range twice is harmless)."""
    conn = deps.conn
    ranges: list = []
    _observe(deps, job)
    with conn.transaction():
        runs.lock(conn, job.name)
        backlog = job.backlog(conn)
        run = runs.open_run(conn, job.name)
        started = False
        if backlog.pending == 0:
            if run is not None:
                runs.finish(conn, run.id)
        else:
            started = run is None
            if started:
                run, _ = runs.start_or_join(conn, job.name, backlog.pending)
            else:
                runs.grow(conn, run.id, backlog.pending)
            signs = [t for t in (run.dispatched_at, run.progressed_at) if t is not None]
            stalled = bool(signs) and _seconds_since(conn, max(signs)) > deps.settings.redispatch_after_s
            new_round = started or stalled or run.done >= run.dispatched_rows
            ranges = _refill(deps, job, run, new_round)
    if backlog.pending == 0:
        # Also when the last run is already finished: the worker that finished it may have died
        # before its after-run work (the embeddings' index), which is idempotent and cheap to
        # find done. Never before a first run: an index built on an empty catalog would make
        # its first refresh insert into a live HNSW index, ten times slower than a bulk build.
        if run is not None or runs.last_run(conn, job.name) is not None:
            _after_run(deps, job)
        return TickResult(run, False, 0)
    # Enqueue after commit: a task must never run before the run it reports to exists.
    for r in ranges:
        enqueue(job.name, r.first, r.last)
    return TickResult(run, started, len(ranges))


def top_up(deps: Deps, job: BatchJob, enqueue: Enqueue) -> int:
    """After a batch: queue the open run's next ranges, up to the cap, without counting the
    backlog (the tick does that, once per round). Returns the batches queued."""
    conn = deps.conn
    with conn.transaction():
        runs.lock(conn, job.name)
        run = runs.open_run(conn, job.name)
        # A drained round (changed items behind the dispatched keys) waits for the tick, which
        # re-reads the whole backlog.
        if run is None or run.done >= run.dispatched_rows:
            return 0
        ranges = _refill(deps, job, run, new_round=False)
    for r in ranges:
        enqueue(job.name, r.first, r.last)
    return len(ranges)


def _refill(deps: Deps, job: BatchJob, run: runs.Run, new_round: bool) -> list:
    """Plan and record the ranges that top the run's queued batches up to the cap (inside the
    caller's transaction, under the job's lock)."""
    conn = deps.conn
    batch = job.batch_size(deps.settings)
    # Rows dispatched but not yet counted done, in whole batches: a batch whose rows were taken
    # by another task never counts its full size, and must not hold a slot for ever.
    queued = 0 if new_round else (run.dispatched_rows - run.done) // batch
    room = max(0, deps.settings.queued_batches_per_job - queued)
    if not room:
        return []
    ranges = plan(job, conn, batch, after=0 if new_round else run.dispatched_max_id, limit=room)
    if ranges:
        runs.mark_dispatched(conn, run.id, ranges[-1].last, sum(r.rows for r in ranges), new_round)
    return ranges


def _seconds_since(conn, when: datetime) -> float:
    now = conn.execute("SELECT now()").fetchone()[0]
    return (now - when).total_seconds()


class RangeBusy(Exception):
    """Rows of a task's range are still pending after it ran because another transaction holds
    them (SKIP LOCKED passed them over). The task is retried shortly.

    Jobs over the same items (embeddings and enrichment both claim rows of ``items``) lock each
    other out: on a fresh 54,667-item catalog the embeddings job's first 8 batches all met
    enrichment's locks, counted nothing, and the run sat until the stall redispatch 600 s later.
    Counting such a range as done would stall the same way, so the task tries again instead.
    Rows still pending but held by nobody (released a moment after the claim passed them over,
    or changed again since) are processed once more at once; what is still pending and free
    after that does not make a range busy: the next round takes it."""

    def __init__(self, job: str, first: int, last: int, pending: int):
        super().__init__(f"{job}: {pending} rows of [{first}, {last}] held by another transaction")


def process(deps: Deps, job: BatchJob, first: int, last: int, enqueue: Enqueue | None = None) -> int:
    """One task: process a range, close the run if that was the last of its work, and else
    (given ``enqueue``) queue the run's next ranges, or raise :class:`RangeBusy` while rows of
    the range are still pending (held by another task)."""
    done = _process(deps, job, first, last)
    if enqueue is not None:
        left, held = _still_pending(deps, job, first, last)
        if left and not held:
            # Rows SKIP LOCKED passed over whose holder let go before the probe: taken now.
            # Left to "the next round", they kept this run short of its total, unfinished
            # until the stall redispatch (a worker test caught it at 1,744 of 2,000 items).
            done += _process(deps, job, first, last)
            _, held = _still_pending(deps, job, first, last)
        if held:
            raise RangeBusy(job.name, first, last, held)
        top_up(deps, job, enqueue)
    return done


def _process(deps: Deps, job: BatchJob, first: int, last: int) -> int:
    done = job.process(deps, first, last)
    if done:
        _finish_if_drained(deps, job)
    return done


def _still_pending(deps: Deps, job: BatchJob, first: int, last: int) -> tuple[int, int]:
    """How many rows of the range are still pending, and how many of those another
    transaction holds."""
    with deps.conn.transaction():
        left = [i for i in job.pending_ids(deps.conn, first - 1, job.batch_size(deps.settings)) if i <= last]
        return len(left), _held(deps.conn, job.claims, left) if left else 0


def _held(conn, table: str, ids: list[int]) -> int:
    """How many rows of ``table`` with ``ids`` another transaction holds right now (the probe's
    own locks end with the caller's transaction, a moment later)."""
    free = conn.execute(
        sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} WHERE id = ANY(%s) FOR NO KEY UPDATE SKIP LOCKED) f").format(
            sql.Identifier(table)
        ),
        (ids,),
    ).fetchone()[0]
    return len(ids) - free


def _finish_if_drained(deps: Deps, job: BatchJob) -> None:
    conn = deps.conn
    with conn.transaction():
        run = runs.open_run(conn, job.name)
        # The cheap check first: only a run that has counted all its rows looks at the backlog.
        if run is None or run.done < run.total:
            return
        runs.lock(conn, job.name)
        if job.backlog(conn).pending != 0:
            return
        runs.finish(conn, run.id)
    _after_run(deps, job)


def _after_run(deps: Deps, job: BatchJob) -> None:
    hook = getattr(job, "after_run", None)
    if hook is not None:
        hook(deps)


@dataclass
class Progress:
    done: int
    total: int
    started: float


def run_inline(deps: Deps, job: BatchJob, on_progress: Callable[[Progress], None] | None = None) -> runs.Run:
    """The batch path: join or open the job's run and work the backlog to the end here."""
    conn = deps.conn
    _observe(deps, job)
    with conn.transaction():
        runs.lock(conn, job.name)
        run, _ = runs.start_or_join(conn, job.name, job.backlog(conn).pending)
    progress = Progress(0, run.total, time.monotonic())
    batch, after = job.batch_size(deps.settings), 0
    while True:
        with conn.transaction():
            ids = job.pending_ids(conn, after, batch)
        if not ids:
            break
        progress.done += job.process(deps, ids[0], ids[-1])
        # Rows another worker holds are skipped here and left to it.
        after = ids[-1]
        if on_progress:
            on_progress(progress)
    with conn.transaction():
        runs.lock(conn, job.name)
        open_run = runs.open_run(conn, job.name)
        drained = job.backlog(conn).pending == 0
        if open_run and drained:
            runs.finish(conn, open_run.id)
    if drained:
        _after_run(deps, job)
    return runs.last_run(conn, job.name)


def rebuild_graph(deps: Deps) -> runs.Run:
    conn = deps.conn
    with conn.transaction():
        runs.lock(conn, GRAPH.name)
        run, _ = runs.start_or_join(conn, GRAPH.name, GRAPH.backlog(conn).pending)
    try:
        GRAPH.rebuild(deps)
    except Exception as exc:
        with conn.transaction():
            runs.finish(conn, run.id, error=f"{type(exc).__name__}: {exc}")
        raise
    with conn.transaction():
        conn.execute("UPDATE job_runs SET done = total WHERE id = %s", (run.id,))
        runs.finish(conn, run.id)
    return runs.last_run(conn, GRAPH.name)


@dataclass(frozen=True)
class Freshness:
    job: str
    pending: int
    lag_s: float | None
    last_run: runs.Run | None
    # The served model the job's stored answers follow, as a worker last saw it (jobs that store
    # a model's answers only; workers/jobs/served_model.py).
    model: str | None = None


def freshness(deps: Deps) -> list[Freshness]:
    """Per job: rows pending, age of the oldest unprocessed change, the last run and, for jobs
    that store a model's answers, the model they follow."""
    conn = deps.conn
    out = []
    with conn.transaction():
        now = conn.execute("SELECT now()").fetchone()[0]
        models = dict(conn.execute("SELECT job, identity FROM served_models").fetchall())
        for job in (*BATCH_JOBS.values(), GRAPH):
            backlog = job.backlog(conn)
            lag = (now - backlog.oldest).total_seconds() if backlog.oldest and backlog.pending else 0.0
            out.append(Freshness(job.name, backlog.pending, lag, runs.last_run(conn, job.name), models.get(job.name)))
        if deps.settings.recommend_cache_ttl_s > 0:
            # The warm-up keeps no runs: its freshness is the stale users and the oldest's age.
            backlog = recommendations.backlog(conn)
            lag = max(0.0, (now - backlog.oldest).total_seconds()) if backlog.oldest and backlog.pending else 0.0
            out.append(Freshness("recommendations", backlog.pending, lag, None))
    return out

