"""Review sentiment: unscored reviews through `analyze_sentiment`, rolled up into item_stats."""

from __future__ import annotations

import psycopg

from core.catalog import review_text
from core.settings import Settings
from workers import runs
from workers.jobs.base import Backlog, Deps

# Reviews per task: long texts (up to 256 tokens each) make a batch ~20x the work of titles.
REVIEW_BATCH = 64

_ROLLUP = """
INSERT INTO item_stats (item_id, rating_avg, rating_count, sentiment_positive, sentiment_count)
SELECT item_id, avg(rating), count(rating), avg(sentiment_prob), count(sentiment_prob)
FROM reviews WHERE item_id = ANY(%s) GROUP BY item_id
ON CONFLICT (item_id) DO UPDATE SET
    rating_avg = EXCLUDED.rating_avg, rating_count = EXCLUDED.rating_count,
    sentiment_positive = EXCLUDED.sentiment_positive, sentiment_count = EXCLUDED.sentiment_count,
    updated_at = now()
"""


class ReviewSentiment:
    name = "sentiment"
    queue = "triton"
    claims = "reviews"

    def batch_size(self, settings: Settings) -> int:
        return REVIEW_BATCH

    def pending_ids(self, conn: psycopg.Connection, after: int, limit: int) -> list[int]:
        rows = conn.execute(
            "SELECT id FROM reviews WHERE sentiment_label IS NULL AND id > %s ORDER BY id LIMIT %s", (after, limit)
        )
        return [r[0] for r in rows]

    def backlog(self, conn: psycopg.Connection) -> Backlog:
        count, oldest = conn.execute(
            "SELECT count(*), min(created_at) FROM reviews WHERE sentiment_label IS NULL"
        ).fetchone()
        return Backlog(count, oldest)

    def process(self, deps: Deps, first: int, last: int) -> int:
        conn = deps.conn
        with conn.transaction():
            rows = conn.execute(
                "SELECT id, item_id, title, body FROM reviews WHERE sentiment_label IS NULL "
                "AND id BETWEEN %s AND %s ORDER BY id LIMIT %s FOR NO KEY UPDATE SKIP LOCKED",
                (first, last, REVIEW_BATCH),
            ).fetchall()
            if not rows:
                return 0
            scores = deps.triton.sentiment([review_text(r[2], r[3]) for r in rows])
            with conn.cursor() as cur:
                cur.executemany(
                    "UPDATE reviews SET sentiment_label = %s, sentiment_prob = %s, scored_at = now() WHERE id = %s",
                    [
                        (label, prob if label == "positive" else 1.0 - prob, r[0])
                        for r, (label, prob) in zip(rows, scores)
                    ],
                )
            conn.execute(_ROLLUP, (sorted({r[1] for r in rows}),))
            runs.add_progress(conn, self.name, len(rows))
            return len(rows)
