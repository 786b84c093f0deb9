"""Refresh jobs through real Celery workers, Triton and Postgres, and as batch commands."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest

from core.db import connect

from core.catalog import embedding_text
from core.settings import load_settings
from tests.workers.conftest import load_homedepot, trigger, wait_for_run

VERSION = "all-MiniLM-L6-v2@1"
REPO = Path(__file__).resolve().parents[2]


def _embeddings(url: str) -> dict[int, tuple[bytes, np.ndarray]]:
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT item_id, content_hash, embedding FROM item_embeddings WHERE model_version = %s", (VERSION,)
        )
        return {r[0]: (bytes(r[1]), np.asarray(r[2])) for r in rows}


def assert_every_item_embedded_once_and_correctly(url: str, triton_url: str, sample: int = 300) -> None:
    """Every item has exactly one embedding for the version, of its current content, equal to
    what the encoder gives for its text (checked on a random sample)."""
    from core.triton import TritonClient

    with psycopg.connect(url) as conn:
        items = conn.execute("SELECT id, title, description, content_hash FROM items").fetchall()
        per_item = conn.execute(
            "SELECT max(n) FROM (SELECT count(*) n FROM item_embeddings WHERE model_version = %s GROUP BY item_id) c",
            (VERSION,),
        ).fetchone()[0]
    stored = _embeddings(url)
    assert per_item == 1
    assert set(stored) == {i[0] for i in items}
    assert all(stored[i[0]][0] == bytes(i[3]) for i in items), "an embedding of stale content"
    rng = np.random.default_rng(0)
    picked = [items[k] for k in rng.choice(len(items), size=min(sample, len(items)), replace=False)]
    client = TritonClient(triton_url)
    try:
        expected = client.embed([embedding_text(i[1], i[2]) for i in picked])
    finally:
        client.close()
    got = np.stack([stored[i[0]][1] for i in picked])
    assert (got * expected).sum(1).min() >= 0.9999


def test_celery_refresh_embeds_every_item_once(workers, worker_env, triton_url, tmp_path):
    url = worker_env["AISLE_DATABASE_URL"]
    # given 2,000 real products and a running worker
    n = load_homedepot(url, tmp_path, 2000)
    workers.start()
    # when the embeddings job is triggered (as beat does)
    trigger(worker_env, "embeddings")
    run = wait_for_run(url, "embeddings", timeout=180)
    # then the run counted every item once and every item has a correct embedding
    assert run["total"] == run["done"] == n
    assert_every_item_embedded_once_and_correctly(url, triton_url)


def test_refresh_with_celery_returns_once_the_index_exists_and_a_tick_rebuilds_a_lost_one(
    workers, worker_env, tmp_path
):
    from core import embeddings

    url = worker_env["AISLE_DATABASE_URL"]
    # given 300 products a worker has embedded, whose HNSW index is then lost (as when the worker
    # that finished the run died before building it)
    load_homedepot(url, tmp_path, 300)
    workers.start()
    trigger(worker_env, "embeddings")
    wait_for_run(url, "embeddings", timeout=180)
    with psycopg.connect(url, autocommit=True) as conn:
        model = embeddings.active(conn)
        deadline = time.monotonic() + 60
        while not embeddings.has_index(conn, model):
            assert time.monotonic() < deadline, "the worker that finished the run built no index"
            time.sleep(0.2)
        conn.execute(f'DROP INDEX "{embeddings.index_name(model.version)}"')
    # when `aisle refresh embeddings --celery` runs with nothing left to embed
    proc = subprocess.run(
        [sys.executable, "-m", "aisle.cli", "refresh", "embeddings", "--celery", "--timeout", "120"],
        cwd=REPO, env=worker_env, capture_output=True, text=True, timeout=180, check=False,
    )
    # then it returns only once the index exists again, which its tick had a worker build
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    with psycopg.connect(url) as conn:
        assert embeddings.has_index(conn, model)


def test_two_workers_never_embed_an_item_twice(workers, worker_env, triton_url, tmp_path):
    url = worker_env["AISLE_DATABASE_URL"]
    # given 4,000 products and two workers of two processes each, all competing for batches
    n = load_homedepot(url, tmp_path, 4000)
    workers.start()
    workers.start()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_reset()")
    # when the job is triggered several times at once (and each dispatch is duplicated)
    for _ in range(3):
        trigger(worker_env, "embeddings")
    wait_for_run(url, "embeddings", timeout=240, retick=worker_env)
    # then Postgres saw exactly one insert per item and no update: nobody wrote an item twice
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        ins, upd = conn.execute(
            "SELECT n_tup_ins, n_tup_upd FROM pg_stat_user_tables WHERE relname = 'item_embeddings'"
        ).fetchone()
        runs = conn.execute("SELECT count(*), sum(done) FROM job_runs WHERE job = 'embeddings'").fetchone()
    assert (ins, upd) == (n, 0)
    # and the triggers joined one run instead of starting copies of the same work
    assert runs == (1, n)
    assert_every_item_embedded_once_and_correctly(url, triton_url, sample=100)


def test_incremental_refresh_touches_only_changed_items(fresh_database_url, triton_url, tmp_path):
    from workers import dispatch, resources
    from workers.jobs import BATCH_JOBS

    # given 1,000 embedded products (batch path, as `aisle refresh embeddings` runs it)
    load_homedepot(fresh_database_url, tmp_path, 1000)
    settings = load_settings(database_url=fresh_database_url, triton_url=triton_url)
    resources.reset()
    deps = resources.deps(need_triton=True, settings=settings)
    first = dispatch.run_inline(deps, BATCH_JOBS["embeddings"])
    assert first.done == 1000
    # when 1% of the titles change
    with psycopg.connect(fresh_database_url) as conn:
        changed = [r[0] for r in conn.execute("SELECT id FROM items ORDER BY id LIMIT 10")]
        from core.catalog import content_hash

        for item_id in changed:
            title = f"Refreshed title {item_id} cordless drill"
            conn.execute(
                "UPDATE items SET title = %s, content_hash = %s, updated_at = now() WHERE id = %s",
                (title, content_hash(title), item_id),
            )
    # then the next run embeds exactly those 10, to their new text
    second = dispatch.run_inline(deps, BATCH_JOBS["embeddings"])
    resources.reset()
    assert (second.total, second.done) == (10, 10)
    assert second.id != first.id
    assert_every_item_embedded_once_and_correctly(fresh_database_url, triton_url, sample=50)


def test_ticks_and_finished_batches_top_the_queue_up_to_the_cap(fresh_database_url, triton_url, tmp_path):
    from workers import dispatch, resources
    from workers.jobs import BATCH_JOBS

    # given 1,000 products, batches of 100 and at most 3 batches of a job queued
    load_homedepot(fresh_database_url, tmp_path, 1000)
    settings = load_settings(database_url=fresh_database_url, triton_url=triton_url, embedding_batch=100,
                             queued_batches_per_job=3)
    resources.reset()
    deps = resources.deps(need_triton=True, settings=settings)
    job = BATCH_JOBS["embeddings"]
    queue: list[tuple[int, int]] = []

    def enqueue(name, first, last):
        queue.append((first, last))

    try:
        # when beat ticks twice before any batch is done
        dispatch.tick(deps, job, enqueue)
        dispatch.tick(deps, job, enqueue)
        # then only the cap is queued: the second tick found no room
        assert len(queue) == 3
        # and once a batch is done, its task queues one more itself, after the ones queued
        first, last = queue.pop(0)
        assert dispatch.process(deps, job, first, last, enqueue) == 100
        assert len(queue) == 3 and queue[-1][0] > queue[-2][1]
        # and working the queue as a worker would, with no further tick, embeds every item
        # with each range queued exactly once
        handed_out = [(first, last), *queue]
        while queue:
            first, last = queue.pop(0)
            before = len(queue)
            dispatch.process(deps, job, first, last, enqueue)
            handed_out += queue[before:]
    finally:
        resources.reset()
    assert len(handed_out) == len(set(handed_out)) == 10
    with psycopg.connect(fresh_database_url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT item_id) FROM item_embeddings").fetchone() == (1000, 1000)
        assert conn.execute(
            "SELECT done, finished_at IS NOT NULL FROM job_runs WHERE job = 'embeddings'"
        ).fetchone() == (1000, True)


def _one_embeddings_range(url: str, triton_url: str, tmp_path: Path, n: int):
    """``n`` products and the embeddings job ticked once into a single range over all of them:
    (deps, job, (first, last), the queue the range's task tops up). Callers end with
    ``resources.reset()``."""
    from workers import dispatch, resources
    from workers.jobs import BATCH_JOBS

    load_homedepot(url, tmp_path, n)
    settings = load_settings(database_url=url, triton_url=triton_url, embedding_batch=n)
    resources.reset()
    deps = resources.deps(need_triton=True, settings=settings)
    job = BATCH_JOBS["embeddings"]
    queue: list[tuple[int, int]] = []
    dispatch.tick(deps, job, lambda name, first, last: queue.append((first, last)))
    [only] = queue
    queue.clear()
    return deps, job, only, queue


def test_a_task_whose_rows_another_job_holds_retries_instead_of_counting_its_range_done(
    fresh_database_url, triton_url, tmp_path
):
    from workers import dispatch, resources

    # given 200 products, one queued embeddings range over all of them, and another job's
    # transaction holding 50 of those rows (as enrichment's batch over the same items does)
    deps, job, (first, last), queue = _one_embeddings_range(fresh_database_url, triton_url, tmp_path, 200)
    try:
        with psycopg.connect(fresh_database_url) as holder:
            held = [r[0] for r in holder.execute(
                "SELECT id FROM items ORDER BY id LIMIT 50 FOR NO KEY UPDATE"
            )]
            # when the range's task runs
            with pytest.raises(dispatch.RangeBusy, match="50 rows"):
                dispatch.process(deps, job, first, last, queue.append)
            # then it embedded what was free, and not what was held
            with psycopg.connect(fresh_database_url) as conn:
                embedded = {r[0] for r in conn.execute("SELECT item_id FROM item_embeddings")}
            assert len(embedded) == 150 and not embedded & set(held)
        # and once the holder is done, its retry finishes the range and the run
        assert dispatch.process(deps, job, first, last, queue.append) == 50
    finally:
        resources.reset()
    with psycopg.connect(fresh_database_url) as conn:
        assert conn.execute(
            "SELECT done, finished_at IS NOT NULL FROM job_runs WHERE job = 'embeddings'"
        ).fetchone() == (200, True)


def test_rows_released_between_the_claim_and_the_probe_are_taken_by_the_same_task(
    fresh_database_url, triton_url, tmp_path
):
    from workers import dispatch, resources

    # given 200 products in one queued embeddings range, 50 of them held by another transaction
    # that lets go just after the task's claim passed them over (the race a worker test met)
    deps, job, (first, last), queue = _one_embeddings_range(fresh_database_url, triton_url, tmp_path, 200)
    holder = psycopg.connect(fresh_database_url)

    class ReleasedAfterTheClaim:
        def __getattr__(self, name):
            return getattr(job, name)

        def process(self, deps, first, last):
            done = job.process(deps, first, last)
            holder.rollback()
            return done

    try:
        holder.execute("SELECT id FROM items ORDER BY id LIMIT 50 FOR NO KEY UPDATE").fetchall()
        # when the range's task runs
        done = dispatch.process(deps, ReleasedAfterTheClaim(), first, last, queue.append)
    finally:
        holder.close()
        resources.reset()
    # then it embedded the released rows too, and the run is complete, not waiting for a redispatch
    assert done == 200
    with psycopg.connect(fresh_database_url) as conn:
        assert conn.execute("SELECT count(DISTINCT item_id) FROM item_embeddings").fetchone()[0] == 200
        assert conn.execute(
            "SELECT done, finished_at IS NOT NULL FROM job_runs WHERE job = 'embeddings'"
        ).fetchone() == (200, True)


def test_a_range_counts_as_busy_only_for_rows_another_transaction_holds(fresh_database_url, tmp_path):
    from workers import dispatch

    # given 20 products, 5 of them held by another transaction
    load_homedepot(fresh_database_url, tmp_path, 20)
    with psycopg.connect(fresh_database_url) as holder, psycopg.connect(fresh_database_url) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM items ORDER BY id")]
        holder.execute("SELECT id FROM items WHERE id = ANY(%s) FOR NO KEY UPDATE", (ids[:5],)).fetchall()
        # when a task asks which of its still-pending rows are held
        # then exactly those 5 are, whatever else is pending
        assert dispatch._held(conn, "items", ids) == 5
        assert dispatch._held(conn, "items", ids[5:]) == 0
        holder.rollback()
        assert dispatch._held(conn, "items", ids) == 0


def test_batches_that_met_another_jobs_locks_are_retried_by_the_worker_without_a_stall_redispatch(
    workers, worker_env, triton_url, tmp_path
):
    url = worker_env["AISLE_DATABASE_URL"]
    # given 2,000 products, a worker that would redispatch a stalled run only after 10 minutes,
    # and another transaction holding every item's row (as a concurrent enrichment batch does)
    n = load_homedepot(url, tmp_path, 2000)
    workers.start(AISLE_REDISPATCH_AFTER_S="600")
    with psycopg.connect(url) as holder:
        holder.execute("SELECT id FROM items FOR NO KEY UPDATE").fetchall()
        # when the embeddings job is triggered and its batches meet the held rows
        trigger(worker_env, "embeddings")
        with psycopg.connect(url, autocommit=True) as conn:
            deadline = time.monotonic() + 60
            while not conn.execute(
                "SELECT 1 FROM job_runs WHERE job = 'embeddings' AND dispatched_rows > 0"
            ).fetchone():
                assert time.monotonic() < deadline, "the tick dispatched nothing"
                time.sleep(0.2)
        time.sleep(2)
    # then, once the holder is done, the worker's retries finish the run long before the 600 s
    # stall redispatch (the retries back off 2, 4, 8, 16, 32 s with jitter). A run that stood at
    # 1,744 of 2,000 items here twice was not slow: one task had run as the holder let go, and
    # left its 256 released rows to a next round that never came (the test above pins it).
    run = wait_for_run(url, "embeddings", timeout=180)
    assert run["total"] == run["done"] == n and run["error"] is None, run
    assert_every_item_embedded_once_and_correctly(url, triton_url, sample=100)


@pytest.mark.parametrize("job", ["embeddings"])
def test_a_trigger_while_running_joins_the_open_run(fresh_database_url, job):
    from workers import runs

    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        with conn.transaction():
            first, started = runs.start_or_join(conn, job, 100)
        with conn.transaction():
            again, started_again = runs.start_or_join(conn, job, 100)
    assert started and not started_again
    assert again.id == first.id


def _subset_csv(source: Path, dest: Path, n: int) -> Path:
    import csv

    with open(source, encoding="utf-8", newline="") as f, open(dest, "w", encoding="utf-8", newline="") as out:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(out, fieldnames=reader.fieldnames)
        writer.writeheader()
        writer.writerows(row for _, row in zip(range(n), reader))
    return dest


@pytest.mark.parametrize("job, artifact, stamp, table", [
    ("enrichment", "product_classifier", "predicted_model", "item_stats"),
    ("sentiment", "sentiment", "sentiment_model", "reviews"),
])
def test_a_model_triton_starts_serving_predicts_again_what_an_older_one_predicted(
    fresh_database_url, triton_url, tmp_path, job, artifact, stamp, table
):
    from export import artifacts
    from tests.datasets import data_file
    from workers import dispatch, resources
    from workers.jobs import BATCH_JOBS
    from workers.loading import load

    # given 60 reviewed products, scored and classified by the served models (the batch path)
    source = _subset_csv(data_file("sentiment", "reviews_train.csv"), tmp_path / "reviews.csv", 60)
    assert not load("sentiment", source, fresh_database_url).errors
    settings = load_settings(database_url=fresh_database_url, triton_url=triton_url)
    resources.reset()
    deps = resources.deps(need_triton=True, settings=settings)
    spec = BATCH_JOBS[job]
    first = dispatch.run_inline(deps, spec)
    served = artifacts.served_fingerprint(artifact)
    with psycopg.connect(fresh_database_url) as conn:
        rows = conn.execute(f"SELECT count(*), count(*) FILTER (WHERE {stamp} = %s) FROM {table}", (served,)).fetchone()
        assert rows[0] == first.done > 0 and rows[1] == rows[0]
        assert conn.execute("SELECT identity FROM served_models WHERE job = %s", (job,)).fetchone() == (served,)
    # (which `aisle status` shows beside the job)
    assert {f.job: f.model for f in dispatch.freshness(deps)}[job] == served
    with psycopg.connect(fresh_database_url) as conn:
        # when an older model had made those predictions, and was what the workers last saw
        conn.execute(f"UPDATE {table} SET {stamp} = 'older'")
        if job == "enrichment":
            conn.execute("UPDATE item_stats SET predicted_department = 'stale'")
        else:
            conn.execute("UPDATE reviews SET sentiment_prob = -1")
        conn.execute("UPDATE served_models SET identity = 'older' WHERE job = %s", (job,))
    with deps.conn.transaction():
        assert spec.backlog(deps.conn).pending == 0
    # then the next tick asks Triton, finds the served model changed and dispatches every row
    enqueued: list[tuple[str, int, int]] = []
    tick = dispatch.tick(deps, spec, lambda *task: enqueued.append(task))
    assert tick.started and enqueued and tick.run.total == first.done
    # and working that run predicts every row again with the served model, once
    for _, low, high in enqueued:
        dispatch.process(deps, spec, low, high)
    later: list[tuple[str, int, int]] = []
    assert dispatch.tick(deps, spec, lambda *task: later.append(task)).dispatched == 0 and not later
    resources.reset()
    with psycopg.connect(fresh_database_url) as conn:
        assert conn.execute(f"SELECT count(*) FROM {table} WHERE {stamp} IS DISTINCT FROM %s", (served,)).fetchone() == (0,)
        stale = "predicted_department = 'stale'" if job == "enrichment" else "sentiment_prob = -1"
        assert conn.execute(f"SELECT count(*) FROM {table} WHERE {stale}").fetchone() == (0,)
