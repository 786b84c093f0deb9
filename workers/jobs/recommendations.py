"""Warm-up of the recommendation cache (gateway/recommendation_cache.py): ask the gateway for the
users whose cached recommendations are missing or stale, so their next plain Recommend is one
read instead of the pipeline.

The gateway computes and stores each list (the pipeline lives there, next to Triton's ranker and
the in-memory graph); this job only finds who needs one and calls Recommend for them, as a
client. It is idempotent: a user asked twice gets the same list stored twice. A user whose
answer comes back degraded keeps no row and is asked again by a later warm-up.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import psycopg

from core import embeddings
from core.settings import Settings
from gateway.recommendation_cache import FRESH
from workers.jobs.base import Backlog

# Users per warm-up task: a task of 500 takes ~11 s (WARM_CONCURRENCY), well inside the broker's
# visibility timeout.
WARM_BATCH = 500
# Calls in flight: 2 leaves live calls room on a 2-core gateway. A task of 500 users took 11 s
# (45 a second) against 7-11 s at 4 (the stack's gateway, 2026-12-07).
WARM_CONCURRENCY = 2
# A warm-up stops after this many calls in a row that could not be stored (failed or degraded).
GIVE_UP_AFTER = 16
# Deadline of one warm-up call; a slower one is left for the next warm-up.
CALL_TIMEOUT_S = 10.0
# Session advisory lock: one warm-up at a time (beat's ticks and a self-queued follow-up would
# otherwise ask for the same stale users).
_LOCK = (0x4A4F42, zlib.crc32(b"recommendations") & 0x7FFFFFFF)

# Users with events whose row is missing or not fresh (the gateway's test); those without a row
# first, then the earliest expired.
_STALE_USERS = f"""
FROM users u
LEFT JOIN recommendations r ON r.user_id = u.id AND r.model_version = %(version)s
WHERE EXISTS (SELECT 1 FROM events e WHERE e.user_id = u.id)
  AND (r.user_id IS NULL OR NOT ({FRESH}))
"""
# ... of those, the ones a warm-up can make fresh: a list made before the first graph rebuild,
# or while some of the user's items have no embedding, would be stored incomplete and made again
# once the refresh catches up (gateway/recommendation_cache.FRESH). On a new catalog the first
# warm-ups ran while the refresh was embedding it and stored 8,000 such lists, whose pipelines
# took the cores the refresh needed (2026-12-07). The users left out get a list on their first
# call as before, and the warm-up's once the refresh has caught up. Nor is anyone warmed before
# the version's HNSW index exists: the gateway answers degraded without it, nothing is stored,
# and `aisle refresh all --celery` reached the warm-up while a worker was still building it
# (2026-12-07: "16 of 16 users have no fresh list").
# NOT IN over one set of users, not a NOT EXISTS per user: that one was planned as a nested loop
# over a materialised anti-join (estimated at 1 row, 51k in fact) and took 25 s per warm-up in the
# middle of a refresh; this is a hashed subplan run once, 53 ms (8,442 users, 51k events).
_WARMABLE = """
  AND EXISTS (SELECT 1 FROM job_runs j WHERE j.job = 'graph' AND j.finished_at IS NOT NULL)
  AND EXISTS (SELECT 1 FROM pg_indexes WHERE indexname = %(index)s)
  AND u.id NOT IN (SELECT e.user_id FROM events e
                   WHERE NOT EXISTS (SELECT 1 FROM item_embeddings ie
                                     WHERE ie.item_id = e.item_id AND ie.model_version = %(version)s))
"""
_STALE = f"SELECT u.external_id {_STALE_USERS} {_WARMABLE} ORDER BY r.expires_at NULLS FIRST, u.id LIMIT %(limit)s"
_STILL_STALE = f"SELECT count(*) {_STALE_USERS} AND u.external_id = ANY(%(users)s)"


@dataclass(frozen=True)
class WarmResult:
    asked: int
    # Calls that failed (an RPC error: the gateway's log says why).
    failed: int
    # Users asked for whose cached list is fresh now (an answer that came back degraded is not
    # stored, so a warm-up while Triton is down stores nothing and must not repeat at once).
    stored: int
    # Another warm-up held the lock: nothing was done.
    busy: bool = False


def stale_users(conn: psycopg.Connection, limit: int, version: str | None = None) -> list[str]:
    """External ids of up to ``limit`` users whose cached recommendations (of the active
    embedding version unless ``version`` is given) need computing and can be made complete now."""
    version = version or embeddings.active(conn).version
    params = {"version": version, "index": embeddings.index_name(version), "limit": limit}
    return [r[0] for r in conn.execute(_STALE, params)]


def stale_count(conn: psycopg.Connection, warmable: bool = False) -> int:
    """Users whose cached recommendations need computing; with ``warmable``, only those a
    warm-up would ask for now (:data:`_WARMABLE`)."""
    version = embeddings.active(conn).version
    query = f"SELECT count(*) {_STALE_USERS} {_WARMABLE if warmable else ''}"
    return conn.execute(query, {"version": version, "index": embeddings.index_name(version)}).fetchone()[0]


def backlog(conn: psycopg.Connection) -> Backlog:
    """Users whose cached recommendations are missing or stale, and since when the oldest has
    been: its first event the list has not seen, or the moment the list expired."""
    version = embeddings.active(conn).version
    pending, oldest = conn.execute(
        "SELECT count(*), min(least("
        "  (SELECT min(e.recorded_at) FROM events e WHERE e.user_id = u.id AND e.id > coalesce(r.last_event_id, 0)),"
        "  CASE WHEN r.expires_at <= now() THEN r.expires_at END)) "
        f"{_STALE_USERS}",
        {"version": version},
    ).fetchone()
    return Backlog(pending, oldest)


def gateway_client(settings: Settings):
    """A client of the gateway at ``settings.gateway_address`` (close it after use); its
    ``recommend`` is what :func:`warm` calls."""
    from gateway.client import AisleClient

    if not settings.gateway_address:
        raise RuntimeError("no gateway to warm: set AISLE_GATEWAY_ADDRESS")
    return AisleClient(
        settings.gateway_address, api_key=settings.api_keys[0] if settings.api_keys else None, timeout_s=CALL_TIMEOUT_S
    )


def warm(conn: psycopg.Connection, settings: Settings, recommend: Callable[[str], object],
         limit: int = WARM_BATCH) -> WarmResult:
    """Ask for up to ``limit`` stale users' recommendations (the gateway stores them), in
    chunks of GIVE_UP_AFTER; stop after a chunk of only failed or degraded answers."""
    if settings.recommend_cache_ttl_s <= 0:
        return WarmResult(0, 0, 0)
    if not conn.execute("SELECT pg_try_advisory_lock(%s, %s)", _LOCK).fetchone()[0]:
        return WarmResult(0, 0, 0, busy=True)
    try:
        version = embeddings.active(conn).version
        users = stale_users(conn, limit, version)

        def ask(user: str) -> str:
            try:
                return "degraded" if getattr(recommend(user), "degraded", False) else "ok"
            except grpc.RpcError:
                return "failed"

        outcomes: list[str] = []
        with ThreadPoolExecutor(WARM_CONCURRENCY) as pool:
            for start in range(0, len(users), GIVE_UP_AFTER):
                chunk = list(pool.map(ask, users[start:start + GIVE_UP_AFTER]))
                outcomes += chunk
                # Nothing the gateway answers now would be stored (Triton down, a new catalog's
                # index not built yet): leave the rest to a later warm-up.
                if "ok" not in chunk:
                    break
        asked = users[:len(outcomes)]
        still = conn.execute(_STILL_STALE, {"version": version, "users": asked}).fetchone()[0]
        return WarmResult(len(asked), outcomes.count("failed"), len(asked) - still)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s, %s)", _LOCK)
