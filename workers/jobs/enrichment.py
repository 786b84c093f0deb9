"""Item enrichment: the predicted category of items whose content changed since their prediction,
or whose prediction another model made."""

from __future__ import annotations

import psycopg

from core.model_interfaces import CLASSIFY_PRODUCT
from core.settings import Settings
from workers import runs
from workers.jobs import served_model
from workers.jobs.base import Backlog, Deps

# Pending: the item changed since its prediction, or another model made it.
_WHERE = (
    "(s.predicted_hash IS DISTINCT FROM i.content_hash "
    f"OR s.predicted_model IS DISTINCT FROM {served_model.current('enrichment')})"
)

_UPSERT = """
INSERT INTO item_stats (item_id, predicted_department, predicted_aisle, predicted_prob, predicted_hash, predicted_model)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (item_id) DO UPDATE SET
    predicted_department = EXCLUDED.predicted_department, predicted_aisle = EXCLUDED.predicted_aisle,
    predicted_prob = EXCLUDED.predicted_prob, predicted_hash = EXCLUDED.predicted_hash,
    predicted_model = EXCLUDED.predicted_model, updated_at = now()
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

    def observe(self, deps: Deps) -> str:
        return served_model.observe(deps, self.name, CLASSIFY_PRODUCT)

    def process(self, deps: Deps, first: int, last: int) -> int:
        conn = deps.conn
        # Before the claim: a model Triton has just started serving makes every older prediction
        # pending, and the rows claimed below are stamped with the model that predicts them.
        model = self.observe(deps)
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
                        (r[0], p.department[0], p.aisle[0], p.aisle_prob[0], r[2], model)
                        for r, p in zip(rows, predictions)
                    ],
                )
            runs.add_progress(conn, self.name, len(rows))
            return len(rows)
