"""Refresh throughput: a full embedding refresh of the 54,667 Home Depot titles through
Celery → Triton → Postgres, against onnxruntime in-process encoding of the same titles in the
same run (before and after the refresh; the ratio is to their mean); then an incremental
refresh after 1% of titles change, and a profile refresh of all 8,442 Scientific users.

    python bench/refresh.py [--json] [--concurrency 2] [--batch 256]

Everything runs on servers of its own (Postgres, Redis, Triton on model_repository/, one
Celery worker), started and stopped here.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import psycopg
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aisle import processes  # noqa: E402
from bench.common import DATA, homedepot_titles, machine, require, write_result  # noqa: E402
from bench.encoder import bench_onnxruntime  # noqa: E402
from core.catalog import content_hash  # noqa: E402
from core.settings import load_settings  # noqa: E402


class PeakMemory:
    """Samples the resident memory of a process tree every 200 ms."""

    def __init__(self, pid: int):
        self.pid, self.peak_mb, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        from bench.common import tree_rss_mb

        while not self._stop.is_set():
            try:
                self.peak_mb = max(self.peak_mb, tree_rss_mb(self.pid))
            except psutil.NoSuchProcess:
                return
            time.sleep(0.2)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mb


def wait_run(url: str, job: str, after_id: int, timeout: float = 3600) -> dict:
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT id, done, started_at, finished_at, extract(epoch FROM finished_at - started_at) "
                "FROM job_runs WHERE job = %s AND id > %s ORDER BY id DESC LIMIT 1",
                (job, after_id),
            ).fetchone()
            if row and row[3] is not None:
                return {"run": row[0], "rows": row[1], "seconds": float(row[4])}
            time.sleep(0.2)
    raise TimeoutError(f"{job} did not finish in {timeout}s")


def last_run_id(url: str, job: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) FROM job_runs WHERE job = %s", (job,)).fetchone()
    return row[0]


def main(
    concurrency: int = typer.Option(2, help="Worker processes of the one Celery worker."),
    batch: int = typer.Option(256, help="Items per task (AISLE_EMBEDDING_BATCH)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    processes.interrupt_on_sigterm()
    from core.db import prepare
    from core.embeddings import DEFAULT_VERSION
    from workers.app import create_app
    from workers.loading import load

    settings = load_settings()
    titles = homedepot_titles()
    result: dict = {"items": len(titles), "machine": machine(), "concurrency": concurrency, "batch": batch}
    from export import artifacts

    result["onnxruntime_in_process"] = bench_onnxruntime(titles, artifacts.onnx("encoder"), batch=64, sort=True)

    with tempfile.TemporaryDirectory(prefix="aisle-bench-") as tmp:
        tmp = Path(tmp)
        pg_port, redis_port, ports = processes.free_port(), processes.free_port(), processes.TritonPorts.free()
        pg = processes.postgres(tmp / "pg", pg_port, tmp / "pg.log").start(60)
        redis = processes.redis(tmp / "redis", redis_port, tmp / "redis.log").start(30)
        triton = processes.triton(settings.model_repository, ports, tmp / "triton.log").start(300)
        url = processes.postgres_url(pg_port)
        env = dict(os.environ, AISLE_DATABASE_URL=url, AISLE_REDIS_URL=processes.redis_url(redis_port),
                   AISLE_TRITON_URL=f"{processes.LOOPBACK}:{ports.grpc}", AISLE_EMBEDDING_BATCH=str(batch),
                   AISLE_RUN_DIR=str(tmp))
        worker = None
        try:
            prepare(url, DEFAULT_VERSION)
            t = time.perf_counter()
            load("homedepot", require(DATA / "homedepot" / "products.csv"), url)
            result["load_seconds"] = time.perf_counter() - t
            metrics_port = processes.free_port()
            worker = processes.ServerProcess(
                "worker",
                processes.aisle_command("worker", "--queues", "triton,db", "--concurrency", str(concurrency),
                                        "--metrics-port", str(metrics_port), "--loglevel", "WARNING"),
                tmp / "worker.log", lambda: _http_ok(metrics_port), env=env,
            ).start(60)
            app = create_app(load_settings(redis_url=env["AISLE_REDIS_URL"], database_url=url))

            # Full refresh, from the trigger to the run's end (the HNSW build after it is timed apart).
            memory = PeakMemory(worker.pid)
            before = last_run_id(url, "embeddings")
            app.send_task("aisle.tick", args=("embeddings",), queue="triton")
            full = wait_run(url, "embeddings", before)
            result["worker_peak_rss_mb"] = memory.stop()
            full["items_per_s"] = full["rows"] / full["seconds"]
            result["full_refresh"] = full
            t = time.perf_counter()
            _wait_index(url)
            result["hnsw_index_seconds"] = time.perf_counter() - t
            # The baseline again, right after: on this shared 2-core VM it measured 541 titles/s one
            # day and 425, then 319, in two runs 15 minutes apart the next, so the ratio is taken
            # against the mean of the measurements on either side of the refresh; both are printed.
            ort_after = bench_onnxruntime(titles, artifacts.onnx("encoder"), batch=64, sort=True)
            result["onnxruntime_in_process_after"] = ort_after
            baseline = (result["onnxruntime_in_process"]["titles_per_s"] + ort_after["titles_per_s"]) / 2
            result["onnxruntime_titles_per_s_mean"] = baseline
            result["ratio_vs_onnxruntime"] = full["items_per_s"] / baseline

            # Incremental: 1% of the titles change.
            with psycopg.connect(url) as conn:
                ids = [r[0] for r in conn.execute("SELECT id FROM items ORDER BY md5(id::text) LIMIT %s", (len(titles) // 100,))]
                for item_id in ids:
                    title = f"Updated product {item_id} cordless drill kit"
                    conn.execute("UPDATE items SET title = %s, content_hash = %s, updated_at = now() WHERE id = %s",
                                 (title, content_hash(title), item_id))
            before = last_run_id(url, "embeddings")
            t = time.perf_counter()
            app.send_task("aisle.tick", args=("embeddings",), queue="triton")
            inc = wait_run(url, "embeddings", before)
            inc["wall_seconds"] = time.perf_counter() - t
            result["incremental_refresh"] = inc
            result["incremental_share_of_full"] = inc["seconds"] / full["seconds"]

            # Profiles of all Scientific users (their items embedded first).
            load("scientific-items", require(DATA / "scientific" / "items.csv"), url)
            load("scientific-interactions", require(DATA / "scientific" / "interactions.csv"), url)
            before = last_run_id(url, "embeddings")
            app.send_task("aisle.tick", args=("embeddings",), queue="triton")
            wait_run(url, "embeddings", before)
            before = last_run_id(url, "profiles")
            app.send_task("aisle.tick", args=("profiles",), queue="db")
            prof = wait_run(url, "profiles", before)
            prof["users_per_s"] = prof["rows"] / prof["seconds"]
            result["profile_refresh"] = prof
        finally:
            if worker:
                worker.stop()
            triton.stop()
            redis.stop()
            pg.stop()

    result["goals"] = {"ratio_vs_onnxruntime": 0.85, "incremental_share_of_full": 0.03}
    path = write_result("refresh", result)
    if as_json:
        print(json.dumps(result))
        return
    before, after = (result[k]["titles_per_s"] for k in ("onnxruntime_in_process", "onnxruntime_in_process_after"))
    print(f"{len(titles)} Home Depot titles, {result['machine']['cpus']} CPUs, worker concurrency {concurrency}, batch {batch}")
    print(f"onnxruntime in-process (sorted, 64/batch):  {before:8.1f} items/s before, {after:.1f} after the refresh")
    print(f"full refresh Celery → Triton → Postgres:     {full['items_per_s']:8.1f} items/s "
          f"({full['seconds']:.1f} s)  ratio {result['ratio_vs_onnxruntime']:.2f} (goal >= 0.85)")
    print(f"HNSW index build after it:                   {result['hnsw_index_seconds']:8.1f} s")
    print(f"incremental refresh of 1% ({inc['rows']} items): {inc['seconds']:8.2f} s = "
          f"{result['incremental_share_of_full']:.1%} of the full refresh (goal <= 3%)")
    print(f"profile refresh of {prof['rows']} users:        {prof['users_per_s']:8.1f} users/s ({prof['seconds']:.1f} s)")
    print(f"worker peak resident memory:                 {result['worker_peak_rss_mb']:8.0f} MB")
    print(f"wrote {path}")


def _http_ok(port: int) -> bool:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        return r.status == 200


def _wait_index(url: str, timeout: float = 600) -> None:
    from core.embeddings import DEFAULT_VERSION, index_name

    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s", (index_name(DEFAULT_VERSION),)).fetchone():
                # The index exists once its build has committed.
                return
            time.sleep(0.5)


if __name__ == "__main__":
    typer.run(main)
