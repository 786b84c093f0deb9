"""User profiles: fold each user's events past the watermark into the decayed profile.

A user is pending when their next unfolded event's item has an embedding: events are folded
in id order and the fold stops before an event whose item is not embedded yet, so no event is
ever skipped and a user never spins while the embedding job catches up.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import psycopg

from core import embeddings
from core.profiles import Event, Profile, fold
from core.settings import Settings
from workers import runs
from workers.jobs.base import Backlog, Deps

# Users per task: ~6 events each in the Scientific data; 512 users is one ~50 ms query.
USER_BATCH = 512

_NEXT_EVENTS = """
SELECT DISTINCT ON (e.user_id) e.user_id, e.item_id FROM events e
LEFT JOIN user_profiles p ON p.user_id = e.user_id AND p.model_version = %(version)s
WHERE e.user_id BETWEEN %(lo)s AND %(hi)s AND e.id > coalesce(p.last_event_id, 0)
ORDER BY e.user_id, e.id
"""

_PENDING = f"""
SELECT n.user_id FROM ({_NEXT_EVENTS}) n
JOIN item_embeddings ie ON ie.item_id = n.item_id AND ie.model_version = %(version)s
ORDER BY n.user_id LIMIT %(limit)s
"""

_EVENTS = """
SELECT e.user_id, e.id, e.item_id, e.type::text, e.occurred_at, ie.embedding, i.category_path
FROM events e
JOIN items i ON i.id = e.item_id
LEFT JOIN item_embeddings ie ON ie.item_id = e.item_id AND ie.model_version = %(version)s
LEFT JOIN user_profiles p ON p.user_id = e.user_id AND p.model_version = %(version)s
WHERE e.user_id = ANY(%(users)s) AND e.id > coalesce(p.last_event_id, 0)
ORDER BY e.user_id, e.id
"""

_UPSERT = """
INSERT INTO user_profiles (user_id, model_version, profile, weight, category_affinity, last_event_id, as_of)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (user_id, model_version) DO UPDATE SET
    profile = EXCLUDED.profile, weight = EXCLUDED.weight, category_affinity = EXCLUDED.category_affinity,
    last_event_id = EXCLUDED.last_event_id, as_of = EXCLUDED.as_of, updated_at = now()
"""


def load_profiles(conn: psycopg.Connection, users: list[int], version: str) -> dict[int, Profile]:
    rows = conn.execute(
        "SELECT user_id, profile, weight, category_affinity, as_of, last_event_id FROM user_profiles "
        "WHERE user_id = ANY(%s) AND model_version = %s",
        (users, version),
    )
    return {r[0]: Profile(np.asarray(r[1], dtype=np.float64), r[2], dict(r[3]), r[4], r[5]) for r in rows}


def events_from_rows(rows) -> list[Event]:
    """Events up to (not including) the first whose item has no embedding yet."""
    events = []
    for _, event_id, item_id, kind, occurred_at, embedding, path in rows:
        if embedding is None:
            break
        events.append(Event(event_id, item_id, kind, occurred_at, np.asarray(embedding), tuple(path or ())))
    return events


class UserProfiles:
    name = "profiles"
    queue = "db"
    claims = "users"

    def batch_size(self, settings: Settings) -> int:
        return USER_BATCH

    def pending_ids(self, conn: psycopg.Connection, after: int, limit: int) -> list[int]:
        ids: set[int] = set()
        for model in embeddings.to_fill(conn):
            params = {"version": model.version, "lo": after + 1, "hi": 2**62, "limit": limit}
            ids.update(r[0] for r in conn.execute(_PENDING, params))
        return sorted(ids)[:limit]

    def backlog(self, conn: psycopg.Connection) -> Backlog:
        pending, oldest = 0, None
        for model in embeddings.to_fill(conn):
            count, first = conn.execute(
                "SELECT count(DISTINCT e.user_id), min(e.recorded_at) FROM events e "
                "LEFT JOIN user_profiles p ON p.user_id = e.user_id AND p.model_version = %s "
                "WHERE e.id > coalesce(p.last_event_id, 0)",
                (model.version,),
            ).fetchone()
            pending += count
            if first is not None and (oldest is None or first < oldest):
                oldest = first
        return Backlog(pending, oldest)

    def process(self, deps: Deps, first: int, last: int) -> int:
        conn, settings, done = deps.conn, deps.settings, 0
        for model in embeddings.to_fill(conn):
            with conn.transaction():
                params = {"version": model.version, "lo": first, "hi": last, "limit": USER_BATCH}
                candidates = [r[0] for r in conn.execute(_PENDING, params)]
                if not candidates:
                    continue
                claimed = [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM users WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE SKIP LOCKED", (candidates,)
                    )
                ]
                now = conn.execute("SELECT now()").fetchone()[0]
                rows = conn.execute(_EVENTS, {"version": model.version, "users": claimed}).fetchall()
                profiles = load_profiles(conn, claimed, model.version)
                updates = []
                for user_id, user_rows in itertools.groupby(rows, key=lambda r: r[0]):
                    events = events_from_rows(list(user_rows))
                    if not events:
                        continue
                    profile = fold(
                        profiles.get(user_id),
                        events,
                        settings.event_weights,
                        settings.event_half_life_days * 86400,
                        now,
                        model.dim,
                    )
                    updates.append(
                        (
                            user_id,
                            model.version,
                            profile.vector.astype(np.float32),
                            profile.weight,
                            json.dumps(profile.affinity),
                            profile.last_event_id,
                            profile.as_of,
                        )
                    )
                with conn.cursor() as cur:
                    cur.executemany(_UPSERT, updates)
                runs.add_progress(conn, self.name, len(updates))
                done += len(updates)
        return done
