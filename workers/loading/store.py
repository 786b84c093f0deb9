"""Writes batches of standard records to Postgres: COPY into a temporary table, then set-based
upserts, one transaction per batch.

Loading the same rows again writes nothing: rows are compared with IS DISTINCT FROM before any
insert or update, so no row version, updated_at or sequence value changes. Only a changed item
gets a new content_hash and updated_at (which is what re-embeds it), and a review whose text
changed loses its sentiment scores (which is what re-scores it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from core.catalog import content_hash
from workers.loading.records import Event, Item, Review
from workers.loading.report import RowError

TEMP_TABLES = """
CREATE TEMP TABLE IF NOT EXISTS load_items (
    line integer, external_id text, title text, description text, brand text,
    category_path text[], price numeric(12, 2), attributes jsonb, content_hash bytea
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS load_events (
    line integer, user_ext text, item_ext text, type event_type, occurred_at timestamptz,
    source_key text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS load_reviews (
    line integer, external_id text, item_ext text, user_ext text, rating real, title text,
    body text, created_at timestamptz
) ON COMMIT DELETE ROWS;
"""

# The compared columns, in the order of both row constructors below.
ITEM_COLUMNS = "title, description, brand, category_path, price, attributes, content_hash"

# New and changed rows only: unchanged ones never reach the INSERT, so they burn no sequence value.
# ON CONFLICT stays for a concurrent loader, and its WHERE keeps a race from rewriting equal rows.
UPSERT_ITEMS = f"""
INSERT INTO items AS i (external_id, {ITEM_COLUMNS})
SELECT t.external_id, t.title, t.description, t.brand, t.category_path, t.price, t.attributes,
       t.content_hash
FROM load_items t LEFT JOIN items cur ON cur.external_id = t.external_id
WHERE cur.id IS NULL
   OR (cur.title, cur.description, cur.brand, cur.category_path, cur.price, cur.attributes,
       cur.content_hash)
      IS DISTINCT FROM
      (t.title, t.description, t.brand, t.category_path, t.price, t.attributes, t.content_hash)
ON CONFLICT (external_id) DO UPDATE SET
    title = EXCLUDED.title, description = EXCLUDED.description, brand = EXCLUDED.brand,
    category_path = EXCLUDED.category_path, price = EXCLUDED.price,
    attributes = EXCLUDED.attributes, content_hash = EXCLUDED.content_hash, updated_at = now()
WHERE (i.title, i.description, i.brand, i.category_path, i.price, i.attributes, i.content_hash)
      IS DISTINCT FROM
      (EXCLUDED.title, EXCLUDED.description, EXCLUDED.brand, EXCLUDED.category_path,
       EXCLUDED.price, EXCLUDED.attributes, EXCLUDED.content_hash)
RETURNING (xmax = 0) AS inserted
"""


def _unknown_items(table: str) -> str:
    return f"""
SELECT t.line, t.item_ext FROM {table} t
WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.external_id = t.item_ext)
ORDER BY t.line
"""


def _new_users(table: str) -> str:
    # Users are created on first sight, but not for rows rejected for an unknown item.
    return f"""
INSERT INTO users (external_id)
SELECT DISTINCT t.user_ext FROM {table} t
WHERE t.user_ext IS NOT NULL
  AND EXISTS (SELECT 1 FROM items i WHERE i.external_id = t.item_ext)
  AND NOT EXISTS (SELECT 1 FROM users u WHERE u.external_id = t.user_ext)
ON CONFLICT (external_id) DO NOTHING
RETURNING 1
"""


INSERT_EVENTS = """
INSERT INTO events (user_id, item_id, type, occurred_at, source_key)
SELECT u.id, i.id, t.type, t.occurred_at, t.source_key
FROM load_events t
JOIN items i ON i.external_id = t.item_ext
JOIN users u ON u.external_id = t.user_ext
WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.source_key = t.source_key)
ON CONFLICT (source_key) DO NOTHING
RETURNING 1
"""

# A review row is its full state except created_at: absent, a known review keeps its own.
# New text (or title) means the stored sentiment no longer describes it.
UPDATE_REVIEWS = """
UPDATE reviews r SET
    item_id = i.id, user_id = u.id, rating = t.rating, title = t.title, body = t.body,
    created_at = coalesce(t.created_at, r.created_at),
    sentiment_label = CASE WHEN (r.title, r.body) IS DISTINCT FROM (t.title, t.body)
                           THEN NULL ELSE r.sentiment_label END,
    sentiment_prob = CASE WHEN (r.title, r.body) IS DISTINCT FROM (t.title, t.body)
                          THEN NULL ELSE r.sentiment_prob END,
    scored_at = CASE WHEN (r.title, r.body) IS DISTINCT FROM (t.title, t.body)
                     THEN NULL ELSE r.scored_at END
FROM load_reviews t
JOIN items i ON i.external_id = t.item_ext
LEFT JOIN users u ON u.external_id = t.user_ext
WHERE r.external_id = t.external_id
  AND (r.item_id, r.user_id, r.rating, r.title, r.body, r.created_at)
      IS DISTINCT FROM (i.id, u.id, t.rating, t.title, t.body, coalesce(t.created_at, r.created_at))
RETURNING 1
"""

INSERT_REVIEWS = """
INSERT INTO reviews (external_id, item_id, user_id, rating, title, body, created_at)
SELECT t.external_id, i.id, u.id, t.rating, t.title, t.body, coalesce(t.created_at, now())
FROM load_reviews t
JOIN items i ON i.external_id = t.item_ext
LEFT JOIN users u ON u.external_id = t.user_ext
WHERE NOT EXISTS (SELECT 1 FROM reviews r WHERE r.external_id = t.external_id)
ON CONFLICT (external_id) DO NOTHING
RETURNING 1
"""


@dataclass
class BatchResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    users_inserted: int = 0
    unknown_items: list[tuple[int, str]] | None = None


class Store:
    """Batch writer on one connection (not autocommit); each call is one transaction."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn
        with conn.transaction():
            conn.execute(TEMP_TABLES)

    def items(self, batch: Sequence[Item]) -> BatchResult:
        with self._conn.transaction(), self._conn.cursor() as cur:
            with cur.copy(
                "COPY load_items (line, external_id, title, description, brand, category_path,"
                " price, attributes, content_hash) FROM STDIN"
            ) as copy:
                for r in batch:
                    copy.write_row((
                        r.line, r.external_id, r.title, r.description, r.brand,
                        list(r.category_path), r.price, r.attributes,
                        content_hash(r.title, r.description),
                    ))
            flags = [row[0] for row in cur.execute(UPSERT_ITEMS)]
        inserted = sum(flags)
        updated = len(flags) - inserted
        return BatchResult(inserted, updated, len(batch) - inserted - updated)

    def events(self, batch: Sequence[Event]) -> BatchResult:
        with self._conn.transaction(), self._conn.cursor() as cur:
            with cur.copy(
                "COPY load_events (line, user_ext, item_ext, type, occurred_at, source_key) FROM STDIN"
            ) as copy:
                for r in batch:
                    copy.write_row((r.line, r.user_id, r.item_id, r.type, r.occurred_at, r.source_key))
            unknown = cur.execute(_unknown_items("load_events")).fetchall()
            users = len(cur.execute(_new_users("load_events")).fetchall())
            inserted = len(cur.execute(INSERT_EVENTS).fetchall())
        # Events are immutable: one already loaded (or twice in this batch) is "unchanged".
        return BatchResult(inserted, 0, len(batch) - len(unknown) - inserted, users, unknown)

    def reviews(self, batch: Sequence[Review]) -> BatchResult:
        with self._conn.transaction(), self._conn.cursor() as cur:
            with cur.copy(
                "COPY load_reviews (line, external_id, item_ext, user_ext, rating, title, body,"
                " created_at) FROM STDIN"
            ) as copy:
                for r in batch:
                    copy.write_row((
                        r.line, r.external_id, r.item_id, r.user_id, r.rating, r.title, r.body,
                        r.created_at,
                    ))
            unknown = cur.execute(_unknown_items("load_reviews")).fetchall()
            users = len(cur.execute(_new_users("load_reviews")).fetchall())
            updated = len(cur.execute(UPDATE_REVIEWS).fetchall())
            inserted = len(cur.execute(INSERT_REVIEWS).fetchall())
        return BatchResult(inserted, updated, len(batch) - len(unknown) - inserted - updated, users, unknown)


def unknown_item_errors(file: str, unknown: Sequence[tuple[int, str]]) -> list[RowError]:
    return [RowError(file, line, f"unknown item {item!r} (load its items first)") for line, item in unknown]
