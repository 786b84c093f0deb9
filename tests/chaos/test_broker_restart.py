"""The broker (Redis) stopped while refresh tasks sit in its queue, then restarted on the same
port and data folder: the queued work is still there and completes, nothing is lost and
nothing is done or counted twice."""

from __future__ import annotations

import os
import time

import psycopg
import pytest
import redis as redis_client

from aisle import processes
from tests.workers.conftest import Workers, load_homedepot, run_progress, trigger, wait_for_run

pytestmark = [pytest.mark.slow, pytest.mark.data]

ITEMS = 600
# Small batches make many queued tasks: 600 items / 25 = 24 tasks, worked one at a time.
BATCH = 25
# Long enough that the job's stall redispatch cannot stand in for the broker: the queued
# tasks themselves must survive (the worker tests use 30 s to show that other path).
REDISPATCH_AFTER_S = 600
# The unacknowledged task in flight when the broker went away comes back after this.
VISIBILITY_S = 15
BROKER_DOWN_S = 4.0
# The first batch is done within seconds; this only bounds a broken worker.
FIRST_BATCH_S = 120


def queued(url: str, queue: str) -> int:
    return redis_client.Redis.from_url(url).llen(queue)


def test_given_queued_refresh_tasks_when_the_broker_restarts_then_the_work_completes_exactly_once(
    fresh_database_url, triton_url, tmp_path, chaos_record
):
    url = fresh_database_url
    # Given a Redis of this test's own (append-only file, as `aisle up` starts it) and a
    # worker embedding 600 items in 24 queued tasks, one at a time
    port = processes.free_port()
    broker = processes.redis(tmp_path / "redis", port, tmp_path / "redis.log").start(timeout=30)
    broker_url = processes.redis_url(port)
    assert load_homedepot(url, tmp_path, ITEMS) == ITEMS
    env = dict(os.environ, AISLE_DATABASE_URL=url, AISLE_REDIS_URL=broker_url, AISLE_TRITON_URL=triton_url,
               AISLE_RUN_DIR=str(tmp_path / "run"), AISLE_EMBEDDING_BATCH=str(BATCH),
               AISLE_TASK_VISIBILITY_TIMEOUT_S=str(VISIBILITY_S), AISLE_REDISPATCH_AFTER_S=str(REDISPATCH_AFTER_S),
               # One tick queues all 24 batches: the queue must hold work when the broker stops.
               AISLE_QUEUED_BATCHES_PER_JOB=str(ITEMS // BATCH))
    workers = Workers(env, tmp_path)
    try:
        workers.start(concurrency=1, queues="triton")
        trigger(env, "embeddings")
        deadline = time.monotonic() + FIRST_BATCH_S
        while run_progress(url, "embeddings") < BATCH and time.monotonic() < deadline:
            time.sleep(0.1)
        done_at_stop = run_progress(url, "embeddings")
        waiting = queued(broker_url, "triton")
        assert waiting > 0, "the refresh finished before the broker could be stopped"
        # When the broker stops with those tasks queued, and comes back on the same port and data
        broker.stop()
        time.sleep(BROKER_DOWN_S)
        broker = processes.redis(tmp_path / "redis", port, tmp_path / "redis.log").start(timeout=30)
        # (less what the worker took between that count and the broker's exit, which writes its
        # append-only file first: the task it finishes then and the next one; runs here saw 0-2)
        assert queued(broker_url, "triton") >= waiting - 2, "the queued tasks did not survive the restart"
        # Then the refresh completes from the queue alone (no tick re-sent)
        run = wait_for_run(url, "embeddings", timeout=180)
    finally:
        workers.stop_all()
        broker.stop()
    chaos_record.update(items=ITEMS, tasks_queued_at_stop=waiting, rows_done_at_stop=done_at_stop)

    with psycopg.connect(url) as conn:
        # every item has exactly one embedding row
        per_item = conn.execute(
            "SELECT count(DISTINCT i.id), count(e.item_id), count(*) FILTER (WHERE e.item_id IS NULL) "
            "FROM items i LEFT JOIN item_embeddings e ON e.item_id = i.id"
        ).fetchone()
        assert per_item == (ITEMS, ITEMS, 0), f"(items, embedding rows, items without one) = {per_item}"
        # one run that counted each item once: nothing counted twice, nothing lost
        runs = conn.execute("SELECT total, done, error FROM job_runs WHERE job = 'embeddings'").fetchall()
    assert runs == [(ITEMS, ITEMS, None)], runs
    assert run["done"] == ITEMS
