"""SQL adapters of the gateway: candidate retrievers and the per-item facts features need.

Every value from a request travels as a bound parameter; only identifiers and literals the
server chose itself (the embedding version's dimension and name) are composed into SQL, and
those through psycopg.sql quoting.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import psycopg
from psycopg import sql

from core.embeddings import EmbeddingModel, vector_expr
from gateway.model import Filters


@dataclass(frozen=True)
class Scored:
    item_id: int
    score: float


def filter_sql(filters: Filters, alias: str = "i") -> tuple[sql.Composable, dict]:
    """A WHERE fragment (starting with AND) and its parameters for the request's filters."""
    parts: list[sql.Composable] = []
    params: dict = {}
    a = sql.Identifier(alias)
    if filters.categories:
        parts.append(sql.SQL("AND EXISTS (SELECT 1 FROM unnest({}.category_path) c WHERE lower(c) = ANY(%(f_categories)s))").format(a))
        params["f_categories"] = [c.lower() for c in filters.categories]
    if filters.brands:
        parts.append(sql.SQL("AND lower({}.brand) = ANY(%(f_brands)s)").format(a))
        params["f_brands"] = [b.lower() for b in filters.brands]
    if filters.min_price is not None:
        parts.append(sql.SQL("AND {}.price >= %(f_min_price)s").format(a))
        params["f_min_price"] = filters.min_price
    if filters.max_price is not None:
        parts.append(sql.SQL("AND {}.price <= %(f_max_price)s").format(a))
        params["f_max_price"] = filters.max_price
    return sql.SQL(" ").join(parts), params


async def dense(
    conn: psycopg.AsyncConnection, model: EmbeddingModel, vector: np.ndarray, n: int, filters: Filters,
    exclude: list[int] | None = None, ef_search: int | None = None,
) -> list[Scored]:
    """The ``n`` nearest items to ``vector``; ``ef_search`` overrides the connection's HNSW search
    breadth for this query (it caps how many neighbours come back)."""
    where, params = filter_sql(filters)
    expr = vector_expr(model)
    query = sql.SQL(
        "SELECT e.item_id, 1 - ({expr} <=> %(v)s::vector) AS sim FROM item_embeddings e "
        "{join} WHERE e.model_version = {version} {where} {exclude} {breadth} "
        "ORDER BY {expr} <=> %(v)s::vector LIMIT %(n)s"
    ).format(
        expr=expr,
        # Only filters need the item's row: an embedding's item exists (ON DELETE CASCADE), and
        # joining 300 neighbours to items took ~0.6 of a 4.3 ms HNSW query (EXPLAIN ANALYZE).
        join=sql.SQL("") if filters.empty() else sql.SQL("JOIN items i ON i.id = e.item_id"),
        version=sql.Literal(model.version),
        where=where,
        exclude=sql.SQL("AND e.item_id <> ALL(%(exclude)s)") if exclude else sql.SQL(""),
        # The search breadth for this statement alone, in the same round trip: an uncorrelated
        # subquery in WHERE runs once, as a one-time filter, before the index scan starts, and
        # set_config(..., true) lasts until the statement's own transaction ends (the gateway's
        # connections autocommit). SET LOCAL in a transaction took three round trips, and in a
        # pipeline 0.9 ms more client CPU than it saved in Postgres (/tmp probe, 2026-12-06).
        breadth=sql.SQL("AND (SELECT set_config('hnsw.ef_search', %(ef)s, true)) IS NOT NULL")
        if ef_search is not None and filters.empty() else sql.SQL(""),
    )
    params.update(v=vector.astype(np.float32), n=n, exclude=exclude or [], ef=str(ef_search))
    if filters.empty():
        rows = await (await conn.execute(query, params, binary=True)).fetchall()
    else:
        # pgvector 0.6 filters after the HNSW scan, so a selective filter can leave nothing of
        # the nearest few hundred: with filters, scan the matching rows exactly instead.
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_indexscan = off")
            rows = await (await conn.execute(query, params, binary=True)).fetchall()
    return [Scored(r[0], float(r[1])) for r in rows]


async def nearest_among(
    conn: psycopg.AsyncConnection, model: EmbeddingModel, vector: np.ndarray, ids: list[int], n: int,
) -> list[Scored]:
    """The ``n`` of ``ids`` closest to ``vector``, scanned exactly: the items the gateway's
    in-memory graph does not hold yet (gateway/vector_index.py), a few new items at a time."""
    if not ids:
        return []
    query = sql.SQL(
        "SELECT e.item_id, 1 - ({expr} <=> %(v)s::vector) FROM item_embeddings e "
        "WHERE e.model_version = {version} AND e.item_id = ANY(%(ids)s) "
        "ORDER BY 2 DESC, e.item_id LIMIT %(n)s"
    ).format(expr=vector_expr(model), version=sql.Literal(model.version))
    params = {"v": np.asarray(vector, dtype=np.float32), "ids": ids, "n": n}
    return [Scored(r[0], float(r[1])) for r in await (await conn.execute(query, params, binary=True)).fetchall()]


async def closest_of(
    conn: psycopg.AsyncConnection, ids: list[int], model: EmbeddingModel, vector: np.ndarray | None, n: int,
    filters: Filters,
) -> list[int]:
    """The ``n`` items of ``ids`` (passing ``filters``) closest to ``vector``, or the most popular
    without one. Only ids travel back: the graph retriever orders up to 2,000 items this way,
    and their full facts (item_facts) cost ~10× more to read and decode. The ORDER BY is not
    the bare distance operator on purpose: that would let the HNSW index answer, which returns
    its nearest few dozen of the whole catalog and then drops those not in ``ids``."""
    where, params = filter_sql(filters)
    params.update(ids=ids, n=n)
    if vector is not None:
        params["v"] = np.asarray(vector, dtype=np.float32)
        query = sql.SQL(
            "SELECT i.id FROM items i JOIN item_embeddings e ON e.item_id = i.id AND e.model_version = {version} "
            "WHERE i.id = ANY(%(ids)s) {where} ORDER BY 1 - ({expr} <=> %(v)s::vector) DESC, i.id LIMIT %(n)s"
        ).format(version=sql.Literal(model.version), expr=vector_expr(model), where=where)
    else:
        query = sql.SQL(
            "SELECT i.id FROM items i LEFT JOIN item_stats s ON s.item_id = i.id "
            "WHERE i.id = ANY(%(ids)s) {where} ORDER BY coalesce(s.popularity, 0) DESC, i.id LIMIT %(n)s"
        ).format(where=where)
    return [r[0] for r in await (await conn.execute(query, params, binary=True)).fetchall()]


# Every item's lexemes with their term frequencies (Postgres's own English analysis of title,
# brand and description): what the in-memory BM25 index (gateway/lexical_index.py) is built from.
LEXICAL_DOCS = """
SELECT i.id, t.lexemes, t.tfs FROM items i,
LATERAL (SELECT array_agg(u.lexeme) AS lexemes,
                array_agg(coalesce(array_length(u.positions, 1), 1)) AS tfs
         FROM unnest(i.search_tsv) u) t
{where}
"""
# Rows decoded per round trip: the event loop runs between chunks (59k rows decode in ~0.2 s).
LEXICAL_DOCS_CHUNK = 5000


@dataclass(frozen=True)
class LexicalRead:
    """One consistent read of the catalog's documents for the lexical index."""

    snapshot: datetime  # database time of the read (rows committed later are not in it)
    docs: list  # [(item id, lexemes, tfs)]
    # updated_at of the items read that changed in the ``recent_s`` before the snapshot: what a
    # later look for changes compares against, so a row read here is not read again.
    stamps: dict[int, datetime]


async def lexical_documents(conn: psycopg.AsyncConnection, recent_s: float) -> LexicalRead:
    """Every item's document, with the stamps of the recently changed ones, from one snapshot
    (REPEATABLE READ: the stamps are those of exactly the rows read)."""
    docs = []
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        snapshot = (await (await conn.execute("SELECT now()")).fetchone())[0]
        async with conn.cursor("aisle_lexical_docs", binary=True) as cur:
            await cur.execute(sql.SQL(LEXICAL_DOCS).format(where=sql.SQL("")))
            while rows := await cur.fetchmany(LEXICAL_DOCS_CHUNK):
                docs.extend(rows)
        stamps = await changed_items(conn, snapshot - timedelta(seconds=recent_s))
    return LexicalRead(snapshot, docs, stamps)


async def changed_items(conn: psycopg.AsyncConnection, since: datetime) -> dict[int, datetime]:
    """updated_at of every item updated after ``since`` (an index range scan: ids and stamps only)."""
    rows = await (await conn.execute("SELECT id, updated_at FROM items WHERE updated_at > %s", (since,))).fetchall()
    return dict(rows)


async def documents_of(conn: psycopg.AsyncConnection, ids: list[int]) -> list:
    """[(item id, lexemes, tfs)] of the items ``ids`` (those that still exist)."""
    docs = []
    async with conn.transaction():
        async with conn.cursor("aisle_lexical_changed", binary=True) as cur:
            await cur.execute(sql.SQL(LEXICAL_DOCS).format(where=sql.SQL("WHERE i.id = ANY(%(ids)s)")), {"ids": ids})
            while rows := await cur.fetchmany(LEXICAL_DOCS_CHUNK):
                docs.extend(rows)
    return docs


async def keep_matching(conn: psycopg.AsyncConnection, ids: list[int], filters: Filters) -> list[int]:
    """The items of ``ids`` that pass ``filters``, in the order given."""
    where, params = filter_sql(filters)
    params["ids"] = ids
    rows = await (await conn.execute(
        sql.SQL("SELECT i.id FROM items i WHERE i.id = ANY(%(ids)s) {where}").format(where=where), params
    )).fetchall()
    keep = {r[0] for r in rows}
    return [i for i in ids if i in keep]


async def query_lexemes(conn: psycopg.AsyncConnection, query: str) -> list[str]:
    row = await (await conn.execute("SELECT tsvector_to_array(to_tsvector('english', %s))", (query,))).fetchone()
    return list(row[0] or [])


@dataclass(frozen=True)
class GraphMatch:
    node_id: int
    kind: str  # brand | category
    label: str
    # Which query words (or alias) matched it.
    matched: str
    weight: float


# A node matches when all of its label's lexemes occur in the query (so "drill" matches the
# category "Drills" and "behr paint" the brand "BEHR", but "paint" alone not "BEHR Paint Co").
_GRAPH_MATCH = """
WITH q AS (SELECT to_tsvector('english', %(q)s) AS v,
                  replace(plainto_tsquery('english', %(q)s)::text, '&', '|') AS t)
SELECT n.id, n.kind, n.label, n.label, 1.0::real
FROM kg_nodes n, q
WHERE q.t <> '' AND n.kind <> 'item' AND n.label_tsv @@ q.t::tsquery
  AND q.v @@ plainto_tsquery('english', n.label)
UNION ALL
SELECT n.id, n.kind, n.label, a.alias, a.weight
FROM kg_aliases a JOIN kg_nodes n ON n.id = a.node_id
WHERE strpos(lower(%(q)s), lower(a.alias)) > 0
LIMIT 50
"""


async def graph_matches(conn: psycopg.AsyncConnection, query: str) -> list[GraphMatch]:
    rows = await (await conn.execute(_GRAPH_MATCH, {"q": query})).fetchall()
    return [GraphMatch(r[0], r[1], r[2], r[3], float(r[4])) for r in rows]


# Items under a matched node: a brand's items, or the items of a category and its subcategories
# (two levels down), closest to the query vector first when there is one, else most popular.
_GRAPH_ITEMS = """
WITH RECURSIVE cats AS (
    SELECT id, 0 AS depth FROM kg_nodes WHERE id = ANY(%(nodes)s) AND kind = 'category'
    UNION
    SELECT e.src, c.depth + 1 FROM kg_edges e JOIN cats c ON e.dst = c.id
    WHERE e.kind = 'category_parent' AND c.depth < 2
),
targets AS (
    SELECT id FROM cats UNION SELECT id FROM kg_nodes WHERE id = ANY(%(nodes)s) AND kind = 'brand'
)
SELECT DISTINCT n.item_id FROM kg_edges e
JOIN targets t ON t.id = e.dst
JOIN kg_nodes n ON n.id = e.src AND n.item_id IS NOT NULL
WHERE e.kind IN ('item_brand', 'item_category')
LIMIT %(cap)s
"""


async def graph_items(conn: psycopg.AsyncConnection, node_ids: list[int], cap: int) -> list[int]:
    if not node_ids:
        return []
    rows = await (await conn.execute(_GRAPH_ITEMS, {"nodes": node_ids, "cap": cap})).fetchall()
    return [r[0] for r in rows]


@dataclass
class ItemFacts:
    """Columns for a list of item ids, in the order asked."""

    ids: list[int]
    external_ids: list[str]
    titles: list[str]
    brands: list[str | None]
    categories: list[tuple[str, ...]]
    prices: list[float | None]
    popularity: np.ndarray
    rating: np.ndarray
    review_count: np.ndarray
    sentiment: np.ndarray
    # Cosine similarity of each item to each vector asked for (0 where the item has no embedding).
    sims: dict[str, np.ndarray]
    # [n, dim] when asked for (zeros where missing), else None.
    embeddings: np.ndarray | None = None


_FACTS = """
SELECT i.id, i.external_id, i.title, i.brand, i.category_path, i.price::float8,
       coalesce(s.popularity, 0), coalesce(s.rating_avg, 0), coalesce(s.rating_count, 0),
       coalesce(s.sentiment_positive, 0.5) {sims} {embedding}
FROM items i
LEFT JOIN item_embeddings e ON e.item_id = i.id AND e.model_version = {version}
LEFT JOIN item_stats s ON s.item_id = i.id
WHERE i.id = ANY(%(ids)s) {where}
"""
_FIXED_COLUMNS = 10


async def graph_version(conn: psycopg.AsyncConnection) -> int | None:
    """Which graph rebuild the graph's edges and the items' popularity come from: the last
    finished run of the graph job (they change in that job's transaction and nowhere else)."""
    row = await (await conn.execute(
        "SELECT max(id) FROM job_runs WHERE job = 'graph' AND finished_at IS NOT NULL"
    )).fetchone()
    return row[0]


async def co_occurrence_edges(conn: psycopg.AsyncConnection) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every co-occurrence edge as (source item, target item, weight) arrays."""
    rows = await (await conn.execute(
        "SELECT na.item_id, nb.item_id, e.weight FROM kg_edges e "
        "JOIN kg_nodes na ON na.id = e.src JOIN kg_nodes nb ON nb.id = e.dst "
        "WHERE e.kind = 'co_occurrence'",
        binary=True,
    )).fetchall()
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    src, dst, weight = zip(*rows)
    return np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64), np.array(weight, dtype=np.float32)


async def category_popularity(conn: psycopg.AsyncConnection) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every item with popularity figures: its leaf category's label, its id, its popularity."""
    rows = await (await conn.execute(
        "SELECT c.label, n.item_id, s.popularity FROM kg_edges e "
        "JOIN kg_nodes c ON c.id = e.dst AND c.kind = 'category' "
        "JOIN kg_nodes n ON n.id = e.src JOIN item_stats s ON s.item_id = n.item_id "
        "WHERE e.kind = 'item_category'",
        binary=True,
    )).fetchall()
    return (
        [r[0] for r in rows],
        np.array([r[1] for r in rows], dtype=np.int64),
        np.array([r[2] for r in rows], dtype=np.float64),
    )


def merge_facts(ids: list[int], *parts: ItemFacts) -> ItemFacts:
    """The rows of ``parts`` (facts of disjoint ids, with the same sims) in the order of ``ids``."""
    where = {i: (p, k) for p, part in enumerate(parts) for k, i in enumerate(part.ids)}
    picked = [where[i] for i in ids if i in where]

    def gather_list(name: str) -> list:
        return [getattr(parts[p], name)[k] for p, k in picked]

    offsets = np.cumsum([0] + [len(part.ids) for part in parts])
    flat_rows = [offsets[p] + k for p, k in picked]

    def gather_array(get) -> np.ndarray:
        flat = np.concatenate([get(part) for part in parts])
        return flat[flat_rows] if picked else flat[:0]

    merged = ItemFacts(
        ids=gather_list("ids"),
        external_ids=gather_list("external_ids"),
        titles=gather_list("titles"),
        brands=gather_list("brands"),
        categories=gather_list("categories"),
        prices=gather_list("prices"),
        popularity=gather_array(lambda f: f.popularity),
        rating=gather_array(lambda f: f.rating),
        review_count=gather_array(lambda f: f.review_count),
        sentiment=gather_array(lambda f: f.sentiment),
        sims={name: gather_array(lambda f, name=name: f.sims[name]) for name in parts[0].sims},
    )
    if parts[0].embeddings is not None:
        merged.embeddings = gather_array(lambda f: f.embeddings)
    return merged


async def item_facts(
    conn: psycopg.AsyncConnection,
    ids: list[int],
    model: EmbeddingModel,
    filters: Filters | None = None,
    vectors: dict[str, np.ndarray] | None = None,
    with_embeddings: bool = False,
) -> ItemFacts:
    """Facts of the items among ``ids`` that pass ``filters``, in the order of ``ids``.

    Similarities to ``vectors`` are computed in Postgres, so a search moves a few floats per
    candidate instead of 384."""
    where, params = filter_sql(filters or Filters())
    vectors = {k: v for k, v in (vectors or {}).items() if v is not None}
    expr = vector_expr(model)
    sims = sql.SQL("").join(
        sql.SQL(", coalesce(1 - ({} <=> {}::vector), 0)").format(expr, sql.Placeholder(f"v_{name}"))
        for name in vectors
    )
    for name, vec in vectors.items():
        params[f"v_{name}"] = np.asarray(vec, dtype=np.float32)
    query = sql.SQL(_FACTS).format(
        sims=sims,
        embedding=sql.SQL(", vector_send(e.embedding)") if with_embeddings else sql.SQL(""),
        version=sql.Literal(model.version),
        where=where,
    )
    params["ids"] = ids
    # Binary results: 500 embeddings parse from text in ~50 ms, from binary in ~1 ms.
    rows = await (await conn.execute(query, params, binary=True)).fetchall()
    by_id = {r[0]: r for r in rows}
    kept = [i for i in ids if i in by_id]
    rows = [by_id[i] for i in kept]
    n = len(kept)

    def col(k: int, dtype=np.float32) -> np.ndarray:
        return np.array([r[k] for r in rows], dtype=dtype) if n else np.zeros(0, dtype=dtype)

    facts = ItemFacts(
        ids=kept,
        external_ids=[r[1] for r in rows],
        titles=[r[2] for r in rows],
        brands=[r[3] for r in rows],
        categories=[tuple(r[4] or ()) for r in rows],
        prices=[r[5] for r in rows],
        popularity=col(6),
        rating=col(7),
        review_count=col(8),
        sentiment=col(9),
        sims={name: col(_FIXED_COLUMNS + k) for k, name in enumerate(vectors)},
    )
    if with_embeddings:
        facts.embeddings = stack_vectors([r[-1] for r in rows], model.dim)
    return facts


async def embeddings_of(conn: psycopg.AsyncConnection, ids: list[int], model: EmbeddingModel) -> np.ndarray:
    """The items' embeddings for ``model``, in the order of ``ids`` (zeros where missing)."""
    rows = await (await conn.execute(
        "SELECT item_id, vector_send(embedding) FROM item_embeddings WHERE model_version = %s AND item_id = ANY(%s)",
        (model.version, ids),
        binary=True,
    )).fetchall()
    sent = dict(rows)
    return stack_vectors([sent.get(i) for i in ids], model.dim)


def stack_vectors(sent: list[bytes | None], dim: int) -> np.ndarray:
    """pgvector's binary form (``vector_send``: uint16 dimension, uint16 unused, big-endian
    float32s) of many rows decoded in one numpy call; a missing vector stays zeros. Decoding
    each row through a psycopg loader was a fifth of Recommend's CPU in item_facts (py-spy,
    2026-12-06)."""
    out = np.zeros((len(sent), dim), dtype=np.float32)
    present = [k for k, b in enumerate(sent) if b is not None]
    if present:
        block = b"".join(sent[k] for k in present)
        if len(block) != len(present) * (4 + 4 * dim):
            raise ValueError(f"stored embeddings are not all {dim}-dimensional")
        out[present] = np.frombuffer(block, dtype=">f4").reshape(len(present), 1 + dim)[:, 1:]
    return out


async def titles(conn: psycopg.AsyncConnection, n: int) -> list[str]:
    """Up to ``n`` item titles, most popular first."""
    rows = await (await conn.execute(
        "SELECT i.title FROM items i LEFT JOIN item_stats s ON s.item_id = i.id "
        "ORDER BY coalesce(s.popularity, 0) DESC, i.id LIMIT %s",
        (n,),
    )).fetchall()
    return [r[0] for r in rows]


async def vocabulary(conn: psycopg.AsyncConnection) -> dict[str, int]:
    """Surface words of the catalog's titles and brands with their document counts."""
    rows = await (await conn.execute(
        "SELECT word, ndoc FROM ts_stat($$SELECT to_tsvector('simple', title || ' ' || coalesce(brand, '')) FROM items$$)"
    )).fetchall()
    return {w: int(n) for w, n in rows if w.isalpha()}
