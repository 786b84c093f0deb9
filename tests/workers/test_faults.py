"""Fault injection during refreshes: a worker SIGKILLed, Triton stopped, Postgres restarted.
Afterwards every item has exactly one correct embedding, and the run never counted a row that
was not written. Slow (minutes): `-m "not slow"` skips them while iterating; CI runs them."""

from __future__ import annotations

import time

import psycopg
import pytest

from aisle import processes
from tests.workers.conftest import FULL_CATALOG, load_homedepot, run_progress, trigger, wait_for_run
from tests.workers.test_refresh import assert_every_item_embedded_once_and_correctly

pytestmark = pytest.mark.slow


def wait_for_progress(url: str, job: str, rows: int, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = run_progress(url, job)
        if done >= rows:
            return done
        time.sleep(0.3)
    raise AssertionError(f"{job} did not reach {rows} rows in {timeout}s")


def written(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM item_embeddings").fetchone()[0]


def test_sigkill_a_worker_mid_refresh_of_the_full_catalog(workers, worker_env, triton_url, tmp_path):
    url = worker_env["AISLE_DATABASE_URL"]
    # given the whole Home Depot catalog and a worker refreshing it
    assert load_homedepot(url, tmp_path) == FULL_CATALOG
    victim = workers.start()
    trigger(worker_env, "embeddings")
    wait_for_progress(url, "embeddings", 3000)
    # when the worker is SIGKILLed mid-batch (its tasks are unacknowledged) and a new one starts
    victim.kill()
    workers.start()
    wait_for_run(url, "embeddings", timeout=1500, retick=worker_env)
    # then every item has exactly one embedding of its current text, equal to the encoder's
    assert_every_item_embedded_once_and_correctly(url, triton_url, sample=500)


def test_triton_stopped_mid_refresh(workers, worker_env, model_repository, tmp_path):
    url = worker_env["AISLE_DATABASE_URL"]
    # given a Triton of this test's own and a worker refreshing 5,000 items through it
    ports = processes.TritonPorts.free()
    triton = processes.triton(model_repository, ports, tmp_path / "triton.log").start(timeout=300)
    triton_url = f"{processes.LOOPBACK}:{ports.grpc}"
    try:
        load_homedepot(url, tmp_path, 5000)
        workers.start(AISLE_TRITON_URL=triton_url)
        trigger(worker_env, "embeddings")
        wait_for_progress(url, "embeddings", 1000)
        # when Triton stops mid-refresh
        triton.stop()
        time.sleep(3)
        frozen = written(url)
        time.sleep(8)
        # then nothing is written or counted while it is down: the run counts exactly what exists
        assert written(url) == frozen
        assert run_progress(url, "embeddings") == frozen < 5000
        # and when it comes back on the same address, the retried tasks finish the refresh
        triton = processes.triton(model_repository, ports, tmp_path / "triton2.log").start(timeout=300)
        run = wait_for_run(url, "embeddings", timeout=600, retick=worker_env)
        assert run["done"] == 5000
        assert_every_item_embedded_once_and_correctly(url, triton_url, sample=200)
    finally:
        triton.stop()


def test_postgres_restarted_mid_refresh(workers, worker_env, triton_url, tmp_path):
    from core.db import prepare
    from core.embeddings import DEFAULT_VERSION

    # given a Postgres of this test's own and a worker refreshing 5,000 items from it
    port = processes.free_port()
    data, log = tmp_path / "pg", tmp_path / "pg.log"
    pg = processes.postgres(data, port, log).start(timeout=60)
    url = processes.postgres_url(port)
    try:
        prepare(url, DEFAULT_VERSION)
        load_homedepot(url, tmp_path, 5000)
        env = {**worker_env, "AISLE_DATABASE_URL": url}
        workers.start(AISLE_DATABASE_URL=url)
        trigger(env, "embeddings")
        wait_for_progress(url, "embeddings", 1000)
        # when Postgres crashes (SIGKILL) mid-refresh and restarts a few seconds later
        pg.kill()
        time.sleep(5)
        pg = processes.postgres(data, port, log).start(timeout=60)
        # then the workers reconnect, and the refresh completes with the counts matching the rows
        run = wait_for_run(url, "embeddings", timeout=600, retick=env)
        assert written(url) == 5000
        with psycopg.connect(url) as conn:
            counted = conn.execute("SELECT sum(done) FROM job_runs WHERE job = 'embeddings'").fetchone()[0]
        assert counted == 5000, "a batch counted as done was lost, or one was counted twice"
        assert run["error"] is None
        assert_every_item_embedded_once_and_correctly(url, triton_url, sample=200)
    finally:
        pg.stop()
