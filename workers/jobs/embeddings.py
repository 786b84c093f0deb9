"""Item embeddings: items whose content hash has no embedding for a filled model version."""

from __future__ import annotations

import numpy as np
import psycopg

from core import embeddings
from core.catalog import embedding_text
from core.settings import Settings
from workers import runs
from workers.jobs.base import Backlog, Deps

_PENDING = """
SELECT i.id FROM items i
LEFT JOIN item_embeddings e ON e.item_id = i.id AND e.model_version = %(version)s
WHERE i.id > %(after)s AND (e.item_id IS NULL OR e.content_hash <> i.content_hash)
ORDER BY i.id LIMIT %(limit)s
"""

_CLAIM = """
SELECT i.id, i.title, i.description, i.content_hash FROM items i
LEFT JOIN item_embeddings e ON e.item_id = i.id AND e.model_version = %(version)s
WHERE i.id BETWEEN %(first)s AND %(last)s AND (e.item_id IS NULL OR e.content_hash <> i.content_hash)
ORDER BY i.id LIMIT %(limit)s
FOR NO KEY UPDATE OF i SKIP LOCKED
"""

_UPSERT = """
INSERT INTO item_embeddings (item_id, model_version, content_hash, embedding)
VALUES (%s, %s, %s, %s)
ON CONFLICT (item_id, model_version) DO UPDATE
SET content_hash = EXCLUDED.content_hash, embedding = EXCLUDED.embedding, updated_at = now()
"""


class ItemEmbeddings:
    name = "embeddings"
    queue = "triton"
    claims = "items"

    def batch_size(self, settings: Settings) -> int:
        return settings.embedding_batch

    def pending_ids(self, conn: psycopg.Connection, after: int, limit: int) -> list[int]:
        ids: set[int] = set()
        for model in embeddings.to_fill(conn):
            ids.update(r[0] for r in conn.execute(_PENDING, {"version": model.version, "after": after, "limit": limit}))
        return sorted(ids)[:limit]

    def backlog(self, conn: psycopg.Connection) -> Backlog:
        pending, oldest = 0, None
        for model in embeddings.to_fill(conn):
            count, first = conn.execute(
                "SELECT count(*), min(i.updated_at) FROM items i LEFT JOIN item_embeddings e "
                "ON e.item_id = i.id AND e.model_version = %s "
                "WHERE e.item_id IS NULL OR e.content_hash <> i.content_hash",
                (model.version,),
            ).fetchone()
            pending += count
            if first is not None and (oldest is None or first < oldest):
                oldest = first
        return Backlog(pending, oldest)

    def settled(self, conn: psycopg.Connection) -> bool:
        """Whether the after-run work is done too: every filled version has its index. A run is
        finished before its index is built (tens of seconds on the full catalog), and until then
        the gateway's answers are degraded; `aisle refresh --celery` waits for this."""
        return all(embeddings.has_index(conn, model) for model in embeddings.to_fill(conn))

    def after_run(self, deps: Deps) -> None:
        """Build each filled version's HNSW index once its backlog is empty (bulk-building is
        much faster than maintaining the index row by row during a full refresh)."""
        for model in embeddings.to_fill(deps.conn):
            embeddings.ensure_index(deps.conn, model)

    def process(self, deps: Deps, first: int, last: int) -> int:
        conn, done = deps.conn, 0
        for model in embeddings.to_fill(conn):
            with conn.transaction():
                rows = conn.execute(
                    _CLAIM,
                    {"version": model.version, "first": first, "last": last, "limit": deps.settings.embedding_batch},
                ).fetchall()
                if not rows:
                    continue
                vectors = deps.triton.embed([embedding_text(r[1], r[2]) for r in rows], model=model.triton_model)
                if vectors.shape != (len(rows), model.dim):
                    raise RuntimeError(
                        f"{model.triton_model} returned {vectors.shape}, expected ({len(rows)}, {model.dim})"
                    )
                with conn.cursor() as cur:
                    cur.executemany(
                        _UPSERT,
                        [(r[0], model.version, r[3], v) for r, v in zip(rows, vectors.astype(np.float32))],
                    )
                runs.add_progress(conn, self.name, len(rows))
                done += len(rows)
        return done
