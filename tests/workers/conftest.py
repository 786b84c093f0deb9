"""Worker fixtures: real Celery worker processes (`aisle worker`) against the session's
Postgres, Redis and Triton, and the Home Depot catalog loaded by the real loader."""

from __future__ import annotations

import csv
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest
import redis as redis_client

from aisle import processes
from tests.datasets import data_file

FULL_CATALOG = 54_667


def rebuild_graph(database_url: str) -> None:
    """One knowledge-graph rebuild as the worker runs it, on a connection of its own."""
    from core.settings import load_settings
    from workers import dispatch, resources

    resources.reset()
    deps = resources.deps(need_triton=False, settings=load_settings(database_url=database_url))
    try:
        dispatch.rebuild_graph(deps)
    finally:
        deps.conn.close()
        resources.reset()


def load_homedepot(database_url: str, tmp_path: Path, n: int | None = None) -> int:
    """Load the first ``n`` Home Depot products (all when None) with the real loader."""
    from workers.loading import load

    source = data_file("homedepot", "products.csv")
    if n is not None:
        subset = tmp_path / f"products-{n}.csv"
        with open(source, encoding="utf-8") as f, open(subset, "w", encoding="utf-8", newline="") as out:
            reader = csv.reader(f)
            writer = csv.writer(out)
            for i, row in enumerate(reader):
                if i > n:
                    break
                writer.writerow(row)
        source = subset
    report = load("homedepot", source, database_url)
    assert not report.errors
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM items").fetchone()[0]


class Workers:
    """Starts and stops `aisle worker` processes for one test."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.procs: list[processes.ServerProcess] = []

    def start(self, concurrency: int = 2, queues: str = "triton,db", **extra_env: str) -> processes.ServerProcess:
        port = processes.free_port()
        env = {**self.env, **{k: str(v) for k, v in extra_env.items()}}
        argv = processes.aisle_command(
            "worker", "--queues", queues, "--concurrency", str(concurrency), "--metrics-port", str(port)
        )

        def ready() -> bool:
            with urllib.request.urlopen(f"http://{processes.LOOPBACK}:{port}/metrics", timeout=2) as r:
                return r.status == 200

        log = self.log_dir / f"worker-{len(self.procs)}.log"
        proc = processes.ServerProcess("worker", argv, log, ready, env=env).start(timeout=60)
        proc.metrics_port = port
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop(grace=20)


@pytest.fixture
def worker_env(fresh_database_url, redis_server, triton_url, tmp_path):
    """Environment of a worker on a fresh database and an empty broker."""
    import os

    redis_client.Redis.from_url(redis_server.url).flushdb()
    env = dict(os.environ)
    env.update(
        AISLE_DATABASE_URL=fresh_database_url,
        AISLE_REDIS_URL=redis_server.url,
        AISLE_TRITON_URL=triton_url,
        AISLE_RUN_DIR=str(tmp_path / "run"),
        # Lost tasks come back quickly in tests (production waits minutes).
        AISLE_TASK_VISIBILITY_TIMEOUT_S="20",
        AISLE_REDISPATCH_AFTER_S="30",
    )
    return env


@pytest.fixture
def workers(worker_env, tmp_path):
    w = Workers(worker_env, tmp_path)
    yield w
    w.stop_all()


def celery_app(env: dict[str, str]):
    from core.settings import load_settings
    from workers.app import create_app

    return create_app(load_settings(redis_url=env["AISLE_REDIS_URL"], database_url=env["AISLE_DATABASE_URL"]))


def trigger(env: dict[str, str], job: str) -> None:
    queue = "db" if job in ("profiles", "graph") else "triton"
    app = celery_app(env)
    if job == "graph":
        app.send_task("aisle.rebuild_graph", args=(True,), queue=queue)
    else:
        app.send_task("aisle.tick", args=(job,), queue=queue)


def wait_for_run(database_url: str, job: str, timeout: float, retick: dict | None = None) -> dict:
    """Wait until the job has a finished run and nothing is pending; returns the last run.

    ``retick`` (the worker env) re-sends the tick every few seconds, as beat would.
    """
    deadline = time.monotonic() + timeout
    last_tick = time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT id, total, done, finished_at, error FROM job_runs WHERE job = %s ORDER BY id DESC LIMIT 1",
                (job,),
            ).fetchone()
            if row and row[3] is not None:
                return {"id": row[0], "total": row[1], "done": row[2], "error": row[4]}
            if retick and time.monotonic() - last_tick > 5:
                trigger(retick, job)
                last_tick = time.monotonic()
            time.sleep(0.5)
    raise AssertionError(f"{job} did not finish within {timeout}s (last run: {row})")


def run_progress(database_url: str, job: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT done FROM job_runs WHERE job = %s ORDER BY id DESC LIMIT 1", (job,)).fetchone()
    return row[0] if row else 0
