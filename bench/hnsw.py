"""Why a first refresh builds its HNSW index at the end: writing a catalog's embeddings into a
table that has no index and bulk-building the index afterwards (the baseline, what
core.embeddings.ensure_index does), against writing them into a live index, in one run.

    python bench/hnsw.py [--rows 54667] [--batch 256] [--json]

Postgres is pgserver's (pgvector 0.6), in a folder of its own, stopped at the end. The vectors
are synthetic (384-d, 300 clusters with noise, seeded) so the benchmark needs no data and no
Triton; real title embeddings cluster at least as much. Batches are written the way the
embedding job writes them: one transaction of ``executemany`` inserts per batch. Prints and
writes seconds for each way and their ratio; the gateway leaves nearest-neighbour retrieval
out until the bulk-built index exists (docs/api.md, ``degraded``).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aisle import processes  # noqa: E402
from bench.common import machine, write_result  # noqa: E402
from core.embeddings import BUILD_MEMORY, HNSW_EF_CONSTRUCTION, HNSW_M  # noqa: E402

DIM = 384
CLUSTERS = 300
# Noise around each cluster centre, relative to the centre's scale: neighbours stay close
# without the set collapsing into 300 points.
NOISE = 0.6
SEED = 0


def vectors(rows: int) -> np.ndarray:
    rng = np.random.default_rng(SEED)
    centres = rng.normal(size=(CLUSTERS, DIM))
    x = centres[rng.integers(0, CLUSTERS, rows)] + NOISE * rng.normal(size=(rows, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write(conn, x: np.ndarray, batch: int, live: bool) -> dict:
    index = (f"CREATE INDEX ON t USING hnsw (v vector_cosine_ops) "
             f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})")
    conn.execute("DROP TABLE IF EXISTS t")
    conn.execute(f"CREATE TABLE t (id int PRIMARY KEY, v vector({DIM}))")
    if live:
        conn.execute(index)
    per_batch = []
    t0 = time.perf_counter()
    for start in range(0, len(x), batch):
        t1 = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany("INSERT INTO t VALUES (%s, %s)", [(i, x[i]) for i in range(start, min(len(x), start + batch))])
        per_batch.append(time.perf_counter() - t1)
    inserts = time.perf_counter() - t0
    build = 0.0
    if not live:
        t1 = time.perf_counter()
        conn.execute(f"SET maintenance_work_mem = '{BUILD_MEMORY}'")
        conn.execute(index)
        build = time.perf_counter() - t1
    return {"inserts_s": round(inserts, 2), "build_s": round(build, 2), "total_s": round(inserts + build, 2),
            "batch_p50_ms": round(float(np.median(per_batch)) * 1000, 1)}


def main(
    rows: int = typer.Option(54667, help="Vectors to write (default: the Home Depot catalog's size)."),
    batch: int = typer.Option(256, min=1, help="Rows per transaction (the embedding job's batch)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    processes.interrupt_on_sigterm()
    import pgserver
    import psycopg
    from pgvector.psycopg import register_vector

    x = vectors(rows)
    with tempfile.TemporaryDirectory(prefix="aisle-hnsw-") as folder:
        server = pgserver.get_server(folder, cleanup_mode="stop")
        try:
            with psycopg.connect(server.get_uri(), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                register_vector(conn)
                bulk = write(conn, x, batch, live=False)
                live = write(conn, x, batch, live=True)
                version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        finally:
            server.cleanup()
    result = {"machine": machine(), "rows": rows, "batch": batch, "pgvector": version,
              "bulk_build_after": bulk, "live_index": live, "live_over_bulk": round(live["total_s"] / bulk["total_s"], 1)}
    path = write_result("hnsw", result)
    if as_json:
        print(json.dumps(result))
        return
    print(f"{rows} x {DIM}-d vectors in batches of {batch}, pgvector {version}")
    print(f"  no index, bulk build after: inserts {bulk['inserts_s']} s + build {bulk['build_s']} s = {bulk['total_s']} s")
    print(f"  live index:                 inserts {live['inserts_s']} s ({live['batch_p50_ms']} ms per batch)")
    print(f"  live / bulk = {result['live_over_bulk']}x")
    print(f"wrote {path}")


if __name__ == "__main__":
    typer.run(main)
