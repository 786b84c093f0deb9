"""The knowledge graph and popularity, recomputed from items and events in one transaction.

Nodes: items, brands and every level of every category path. Edges: item→brand,
item→category (the leaf), category→parent, and item→item co-occurrence from user histories
(directed: b followed a within a short window, weighted by closeness). Popularity is the
decayed, event-type-weighted event count. Everything is set-based SQL: on the Home Depot
catalog plus the Scientific histories the whole rebuild takes a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from core.settings import Settings
from workers import runs
from workers.jobs.base import Backlog, Deps

# Later items within this many positions of an item in a user's history count as co-occurring;
# closer ones weigh more (1/gap).
CO_OCCURRENCE_WINDOW = 3

_NODES = [
    # New and retitled items only, found by one hash anti-join: upserting every item and letting
    # ON CONFLICT find the unchanged ones took 0.96 s of the 2.4 s of a rebuild that changed
    # nothing (59k items); this takes 0.05 s, and the soak's searches feel every second of it.
    """INSERT INTO kg_nodes (kind, key, label, item_id)
       SELECT 'item', i.id::text, i.title, i.id FROM items i
       LEFT JOIN kg_nodes n ON n.item_id = i.id AND n.kind = 'item'
       WHERE n.id IS NULL OR n.label IS DISTINCT FROM i.title
       ON CONFLICT (kind, key) DO UPDATE SET label = EXCLUDED.label
       WHERE kg_nodes.label IS DISTINCT FROM EXCLUDED.label""",
    """INSERT INTO kg_nodes (kind, key, label)
       SELECT 'brand', lower(brand), min(brand) FROM items WHERE coalesce(brand, '') <> ''
       GROUP BY lower(brand) ON CONFLICT (kind, key) DO NOTHING""",
    """INSERT INTO kg_nodes (kind, key, label, depth)
       SELECT DISTINCT 'category', array_to_string(category_path[1:d], ' > '), category_path[d], d
       FROM items, generate_series(1, cardinality(category_path)) AS d
       ON CONFLICT (kind, key) DO NOTHING""",
]

_WANT = [
    """INSERT INTO want
       SELECT n.id, b.id, 'item_brand', 1 FROM items i
       JOIN kg_nodes n ON n.item_id = i.id
       JOIN kg_nodes b ON b.kind = 'brand' AND b.key = lower(i.brand)
       WHERE coalesce(i.brand, '') <> ''""",
    """INSERT INTO want
       SELECT n.id, c.id, 'item_category', 1 FROM items i
       JOIN kg_nodes n ON n.item_id = i.id
       JOIN kg_nodes c ON c.kind = 'category' AND c.key = array_to_string(i.category_path, ' > ')
       WHERE cardinality(i.category_path) > 0""",
    """INSERT INTO want
       SELECT child.id, parent.id, 'category_parent', 1 FROM kg_nodes child
       JOIN kg_nodes parent ON parent.kind = 'category'
        AND parent.key = left(child.key, length(child.key) - length(child.label) - 3)
       WHERE child.kind = 'category' AND child.depth > 1""",
    # Pairs are summed by item first, then mapped to nodes by hash joins: joining the nodes
    # inside the pair aggregation let a stale row estimate pick a nested loop over 99k nodes ×
    # 1.4M pairs (over 7 minutes after the first bulk load; 0.9 s with this shape, unanalysed).
    f"""WITH seq AS (
           SELECT user_id, item_id, row_number() OVER (PARTITION BY user_id ORDER BY occurred_at, id) AS pos
           FROM events),
       pairs AS (
           SELECT a.item_id AS a_item, b.item_id AS b_item, sum(1.0 / (b.pos - a.pos)) AS weight
           FROM seq a
           JOIN seq b ON b.user_id = a.user_id AND b.pos > a.pos AND b.pos <= a.pos + {CO_OCCURRENCE_WINDOW}
            AND b.item_id <> a.item_id
           GROUP BY a.item_id, b.item_id)
       INSERT INTO want
       SELECT na.id, nb.id, 'co_occurrence', p.weight
       FROM pairs p
       JOIN kg_nodes na ON na.item_id = p.a_item
       JOIN kg_nodes nb ON nb.item_id = p.b_item""",
]

_SYNC_EDGES = [
    """DELETE FROM kg_edges e WHERE NOT EXISTS
       (SELECT 1 FROM want w WHERE w.src = e.src AND w.kind = e.kind AND w.dst = e.dst)""",
    # Only new and reweighted edges reach the upsert (the same anti-join: 0.40 s -> 0.11 s for
    # 146k unchanged edges).
    """INSERT INTO kg_edges (src, dst, kind, weight) SELECT w.src, w.dst, w.kind, w.weight FROM want w
       LEFT JOIN kg_edges e ON e.src = w.src AND e.kind = w.kind AND e.dst = w.dst
       WHERE e.src IS NULL OR e.weight IS DISTINCT FROM w.weight
       ON CONFLICT (src, kind, dst) DO UPDATE SET weight = EXCLUDED.weight, updated_at = now()
       WHERE kg_edges.weight IS DISTINCT FROM EXCLUDED.weight""",
    # Brands and categories nothing points to any more (aliases go with them).
    """DELETE FROM kg_nodes n WHERE n.kind <> 'item'
       AND NOT EXISTS (SELECT 1 FROM kg_edges e WHERE e.dst = n.id)
       AND NOT EXISTS (SELECT 1 FROM kg_edges e WHERE e.src = n.id)""",
]

_POPULARITY = """
WITH w(type, weight) AS (SELECT * FROM jsonb_each_text(%(weights)s::jsonb)),
pop AS (
    SELECT e.item_id,
           sum(w.weight::float8 * power(0.5, extract(epoch FROM (now() - e.occurred_at)) / %(half_life)s)) AS popularity,
           count(*) AS events
    FROM events e JOIN w ON w.type = e.type::text
    GROUP BY e.item_id)
INSERT INTO item_stats (item_id, popularity, popularity_as_of, event_count)
SELECT item_id, popularity, now(), events FROM pop
ON CONFLICT (item_id) DO UPDATE SET popularity = EXCLUDED.popularity,
    popularity_as_of = EXCLUDED.popularity_as_of, event_count = EXCLUDED.event_count, updated_at = now()
"""


@dataclass(frozen=True)
class GraphSummary:
    nodes: int
    edges: dict[str, int]


class KnowledgeGraph:
    """Not batched: one task rebuilds everything (the set-based SQL is faster than pieces)."""

    name = "graph"
    queue = "db"

    def backlog(self, conn: psycopg.Connection) -> Backlog:
        last = runs.last_run(conn, self.name)
        since = last.started_at if last and last.finished_at else None
        if since is None:
            count, oldest = conn.execute(
                "SELECT (SELECT count(*) FROM items) + (SELECT count(*) FROM events), "
                "LEAST((SELECT min(updated_at) FROM items), (SELECT min(recorded_at) FROM events))"
            ).fetchone()
        else:
            count, oldest = conn.execute(
                "SELECT (SELECT count(*) FROM items WHERE updated_at >= %(t)s) "
                "+ (SELECT count(*) FROM events WHERE recorded_at >= %(t)s), "
                "LEAST((SELECT min(updated_at) FROM items WHERE updated_at >= %(t)s), "
                "(SELECT min(recorded_at) FROM events WHERE recorded_at >= %(t)s))",
                {"t": since},
            ).fetchone()
        return Backlog(count, oldest)

    def rebuild(self, deps: Deps) -> GraphSummary:
        conn, settings = deps.conn, deps.settings
        with conn.transaction():
            # One rebuild at a time: a second waits, then finds nothing new to do.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (0x4B47,))
            for statement in _NODES:
                conn.execute(statement)
            # The first rebuild after a bulk load inserts ~100k nodes that autovacuum has not
            # analysed yet; the joins below are planned on these statistics.
            conn.execute("ANALYZE kg_nodes")
            conn.execute("CREATE TEMP TABLE want (src bigint, dst bigint, kind text, weight real) ON COMMIT DROP")
            for statement in _WANT:
                conn.execute(statement)
            # A temporary table has no statistics until analysed; without them the anti-join
            # below ran as a nested loop (minutes instead of a second).
            conn.execute("CREATE INDEX ON want (src, kind, dst)")
            conn.execute("ANALYZE want")
            for statement in _SYNC_EDGES:
                conn.execute(statement)
            conn.execute(_POPULARITY, popularity_params(settings))
            nodes = conn.execute("SELECT count(*) FROM kg_nodes").fetchone()[0]
            edges = dict(conn.execute("SELECT kind, count(*) FROM kg_edges GROUP BY kind").fetchall())
        return GraphSummary(nodes, edges)


def popularity_params(settings: Settings) -> dict:
    import json

    return {"weights": json.dumps(settings.event_weights), "half_life": settings.event_half_life_days * 86400}
