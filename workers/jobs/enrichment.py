"""Item enrichment: the predicted category of items whose content changed since their prediction."""

from __future__ import annotations

import psycopg

from core.settings import Settings
from workers import runs
from workers.jobs.base import Backlog, Deps

_WHERE = "s.predicted_hash IS DISTINCT FROM i.content_hash"

_UPSERT = """
INSERT INTO item_stats (item_id, predicted_department, predicted_aisle, predicted_prob, predicted_hash)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (item_id) DO UPDATE SET
    predicted_department = EXCLUDED.predicted_department, predicted_aisle = EXCLUDED.predicted_aisle,
    predicted_prob = EXCLUDED.predicted_prob, predicted_hash = EXCLUDED.predicted_hash, updated_at = now()
"""


class ItemEnrichment:
    name = "enrichment"
    queue = "triton"
    claims = "items"

    def batch_size(self, settings: Settings) -> int:
        return settings.embedding_batch

    def pending_ids(self, conn: psycopg.Connection, after: int, limit: int) -> list[int]:
        rows = conn.execute(
            f"SELECT i.id FROM items i LEFT JOIN item_stats s ON s.item_id = i.id "
            f"WHERE i.id > %s AND {_WHERE} ORDER BY i.id LIMIT %s",
            (after, limit),
        )
        return [r[0] for r in rows]

    def backlog(self, conn: psycopg.Connection) -> Backlog:
        count, oldest = conn.execute(
            f"SELECT count(*), min(i.updated_at) FROM items i LEFT JOIN item_stats s ON s.item_id = i.id WHERE {_WHERE}"
        ).fetchone()
        return Backlog(count, oldest)

    def process(self, deps: Deps, first: int, last: int) -> int:
        conn = deps.conn
        with conn.transaction():
            rows = conn.execute(
                f"SELECT i.id, i.title, i.content_hash FROM items i LEFT JOIN item_stats s ON s.item_id = i.id "
                f"WHERE i.id BETWEEN %s AND %s AND {_WHERE} ORDER BY i.id LIMIT %s FOR NO KEY UPDATE OF i SKIP LOCKED",
                (first, last, deps.settings.embedding_batch),
            ).fetchall()
            if not rows:
                return 0
            predictions = deps.triton.classify([r[1] for r in rows])
            with conn.cursor() as cur:
                cur.executemany(
                    _UPSERT,
                    [
                        (r[0], p.department[0], p.aisle[0], p.aisle_prob[0], r[2])
                        for r, p in zip(rows, predictions)
                    ],
                )
            runs.add_progress(conn, self.name, len(rows))
            return len(rows)
