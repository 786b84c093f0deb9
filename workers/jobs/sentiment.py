"""Review sentiment: unscored reviews, and reviews another model scored, through `analyze_sentiment`,
rolled up into item_stats."""

from __future__ import annotations

import psycopg

from core.catalog import review_text
from core.model_interfaces import ANALYZE_SENTIMENT
from core.settings import Settings
from workers import runs
from workers.jobs import served_model
from workers.jobs.base import Backlog, Deps

# Pending: never scored (or its text changed, which clears the label), or another model scored it.
_PENDING = f"(sentiment_label IS NULL OR sentiment_model IS DISTINCT FROM {served_model.current('sentiment')})"

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
            f"SELECT id FROM reviews WHERE {_PENDING} AND id > %s ORDER BY id LIMIT %s", (after, limit)
        )
        return [r[0] for r in rows]

    def backlog(self, conn: psycopg.Connection) -> Backlog:
        count, oldest = conn.execute(
            f"SELECT count(*), min(created_at) FROM reviews WHERE {_PENDING}"
        ).fetchone()
        return Backlog(count, oldest)

    def observe(self, deps: Deps) -> str:
        return served_model.observe(deps, self.name, ANALYZE_SENTIMENT)

    def process(self, deps: Deps, first: int, last: int) -> int:
        conn = deps.conn
        # Before the claim, as in enrichment: the rows claimed are stamped with the scoring model.
        model = self.observe(deps)
        with conn.transaction():
            rows = conn.execute(
                f"SELECT id, item_id, title, body FROM reviews WHERE {_PENDING} "
                "AND id BETWEEN %s AND %s ORDER BY id LIMIT %s FOR NO KEY UPDATE SKIP LOCKED",
                (first, last, REVIEW_BATCH),
            ).fetchall()
            if not rows:
                return 0
            scores = deps.triton.sentiment([review_text(r[2], r[3]) for r in rows])
            with conn.cursor() as cur:
                cur.executemany(
                    "UPDATE reviews SET sentiment_label = %s, sentiment_prob = %s, sentiment_model = %s, scored_at = now() "
                    "WHERE id = %s",
                    [
                        (label, prob if label == "positive" else 1.0 - prob, model, r[0])
                        for r, (label, prob) in zip(rows, scores)
                    ],
                )
            conn.execute(_ROLLUP, (sorted({r[1] for r in rows}),))
            runs.add_progress(conn, self.name, len(rows))
            return len(rows)
