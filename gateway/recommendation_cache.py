"""Each user's last computed recommendations, in Postgres (table ``recommendations``).

A plain Recommend (a known user; no context items, filters or explanation) is one indexed read
when the user's row is fresh (:data:`FRESH`) and made by the same ranker. The user's own events
therefore take effect on the very next call (read-your-writes); what other users do reaches a
cached list within the TTL. The gateway writes a row after every clean (not degraded) plain
Recommend, and the workers' warm-up job (workers/jobs/recommendations.py) asks the gateway for
the users whose rows are missing or stale, so most calls find one.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from gateway.model import Item

# Each row expires between (1 - TTL_SPREAD) x TTL and TTL after it was written, at random: rows
# written together (a first warm-up of 8,442 users takes ~3 min) come due over 12 minutes of
# each hour instead of all at once, so the warm-up that renews them never takes the gateway's
# whole CPU for minutes on end.
TTL_SPREAD = 0.2

# A row ``r`` of user ``u`` that may serve: not expired, and the user's events still the ones
# the pipeline saw (the same newest id and the same count: ids are taken before commit, so an
# event can commit after a newer one). A list made while some of the user's items had no
# embedding yet, or before the first graph rebuild, serves only while that is still so: once the
# refresh has caught up, the pipeline has more to go on than the list did. The warm-up renews
# the rows that are not fresh (workers/jobs/recommendations.py).
FRESH = """r.expires_at > now()
    AND (SELECT count(*) = r.event_count AND coalesce(max(e.id), 0) = r.last_event_id
         FROM events e WHERE e.user_id = u.id)
    AND (r.complete
         OR NOT EXISTS (SELECT 1 FROM job_runs j WHERE j.job = 'graph' AND j.finished_at IS NOT NULL)
         OR EXISTS (SELECT 1 FROM events e
                    LEFT JOIN item_embeddings ie ON ie.item_id = e.item_id AND ie.model_version = r.model_version
                    WHERE e.user_id = u.id AND ie.item_id IS NULL))"""

# Read and validity in one round trip: an empty result is a miss, whether the user has no
# row, it is stale, or it holds fewer than k items that still exist.
_READ = f"""
SELECT i.external_id, i.title, i.brand, i.category_path, i.price::float8, x.score
FROM users u
JOIN recommendations r ON r.user_id = u.id AND r.model_version = %(version)s
    AND r.ranker_version = %(ranker)s
    AND {FRESH}
CROSS JOIN LATERAL unnest(r.item_ids, r.scores) WITH ORDINALITY AS x(item_id, score, pos)
JOIN items i ON i.id = x.item_id
WHERE u.external_id = %(user)s AND x.pos <= %(k)s
ORDER BY x.pos
"""

# A slower computation that saw fewer of the user's events never replaces a newer one.
_WRITE = """
INSERT INTO recommendations (user_id, model_version, ranker_version, last_event_id, event_count, item_ids, scores,
                             complete, expires_at)
VALUES (%(user)s, %(version)s, %(ranker)s, %(last_event)s, %(event_count)s, %(ids)s, %(scores)s, %(complete)s,
        now() + make_interval(secs => %(ttl)s * (1 - %(spread)s * random())))
ON CONFLICT (user_id, model_version) DO UPDATE SET
    ranker_version = EXCLUDED.ranker_version, last_event_id = EXCLUDED.last_event_id,
    event_count = EXCLUDED.event_count, item_ids = EXCLUDED.item_ids, scores = EXCLUDED.scores,
    complete = EXCLUDED.complete, computed_at = now(), expires_at = EXCLUDED.expires_at
WHERE (recommendations.last_event_id, recommendations.event_count) <= (EXCLUDED.last_event_id, EXCLUDED.event_count)
"""


@dataclass(frozen=True)
class CachedHit:
    item: Item
    score: float


async def read(
    conn: psycopg.AsyncConnection, external_user_id: str, version: str, ranker: str, k: int
) -> list[CachedHit] | None:
    """The user's first ``k`` cached recommendations, or None when there is no fresh row with
    ``k`` items that still exist."""
    rows = await (await conn.execute(
        _READ, {"user": external_user_id, "version": version, "ranker": ranker, "k": k}
    )).fetchall()
    if len(rows) < k:
        return None
    return [CachedHit(Item(r[0], r[1], r[2], tuple(r[3] or ()), r[4]), float(r[5])) for r in rows]


async def write(
    conn: psycopg.AsyncConnection, user_id: int, version: str, ranker: str, last_event_id: int, event_count: int,
    item_ids: list[int], scores: list[float], ttl_s: float, complete: bool = True,
) -> None:
    """Store a user's list; ``complete`` is False when the pipeline lacked part of the user's
    state (see :data:`FRESH`)."""
    await conn.execute(_WRITE, {
        "user": user_id, "version": version, "ranker": ranker, "last_event": last_event_id,
        "event_count": event_count, "ids": item_ids, "scores": scores, "ttl": ttl_s, "spread": TTL_SPREAD,
        "complete": complete,
    })
