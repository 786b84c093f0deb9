"""The catalog's per-item facts in the gateway's memory: what every Search and Recommend reads
for its few hundred candidates (title, brand, categories, price, popularity, ratings,
sentiment and the active version's embedding), as columns indexed by item id.

Reading them from Postgres cost each search ~4.3 ms of Postgres CPU (the facts statement over
300 candidates) and ~1.9 ms of the gateway's (sending it, parsing 300 rows): a fifth of the
~33 ms of CPU a search costs on 2 cores (py-spy and per-process CPU, 2026-12-07). Here the same
facts are a gather over arrays and one 300 x 384 matrix product.

Postgres stays the source of truth. The table is read whole (`read`, then `build`), then asked
every few seconds which items changed since it last looked (`changed_since`: the three tables'
indexed `updated_at`, with their stamps). Changed items it holds are read again and replace
their rows (`with_rows`, a copy: calls in flight keep the table they started with); items added
since the load are *stale* until the next full read, and the caller reads their facts from
Postgres, as before the table existed. The table is read whole again when too many items are
stale, after a TTL, or when another embedding version becomes active. Items deleted outside
aisle (aisle never deletes one) can be served until that read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import psycopg

from gateway.model import Filters
from gateway.retrieval import ItemFacts, stack_vectors
from gateway.vector_index import VectorIndex

# Rows per fetch of the full read: each fetch parses on the event loop, and the 59k rows took
# 1.65 s in all (~28 ms per 1,000), so calls wait at most that long behind one fetch.
LOAD_CHUNK = 1000

# Microseconds since the epoch, -1 where the row has no stats or embedding: compared exactly to
# tell a row that changed from one the table already holds.
_STAMPS = """
  (extract(epoch FROM i.updated_at) * 1000000)::int8,
  coalesce((extract(epoch FROM s.updated_at) * 1000000)::int8, -1),
  coalesce((extract(epoch FROM e.updated_at) * 1000000)::int8, -1)
"""
# Lower-cased brand and categories as Postgres lower()s them, so a filter matches here exactly
# when it would in SQL (`retrieval.filter_sql` lower()s the column and Python the values).
_LOAD = f"""
SELECT i.id, i.external_id, i.title, i.brand, lower(i.brand), i.category_path,
       ARRAY(SELECT lower(c) FROM unnest(i.category_path) c), i.price::float8,
       coalesce(s.popularity, 0), coalesce(s.rating_avg, 0), coalesce(s.rating_count, 0),
       coalesce(s.sentiment_positive, 0.5), vector_send(e.embedding), {_STAMPS}
FROM items i
LEFT JOIN item_stats s ON s.item_id = i.id
LEFT JOIN item_embeddings e ON e.item_id = i.id AND e.model_version = %(version)s
{{where}}
ORDER BY i.id
"""
_CHANGED = f"""
WITH changed AS (
    SELECT id FROM items WHERE updated_at > %(since)s
    UNION SELECT item_id FROM item_stats WHERE updated_at > %(since)s
    UNION SELECT item_id FROM item_embeddings WHERE model_version = %(version)s AND updated_at > %(since)s
)
SELECT i.id, {_STAMPS}
FROM changed c JOIN items i ON i.id = c.id
LEFT JOIN item_stats s ON s.item_id = i.id
LEFT JOIN item_embeddings e ON e.item_id = i.id AND e.model_version = %(version)s
"""


# The columns a changed row replaces.
_ARRAYS = ("prices", "popularity", "rating", "review_count", "sentiment", "embeddings", "norms", "stamps")
_LISTS = ("external_ids", "titles", "brands", "brands_lower", "categories", "categories_lower", "price_values")


@dataclass(frozen=True)
class ItemTable:
    version: str
    ids: np.ndarray  # int64, ascending
    external_ids: list[str]
    titles: list[str]
    brands: list[str | None]
    brands_lower: list[str | None]
    categories: list[tuple[str, ...]]
    categories_lower: list[frozenset[str]]
    prices: np.ndarray  # float64, NaN where the item has no price (for filters)
    price_values: list[float | None]  # the same as Python values (for answers)
    popularity: np.ndarray
    rating: np.ndarray
    review_count: np.ndarray
    sentiment: np.ndarray
    embeddings: np.ndarray  # float32 [n, dim], zeros where the item has no embedding
    norms: np.ndarray  # float32 [n], 0 where the item has no embedding
    stamps: np.ndarray  # int64 [n, 3]: items, item_stats, item_embeddings updated_at (µs)
    # Postgres's clock when the last look for changes (or the load) began: the next look asks
    # for changes from a margin before it.
    polled_at_db: object
    loaded_at: float
    polled_at: float
    stale: frozenset[int] = field(default_factory=frozenset)
    # The nearest-neighbour graph over the embeddings of the full read (``indexed``), and the
    # rows whose embedding changed since it was built: the graph's answers for them are stale,
    # so `nearest` scores them exactly instead.
    vectors: VectorIndex | None = None
    moved: frozenset[int] = field(default_factory=frozenset)

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, ids: list[int]) -> np.ndarray:
        """Each id's row, -1 where the table does not hold it."""
        wanted = np.asarray(ids, dtype=np.int64)
        if not len(self.ids) or not len(wanted):
            return np.full(len(wanted), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.ids, wanted), len(self.ids) - 1)
        return np.where(self.ids[at] == wanted, at, -1)

    def rows(self, ids: list[int]) -> np.ndarray:
        """Each id's row, -1 where the table does not hold it or holds a stale copy."""
        rows = self.positions(ids)
        if self.stale:
            rows[[i in self.stale for i in ids]] = -1
        return rows

    def facts(
        self, ids: list[int], filters: Filters, vectors: dict[str, np.ndarray], with_embeddings: bool
    ) -> tuple[ItemFacts, list[int]]:
        """Facts of the held ids that pass ``filters`` (in the order of ``ids``), and the ids the
        table cannot answer for (unknown or stale), which the caller reads from Postgres."""
        rows = self.rows(ids)
        missing = [i for i, r in zip(ids, rows) if r < 0]
        rows = rows[rows >= 0]
        rows = rows[self._passing(rows, filters)]
        # Python ints index the lists several times faster than numpy's.
        at = rows.tolist()
        facts = ItemFacts(
            ids=self.ids[rows].tolist(),
            external_ids=[self.external_ids[r] for r in at],
            titles=[self.titles[r] for r in at],
            brands=[self.brands[r] for r in at],
            categories=[self.categories[r] for r in at],
            prices=[self.price_values[r] for r in at],
            popularity=self.popularity[rows],
            rating=self.rating[rows],
            review_count=self.review_count[rows],
            sentiment=self.sentiment[rows],
            sims={},
        )
        vecs = self.embeddings[rows]
        norms = self.norms[rows]
        for name, vec in vectors.items():
            vec = np.asarray(vec, dtype=np.float32)
            denom = norms * np.float32(np.linalg.norm(vec))
            # 0 where the item has no embedding, as coalesce(1 - (e <=> v), 0) in SQL.
            facts.sims[name] = np.divide(vecs @ vec, denom, out=np.zeros(len(rows), dtype=np.float32), where=denom > 0)
        if with_embeddings:
            facts.embeddings = vecs
        return facts, missing

    def _passing(self, rows: np.ndarray, filters: Filters) -> np.ndarray:
        keep = np.ones(len(rows), dtype=bool)
        if filters.categories:
            wanted = {c.lower() for c in filters.categories}
            keep &= np.array([not wanted.isdisjoint(self.categories_lower[r]) for r in rows.tolist()], dtype=bool)
        if filters.brands:
            wanted_brands = {b.lower() for b in filters.brands}
            keep &= np.array([self.brands_lower[r] in wanted_brands for r in rows.tolist()], dtype=bool)
        # NaN (no price) fails both bounds, as NULL does in SQL.
        if filters.min_price is not None:
            keep &= self.prices[rows] >= filters.min_price
        if filters.max_price is not None:
            keep &= self.prices[rows] <= filters.max_price
        return keep

    def differing(self, changed: dict[int, tuple[int, int, int]]) -> tuple[list[int], list[int]]:
        """Of ``changed`` (id -> its three stamps), the held ids whose stamps differ from the
        table's, and the ids it does not hold. A row seen again within the look-back margin
        with the stamps the table holds is neither."""
        if not changed:
            return [], []
        ids = list(changed)
        at = self.positions(ids)
        seen = np.array(list(changed.values()), dtype=np.int64).reshape(len(ids), 3)
        # An empty table (loaded before the catalog) holds no stamps to compare.
        differs = np.any(self.stamps[np.maximum(at, 0)] != seen, axis=1) if len(self.ids) else at < 0
        held = [i for i, p, d in zip(ids, at, differs) if p >= 0 and d]
        unknown = [i for i, p in zip(ids, at) if p < 0 and i not in self.stale]
        return held, unknown

    def with_rows(self, rows: list, unknown: list[int], polled_at_db, now: float) -> ItemTable:
        """A copy with ``rows`` (of ``_LOAD``, for ids the table holds) in place of the rows
        it held, and ``unknown`` ids marked stale (CPU only: run it off the event loop)."""
        if rows:
            fresh = build(rows, self.version, self.embeddings.shape[1], polled_at_db, now)
            at = self.positions(fresh.ids.tolist())
            if (at < 0).any():
                raise ValueError("with_rows takes rows of held items only")
            moved = self.moved
            if self.vectors is not None:
                shifted = np.any(self.embeddings[at] != fresh.embeddings, axis=1)
                moved = moved | frozenset(at[shifted].tolist())
            arrays = {}
            for name in _ARRAYS:
                column, values = getattr(self, name), getattr(fresh, name)
                # A column whose changed rows hold what it holds is shared, not copied: a graph
                # rebuild changes ~4,400 items' popularity and none of their embeddings, and
                # copying the embeddings (90 MB for 59k items) at each such look cost ~23 ms of
                # CPU and held two copies while calls in flight kept the old table.
                if not np.array_equal(column[at], values, equal_nan=column.dtype.kind == "f"):
                    arrays[name] = column.copy()
                    arrays[name][at] = values
            lists = {name: list(getattr(self, name)) for name in _LISTS}
            for name in _LISTS:
                column, values = lists[name], getattr(fresh, name)
                for k, row in enumerate(at.tolist()):
                    column[row] = values[k]
            table = replace(self, **arrays, **lists, moved=moved)
        else:
            table = self
        stale = self.stale | frozenset(unknown) if unknown else self.stale
        return replace(table, stale=stale, polled_at=now, polled_at_db=polled_at_db)

    def indexed(self, previous: ItemTable | None = None) -> ItemTable:
        """The table with a nearest-neighbour graph over its embeddings (CPU only, seconds for
        a large catalog: run it off the event loop). ``previous``'s graph is kept when it was
        built over exactly these items and embeddings: the full read every ITEM_TABLE_TTL_S of
        an unchanged catalog then costs no rebuild (~7 s of one core for 59k items)."""
        if (
            previous is not None and previous.vectors is not None and not previous.moved
            and np.array_equal(previous.ids, self.ids) and np.array_equal(previous.embeddings, self.embeddings)
        ):
            return replace(self, vectors=previous.vectors, moved=frozenset())
        return replace(self, vectors=VectorIndex.build(self.embeddings, self.norms), moved=frozenset())

    def nearest(self, vector: np.ndarray, n: int, ef: int, exclude: frozenset[int] | set[int] = frozenset()) -> list[tuple[int, float]] | None:
        """The ``n`` held items closest to ``vector`` by cosine similarity, as (id, similarity),
        closest first, leaving out ``exclude``: what ``retrieval.dense`` answers without
        filters, over the items the table holds (not the stale ones). None without a graph."""
        if self.vectors is None:
            return None
        vec = np.asarray(vector, dtype=np.float32)
        length = float(np.linalg.norm(vec))
        if length == 0 or n <= 0:
            return []
        # Excluded items (a user's history) take places in the graph's answer: ask for that many
        # more, so the answer still holds n where pgvector's, filtering after its scan, held fewer.
        rows = self.vectors.search(vec, n + min(len(exclude), n), ef)
        if self.moved:
            moved = np.fromiter(self.moved, dtype=np.int64, count=len(self.moved))
            rows = np.concatenate([rows[~np.isin(rows, moved)], moved])
        rows = rows[self.norms[rows] > 0]
        ids = self.ids[rows]
        if exclude:
            keep = ~np.isin(ids, np.fromiter(exclude, dtype=np.int64, count=len(exclude)))
            rows, ids = rows[keep], ids[keep]
        # The exact cosine, as 1 - (e <=> v) in SQL: the graph only chose the candidates.
        sims = (self.embeddings[rows] @ vec) / (self.norms[rows] * np.float32(length))
        order = np.lexsort((ids, -sims))[:n]
        return list(zip(ids[order].tolist(), sims[order].tolist()))

    def closest(self, ids: list[int], vector: np.ndarray | None, n: int, filters: Filters) -> list[int] | None:
        """What ``retrieval.closest_of`` answers, or None when some id is not held (the caller
        asks Postgres then)."""
        rows = self.rows(ids)
        if (rows < 0).any():
            return None
        rows = rows[self._passing(rows, filters)]
        if vector is None:
            score = self.popularity[rows].astype(np.float64)
        else:
            # Items without an embedding drop out, as in the SQL's inner join.
            rows = rows[self.norms[rows] > 0]
            vec = np.asarray(vector, dtype=np.float32)
            score = (self.embeddings[rows] @ vec) / (self.norms[rows] * np.float32(np.linalg.norm(vec)))
        order = np.lexsort((self.ids[rows], -score))[:n]
        return self.ids[rows[order]].tolist()


async def read(conn: psycopg.AsyncConnection, version: str) -> tuple[object, list]:
    """Postgres's clock at the start, and every item's row of ``_LOAD`` with its embedding of
    ``version`` (in chunks; `build` makes the table of them, off the event loop)."""
    rows: list = []
    async with conn.transaction():
        # The transaction's start: every change this read does not see is stamped after it or
        # committed after it (the caller's look-back margin covers the latter).
        loaded_at_db = (await (await conn.execute("SELECT now()")).fetchone())[0]
        async with conn.cursor("aisle_item_table", binary=True) as cur:
            await cur.execute(_LOAD.format(where=""), {"version": version})
            while chunk := await cur.fetchmany(LOAD_CHUNK):
                rows.extend(chunk)
    return loaded_at_db, rows


def build(rows: list, version: str, dim: int, loaded_at_db, started: float) -> ItemTable:
    """The table from the rows of ``_LOAD`` (CPU only: run it off the event loop)."""
    n = len(rows)

    def col(k: int, dtype) -> np.ndarray:
        return np.array([r[k] for r in rows], dtype=dtype) if n else np.zeros(0, dtype=dtype)

    embeddings = stack_vectors([r[12] for r in rows], dim)
    return ItemTable(
        version=version,
        ids=col(0, np.int64),
        external_ids=[r[1] for r in rows],
        titles=[r[2] for r in rows],
        brands=[r[3] for r in rows],
        brands_lower=[r[4] for r in rows],
        categories=[tuple(r[5] or ()) for r in rows],
        categories_lower=[frozenset(r[6] or ()) for r in rows],
        prices=np.array([np.nan if r[7] is None else r[7] for r in rows], dtype=np.float64),
        price_values=[r[7] for r in rows],
        popularity=col(8, np.float32),
        rating=col(9, np.float32),
        review_count=col(10, np.float32),
        sentiment=col(11, np.float32),
        embeddings=embeddings,
        norms=np.linalg.norm(embeddings, axis=1).astype(np.float32),
        stamps=np.array([r[13:16] for r in rows], dtype=np.int64).reshape(n, 3),
        polled_at_db=loaded_at_db,
        loaded_at=started,
        polled_at=started,
    )


async def changed_since(conn: psycopg.AsyncConnection, version: str, since) -> tuple[object, dict[int, tuple[int, int, int]]]:
    """Postgres's clock now, and the items whose row, stats or embedding of ``version`` changed
    after ``since``, with their stamps (index range scans: nothing is read when nothing changed)."""
    now = (await (await conn.execute("SELECT now()")).fetchone())[0]
    rows = await (await conn.execute(_CHANGED, {"version": version, "since": since})).fetchall()
    return now, {r[0]: (r[1], r[2], r[3]) for r in rows}


async def rows_of(conn: psycopg.AsyncConnection, version: str, ids: list[int]) -> list:
    """The rows of ``_LOAD`` of the items ``ids``, LOAD_CHUNK ids a statement: a graph rebuild
    changes ~4,400 items' popularity, and parsing them in one go would hold the event loop
    for ~120 ms."""
    query = _LOAD.format(where="WHERE i.id = ANY(%(ids)s)")
    rows: list = []
    for start in range(0, len(ids), LOAD_CHUNK):
        chunk = ids[start:start + LOAD_CHUNK]
        rows += await (await conn.execute(query, {"version": version, "ids": chunk}, binary=True)).fetchall()
    return rows
