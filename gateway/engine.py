"""The gateway's pipelines over Triton and Postgres: Search, Recommend, SimilarItems,
ClassifyProduct, AnalyzeReviews and TrackEvent. Async all the way; no gRPC in here.

Search: query embedding (cached) → dense (HNSW), full-text and knowledge-graph candidates in
parallel → reciprocal-rank fusion → features → the learned ranker → filters → page.
Recommend: profile (stored, plus events since the last refresh folded on read) → ANN,
co-occurrence, graph-neighbour and popular candidates → ranker → MMR diversity → history out.
Every stage runs inside a budget cut from the call's deadline; when the encoder, the ranker or
a retriever the answer can do without (dense, graph, personalisation, each Recommend source)
cannot answer in time the pipeline answers from what it has and says so (``degraded``). Postgres
work an answer needs is cancelled at the deadline (DEADLINE_EXCEEDED), not left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import time
from collections.abc import Awaitable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TypeVar

import numpy as np
import psycopg
from psycopg_pool import AsyncConnectionPool

from core.cpu import one_blas_thread
from core.db import EF_SEARCH, configure_async
from core.embeddings import EmbeddingModel, index_name
from core.features import (
    FEATURE_NAMES,
    TITLE_CACHE,
    LexiconStats,
    Signals,
    blend_column,
    brand_share_column,
    lexical_columns,
    matrix,
    text_columns,
    type_columns,
    warm_title_caches,
)
from core.model_interfaces import ANALYZE_SENTIMENT, CLASSIFY_PRODUCT, query_model
from core.profiles import Event, Profile, category_affinity, fold
from core.settings import Settings
from core.triton import AsyncTritonClient, TritonError, TritonInputError
from gateway import item_table, recommendation_cache, retrieval
from gateway.cooccurrence import CoOccurrenceGraph, Neighbourhood
from gateway.fusion import mmr, rank_positions, reciprocal_rank_fusion
from gateway.item_table import ItemTable
from gateway.lexical_index import LexicalIndex
from gateway.model import (
    Classification,
    Explanation,
    Filters,
    Hit,
    InvalidInput,
    Item,
    NotFound,
    OutOfTime,
    Ranked,
    RecommendQuery,
    SearchQuery,
    Sentiment,
    Unavailable,
)
from gateway.popular import PopularByCategory
from gateway.query_cache import QueryCache
from gateway.spelling import QueryCorrector, expand

log = logging.getLogger(__name__)
T = TypeVar("T")

# Candidates per retriever. Share of relevant Home Depot dev products in the pool (1,000
# queries, base encoder): 200 dense + 200 full-text 0.877, 400 + 400 0.911; 300 + 300 keeps most
# of that gain at three quarters of the ranker's work. With the query-side encoder 200 dense
# candidates do as well as 300 (held-out queries, ranker refitted on the other 80 % each time:
# NDCG@10 0.440 / Recall@100 0.841 against 0.441 / 0.839) and each HNSW scan costs ~1.1 ms less.
DENSE_CANDIDATES = 200
LEXICAL_CANDIDATES = 300
GRAPH_CANDIDATES = 100
# Fused candidates the ranker scores: the ranker is trained on pools of this size (the best
# by RRF, aisle/ranker_training.py POOL), and features cost ~60 µs per candidate.
RANKED_POOL = 300
# Recommend: candidates per source. Each nearest-neighbour scan (profile, last item) reads 100
# with hnsw.ef_search 100 instead of Search's 200/200: `aisle eval recommend --users 2000` gave
# NDCG@10 0.0967 against 0.0963 at 200, and in-process at c=4 Recommend ran at 78-82 QPS against
# 64-66 (2026-12-06).
RECOMMEND_DENSE = 100
# Items a nearest-neighbour query in Postgres leaves out by id (a user's history): the array
# travels with the query, and a history longer than this is still left out of the answer.
MAX_EXCLUDED = 1000
RECOMMEND_COOC = 200
RECOMMEND_POPULAR = 100
# Two-hop co-occurrence (items bought near the items bought near the user's recent ones): the
# strongest TWO_HOP_EXPAND neighbours are expanded, and an item scores its one-hop weight plus
# TWO_HOP_WEIGHT x its two-hop weight. Offline (8,442 Scientific users, target = last train
# item) the best 300 by one hop held the target for 0.28 of users, by two hops 0.43 (the
# weight 0.03-1.0 all within 0.01); the served pool's share went from 0.40 to 0.43. In SQL
# 50 neighbours cost 8 ms p50 against 1.5 ms for one hop; in memory (gateway/cooccurrence.py)
# the whole expansion takes 0.3-0.7 ms. A pool of 500 with the best 500 by two hops gave the
# same NDCG@10 as 300/300 with today's ranker (0.0963, `aisle eval recommend --users 2000`).
# See docs/models.md.
RECOMMEND_TWO_HOP = 300
TWO_HOP_EXPAND = 50
TWO_HOP_WEIGHT = 0.1
# Recent items that anchor co-occurrence and similarity for a user.
RECENT_ITEMS = 10
# MMR trade-off for Recommend (1 = no diversification); chosen on Scientific valid rows.
MMR_LAMBDA = 0.9
# Candidates MMR chooses among per item asked for, best by score first: for k = 10 at
# MMR_LAMBDA 0.9 the best 30 gave the whole pool's picks for 400 of 400 Scientific users
# (fusion.mmr); 5 per item (50 for the default k) leaves a margin.
MMR_CANDIDATES_PER_PICK = 5
# Recommendations kept per user (gateway/recommendation_cache.py): a plain Recommend for up to
# this many is served from the cache. 20: the default k is 10 and `aisle eval recommend` asks
# for 20 (Recall@20); MMR's first 10 picks of 20 are its 10 picks (docs/api.md).
CACHED_RECOMMENDATIONS = 20
# Default budget of a call without a deadline, and the share of it each Triton stage may take.
DEFAULT_BUDGET_S = 1.0
EMBED_SHARE = 0.4
RANKER_SHARE = 0.3
# Time kept back to assemble the answer after the last stage.
REPLY_MARGIN_S = 0.01
# Share of the call's time left when retrieval starts that the retrievers an answer can do
# without (dense, graph, the user's profile; Recommend's sources) may take before they are left
# out. Half, by reasoning rather than tuning: the facts query and the ranker still need the
# other half, and the cut only bites when Postgres is contended (a quiet search retrieves in
# tens of ms of its 1-2 s; under bench/soak.py's refreshes single retrievers took over a second).
OPTIONAL_RETRIEVAL_SHARE = 0.5
# How long the active embedding model and the lexicon are trusted before re-reading.
MODEL_TTL_S = 10.0
# ... and how soon a model whose HNSW index was missing is looked at again: every search is
# degraded until the gateway sees the index, which a new catalog's refresh builds at its end.
# With MODEL_TTL_S alone that lasted up to 10 s after the build (one indexed catalog lookup a
# second while it lasts).
INDEX_POLL_S = 1.0
# How long a search may spend asking Triton whether the query twin of the encoder is loaded.
QUERY_MODEL_LOOKUP_S = 0.05
LEXICON_TTL_S = 600.0
# How often the lexical index picks up items changed since its last full build (an upserted
# item is searchable by its words this long after it commits), and how far before that build's
# snapshot it looks: a load transaction stamps updated_at when it starts, not when it commits.
LEXICAL_POLL_S = 5.0
# How often Recommend looks for a newer co-occurrence graph (one indexed max() over job_runs);
# beat rebuilds the graph at most every few minutes, so a rebuild shows within seconds.
GRAPH_POLL_S = 5.0
CHANGE_MARGIN_S = 120.0
# The items' facts in memory (gateway/item_table.py): how often the table looks for items changed
# since its last look (three indexed range scans, ~0.3 ms when nothing changed); how many
# changed or added items, or what share of the table, it takes before reading the whole catalog
# again is cheaper (59k items with their embeddings: 1.65 s to read and 0.65 s to build, while a
# graph rebuild's ~4,400 changed rows are read again in ~0.1 s); and how long a load serves at
# most (items deleted outside aisle; added ones are read from Postgres meanwhile).
ITEM_POLL_S = 2.0
ITEM_STALE_MAX = 5000
ITEM_STALE_SHARE = 0.1
ITEM_TABLE_TTL_S = 600.0
# Items added since the table's load that a nearest-neighbour query scans exactly in Postgres
# beside the graph in memory (gateway/vector_index.py). The scan grows with them: 0.44 ms for
# 50 ids, 0.95 for 200, 3.75 for 1,000, 14.8 for 5,000 (200 nearest, 2026-12-08), against ~6 ms
# for pgvector's HNSW scan of the whole catalog. Beyond this many, queries go to pgvector and the
# table is read in full again, graph included.
STALE_SCAN_MAX = 500
# After a failed load or look: long enough that calls on a struggling Postgres do not each start
# a full read of the catalog, short next to the TTL.
ITEM_RETRY_S = 30.0
# Changed items the overlay takes before a full rebuild is cheaper: the overlay is rebuilt at
# every poll, ~0.1 s per 5,000 items; the base from all 59k items takes ~2 s.
OVERLAY_MAX = 5000
# Lexical candidates taken before filters apply when a search has filters (the filter is then
# checked in Postgres for those items only).
FILTERED_LEXICAL_DEPTH = 5000


# Deadline (time.monotonic()) of the call being served in this context, if it has a Budget.
_CALL_DEADLINE: ContextVar[float | None] = ContextVar("aisle_call_deadline", default=None)
# Longest wait for a pooled Postgres connection when the call sets no deadline.
POOL_WAIT_S = 5.0
# Kept back from the call's deadline so UNAVAILABLE reaches the client before its own timer fires.
POOL_REPLY_MARGIN_S = 0.05


class Budget:
    """Seconds left until the call's deadline, split among stages."""

    def __init__(self, time_left_s: float | None):
        self.deadline = time.monotonic() + (time_left_s if time_left_s is not None else DEFAULT_BUDGET_S)
        # Every Postgres connection the call (and the tasks it spawns, which copy the context)
        # asks the pool for waits no longer than the call has left: during a database outage
        # the caller then gets UNAVAILABLE, which clients retry, instead of its own deadline.
        _CALL_DEADLINE.set(self.deadline)

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic() - REPLY_MARGIN_S)

    def share(self, fraction: float) -> float:
        return self.left() * fraction

    def until(self, fraction: float) -> float:
        """The time.monotonic() by which a stage given ``fraction`` of what is left must end."""
        return time.monotonic() + self.share(fraction)


def _loop_time(monotonic: float) -> float:
    """``monotonic`` (a time.monotonic() reading) on the event loop's clock."""
    return asyncio.get_running_loop().time() + (monotonic - time.monotonic())


def _settle_heap() -> None:
    """Move what is alive now (the lexical index, the corrector, the caches: ~360k objects for
    59k items) out of the cyclic collector's reach. Every ~1,000 searches a full collection
    walked them all: 64-88 ms with the gateway's loop stopped (in-process, 2026-11-29), and at
    c=4 every ~11 s four searches in flight took ~150 ms together, setting the p99. Refcounting
    still frees the old index when a rebuild replaces it (it holds no reference cycles); the
    collection first drops cyclic garbage rather than freezing it, once per full build."""
    gc.collect()
    gc.freeze()


def _return_freed_memory() -> None:
    """Give the memory of the rows a full item-table read freed back to the system: the rows'
    ~59k vectors arrive as small byte strings, and glibc keeps their pages after they are freed.
    The gateway held 95 MB more for it (RSS 353 against 258 MB in-process, 2026-12-07); the
    trim takes ~11 ms, in a thread. Other C libraries have no malloc_trim and keep theirs."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


async def optional(what: str, work: Awaitable[T], deadline: float, reasons: list[str], fallback: T) -> T:
    """``work``'s result, or ``fallback`` (and a reason saying so) when it is not done by
    ``deadline`` (time.monotonic()); its Postgres query is cancelled in the server."""
    try:
        async with asyncio.timeout_at(_loop_time(deadline)):
            return await work
    except (TimeoutError, OutOfTime):
        reasons.append(f"{what} missed its budget: left out")
        return fallback


@dataclass
class Timer:
    stages: dict[str, float] = field(default_factory=dict)

    @asynccontextmanager
    async def stage(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + (time.perf_counter() - t) * 1000


@dataclass
class Pool:
    """Ranked-to-be candidates of one call: the ranker's input and what explains it."""

    model: EmbeddingModel
    reasons: list[str]
    expansions: dict[str, list[str]]
    graph_paths: dict[int, list[str]]
    facts: retrieval.ItemFacts | None = None
    signals: Signals | None = None
    features: np.ndarray | None = None
    exclude: set[int] = field(default_factory=set)
    user: UserState | None = None
    # False when the user has history the pipeline could not fully use yet: items of theirs
    # without embeddings, or no graph rebuilt so far (recommendation_cache.FRESH).
    complete: bool = True


@dataclass(frozen=True)
class Lexicon:
    """What lexical retrieval and spelling read: swapped whole, never changed in place."""

    loaded_at: float  # time.monotonic() of the last full build
    polled_at: float  # ... and of the last look for changed items
    snapshot: datetime  # database time the full build read the catalog
    index: LexicalIndex
    corrector: QueryCorrector
    # updated_at of each item changed since snapshot − CHANGE_MARGIN_S as the index holds it,
    # and the documents of the items changed since the full build (the overlay's).
    stamps: dict[int, datetime] = field(default_factory=dict)
    changed: dict[int, tuple] = field(default_factory=dict)

    @property
    def stats(self) -> LexiconStats:
        return self.index.corpus.lexicon


@dataclass(frozen=True)
class GraphSnapshot:
    """One graph rebuild's output as Recommend reads it (``Engine.graph``)."""

    version: int | None  # the graph job's run it comes from
    co_occurrence: CoOccurrenceGraph
    popular: PopularByCategory


@dataclass
class UserState:
    user_id: int | None
    profile: Profile | None
    history: set[int]
    recent: list[int]  # most recent first
    # The newest event read and how many (a cached list made from them is fresh while both hold).
    last_event_id: int = 0
    event_count: int = 0
    # Events not folded into the stored profile whose items have no embedding yet: the refresh
    # has not reached them, so the profile and the recent items' neighbours lack them.
    unembedded: int = 0


class Engine:
    def __init__(self, settings: Settings, pool: AsyncConnectionPool, triton: AsyncTritonClient):
        self.settings = settings
        self.pool = pool
        self.triton = triton
        self.cache = QueryCache()
        # (read at, active model, whether its HNSW index exists)
        self._model: tuple[float, EmbeddingModel, bool] | None = None
        self._lexicon: Lexicon | None = None
        self._query_models: dict[str, tuple[float, str]] = {}
        self._lexicon_load: asyncio.Task | None = None
        self._graph: GraphSnapshot | None = None
        self._graph_polled_at = 0.0
        self._graph_load: asyncio.Task | None = None
        self._items: ItemTable | None = None
        self._items_load: asyncio.Task | None = None
        # When the last load or look failed; None since a load succeeded.
        self._items_failed_at: float | None = None
        self.ranker_version = "ranker@1"

    @classmethod
    async def create(cls, settings: Settings) -> Engine:
        if not settings.database_url or not settings.triton_url:
            raise ValueError("the gateway needs AISLE_DATABASE_URL and AISLE_TRITON_URL")
        # Spinning BLAS threads cost more CPU than the engine's own work (core/cpu.py).
        one_blas_thread()
        pool = AsyncConnectionPool(
            settings.database_url, min_size=2, max_size=settings.db_pool_size, configure=configure_async,
            open=False, kwargs={"autocommit": True},
        )
        await pool.open(wait=False)
        return cls(settings, pool, AsyncTritonClient(settings.triton_url, settings.triton_timeout_s))

    async def close(self) -> None:
        for task in (self._lexicon_load, self._graph_load, self._items_load):
            if task is not None:
                task.cancel()
        await self.pool.close()
        await self.triton.close()

    # --- shared state ---------------------------------------------------------------------

    @asynccontextmanager
    async def connection(self, timeout_s: float | None = None):
        """A pooled connection. Inside a call (and without an explicit ``timeout_s``, which
        background loads pass) both the wait for it and the work on it end by the call's
        deadline: a query still running then is cancelled in the server and OutOfTime raised."""
        deadline = _CALL_DEADLINE.get() if timeout_s is None else None
        if deadline is not None:
            deadline -= POOL_REPLY_MARGIN_S
        bound = None
        try:
            if timeout_s is None:
                timeout_s = POOL_WAIT_S if deadline is None else min(POOL_WAIT_S, max(0.001, deadline - time.monotonic()))
            async with self.pool.connection(timeout=timeout_s) as conn:
                if deadline is None:
                    yield conn
                else:
                    async with (bound := asyncio.timeout_at(_loop_time(deadline))):
                        yield conn
        except (psycopg.OperationalError, psycopg.errors.AdminShutdown) as exc:
            raise Unavailable(f"database unavailable: {exc}") from None
        except TimeoutError as exc:
            if bound is not None and bound.expired():
                raise OutOfTime("the database did not answer within the call's deadline") from None
            raise Unavailable(f"database unavailable: {exc or 'no connection in time'}") from None

    async def active_model(self) -> EmbeddingModel:
        return (await self._active())[0]

    async def _active(self) -> tuple[EmbeddingModel, bool]:
        """The active embedding model and whether its HNSW index exists (re-read every MODEL_TTL_S)."""
        now = time.monotonic()
        if self._model and now - self._model[0] < (MODEL_TTL_S if self._model[2] else INDEX_POLL_S):
            return self._model[1], self._model[2]
        async with self.connection() as conn:
            row = await (await conn.execute(
                "SELECT version, triton_model, dim, status FROM embedding_models WHERE status = 'active'"
            )).fetchone()
            if row is None:
                raise Unavailable("no active embedding model: run `aisle db migrate`")
            model = EmbeddingModel(*row)
            indexed = await (await conn.execute(
                "SELECT 1 FROM pg_indexes WHERE indexname = %s", (index_name(model.version),)
            )).fetchone() is not None
        self._model = (now, model, indexed)
        return model, indexed

    async def _nearest_searchable(self, filters: Filters, reasons: list[str]) -> bool:
        """Whether a nearest-neighbour query over the whole catalog can run now. Until the active
        version's HNSW index exists (the first refresh of a new catalog builds it at its end) each
        one is an exact scan: 250-450 ms at 10k rows under bench/soak.py's traffic, growing with
        the table, until every call missed its deadline. So it waits for the index and the
        answer says why; a filtered query scans only its matching rows exactly, as always."""
        model, indexed = await self._active()
        if indexed or not filters.empty():
            return True
        reasons.append(f"nearest-neighbour retrieval waits for the {model.version} index (built after its first refresh)")
        return False

    async def lexicon(self) -> Lexicon:
        """The lexical index, its statistics and the spelling corrector: rebuilt from Postgres
        every LEXICON_TTL_S, items changed since folded in every LEXICAL_POLL_S.

        Loads run as tasks of their own that no caller's deadline cancels: on the 59k-item
        catalog a full load takes seconds under load, so a load tied to one 1 s call was
        cancelled call after call and searches kept failing (bench/gateway.py: 159 of 400 at
        c=1). The current lexicon keeps serving while the next one loads."""
        now = time.monotonic()
        current = self._lexicon
        if current is not None and now - current.polled_at < LEXICAL_POLL_S:
            return current
        if self._lexicon_load is None or self._lexicon_load.done():
            full = current is None or now - current.loaded_at >= LEXICON_TTL_S
            self._lexicon_load = asyncio.create_task(self._load_lexicon() if full else self._poll_lexicon(current))
            self._lexicon_load.add_done_callback(_note_lexicon_failure)
        if current is not None:
            return current
        return await asyncio.shield(self._lexicon_load)

    async def _load_lexicon(self) -> Lexicon:
        started = time.monotonic()
        async with self.connection(timeout_s=POOL_WAIT_S) as conn:
            read = await retrieval.lexical_documents(conn, CHANGE_MARGIN_S)
            words = await retrieval.vocabulary(conn)
            titles = await retrieval.titles(conn, TITLE_CACHE)
        # Building the index (~1 s for 59k items) and the corrector's (~0.4 s): off the event loop.
        index = await asyncio.to_thread(LexicalIndex.build, read.docs)
        corrector = await asyncio.to_thread(QueryCorrector, words)
        await asyncio.to_thread(warm_title_caches, titles)
        self._lexicon = Lexicon(started, started, read.snapshot, index, corrector, read.stamps)
        _settle_heap()
        return self._lexicon

    async def _poll_lexicon(self, current: Lexicon) -> Lexicon:
        """Fold in the items changed since the last look. Rows stamped within CHANGE_MARGIN_S
        before the full build are looked at again (a transaction in flight then commits later),
        but only those whose stamp differs from the one the index holds are read: right after a
        catalog import every item is that recent, and re-reading them all (59k > OVERLAY_MAX)
        meant a full rebuild at every poll for two minutes, which starved the searches of the
        first minutes of bench/soak.py (95 past their deadline)."""
        started = time.monotonic()
        async with self.connection(timeout_s=POOL_WAIT_S) as conn:
            seen = await retrieval.changed_items(conn, current.snapshot - timedelta(seconds=CHANGE_MARGIN_S))
            fresh = [i for i, at in seen.items() if current.stamps.get(i) != at]
            too_many = len(current.changed.keys() | fresh) > OVERLAY_MAX
            docs = await retrieval.documents_of(conn, fresh) if fresh and not too_many else []
        if too_many:
            return await self._load_lexicon()
        if not fresh:
            self._lexicon = replace(current, polled_at=started)
            return self._lexicon
        changed = current.changed | {d[0]: d for d in docs}
        index = await asyncio.to_thread(current.index.with_changes, changed)
        stamps = current.stamps | {i: seen[i] for i in fresh}
        self._lexicon = replace(current, polled_at=started, index=index, stamps=stamps, changed=changed)
        return self._lexicon

    def item_table(self, model: EmbeddingModel) -> ItemTable | None:
        """The items' facts in memory for ``model``, or None until a first load is done (callers
        read from Postgres meanwhile). Loads and looks for changes run as tasks of their own, as
        the lexicon's do; the current table keeps serving while they run."""
        if not self.settings.gateway_item_table:
            return None
        now = time.monotonic()
        current = self._items
        usable = current is not None and current.version == model.version
        if usable and now - current.polled_at < ITEM_POLL_S:
            return current
        failed_at = self._items_failed_at
        # After a failed load or look, calls read from Postgres for a while instead of starting
        # a full read of the catalog each.
        if failed_at is not None and now - failed_at < ITEM_RETRY_S:
            return current if usable else None
        if self._items_load is None or self._items_load.done():
            # After a failure, a full read rather than another look: whatever failed in the look
            # would fail again.
            full = (
                not usable or failed_at is not None or now - current.loaded_at >= ITEM_TABLE_TTL_S
                # Re-embedded rows are scored exactly on every nearest-neighbour query, and new
                # items scanned in Postgres, until the graph is built again.
                or (current.vectors is not None
                    and (len(current.moved) > ITEM_STALE_MAX or len(current.stale) > STALE_SCAN_MAX))
            )
            self._items_load = asyncio.create_task(self._load_items(model) if full else self._poll_items(current, model))
            self._items_load.add_done_callback(self._note_item_table_failure)
        return current if usable else None

    def held_items(self) -> dict[str, int] | None:
        """What the item table in memory holds now (gateway/metrics.py reads it at each scrape),
        None before its first load."""
        table = self._items
        if table is None:
            return None
        return {"held": len(table), "stale": len(table.stale), "moved": len(table.moved),
                "graph": len(table.vectors) if table.vectors is not None else 0}

    def _note_item_table_failure(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._items_failed_at = time.monotonic()
            log.warning("item table load failed (facts are read from Postgres; read again in %.0f s)",
                        ITEM_RETRY_S, exc_info=task.exception())

    async def _load_items(self, model: EmbeddingModel) -> ItemTable:
        started = time.monotonic()
        async with self.connection(timeout_s=POOL_WAIT_S) as conn:
            loaded_at_db, rows = await item_table.read(conn, model.version)
        table = await asyncio.to_thread(item_table.build, rows, model.version, model.dim, loaded_at_db, started)
        del rows
        if self.settings.gateway_vector_index:
            table = await asyncio.to_thread(table.indexed, self._items)
        self._items = table
        self._items_failed_at = None
        _settle_heap()
        await asyncio.to_thread(_return_freed_memory)
        return self._items

    async def _poll_items(self, current: ItemTable, model: EmbeddingModel) -> ItemTable:
        """Read again the items changed since the last look, and mark those added since the
        load stale. Rows stamped within CHANGE_MARGIN_S before that look are looked at again (a
        transaction in flight then commits later); those whose stamps match the table's are
        left alone."""
        started = time.monotonic()
        async with self.connection(timeout_s=POOL_WAIT_S) as conn:
            polled_at_db, changed = await item_table.changed_since(
                conn, current.version, current.polled_at_db - timedelta(seconds=CHANGE_MARGIN_S)
            )
            held, unknown = current.differing(changed)
            # A full read costs in proportion to the catalog: a table read before the catalog
            # was loaded (empty) is read again as soon as items appear.
            limit = min(ITEM_STALE_MAX, int(len(current) * ITEM_STALE_SHARE))
            too_many = max(len(held), len(current.stale) + len(unknown)) > limit
            rows = await item_table.rows_of(conn, current.version, held) if held and not too_many else []
        if too_many:
            return await self._load_items(model)
        if not held and not unknown:
            self._items = replace(current, polled_at=started, polled_at_db=polled_at_db)
        else:
            # A copy of the changed columns (the embeddings' 90 MB among them): off the loop.
            self._items = await asyncio.to_thread(current.with_rows, rows, unknown, polled_at_db, started)
        return self._items

    async def _facts(
        self, ids: list[int], model: EmbeddingModel, filters: Filters | None = None,
        vectors: dict[str, np.ndarray | None] | None = None, with_embeddings: bool = False,
    ) -> retrieval.ItemFacts:
        """Facts of the items among ``ids`` that pass ``filters``, in the order of ``ids``: from
        the table in memory, and from Postgres for the ids it does not hold fresh."""
        filters = filters or Filters()
        vectors = {k: v for k, v in (vectors or {}).items() if v is not None}
        table = self.item_table(model)
        if table is None:
            async with self.connection() as conn:
                return await retrieval.item_facts(conn, ids, model, filters, vectors, with_embeddings)
        held, missing = table.facts(ids, filters, vectors, with_embeddings)
        if not missing:
            return held
        async with self.connection() as conn:
            read = await retrieval.item_facts(conn, missing, model, filters, vectors, with_embeddings)
        return retrieval.merge_facts(ids, held, read)

    async def graph(self) -> GraphSnapshot:
        """What Recommend reads of the graph job's output, in memory: item co-occurrence
        (gateway/cooccurrence.py) and the popular items per category (gateway/popular.py),
        reloaded after each graph rebuild. The latest finished run is looked up every
        GRAPH_POLL_S, in a task of its own (as the lexicon's loads), while the current snapshot
        keeps serving."""
        now = time.monotonic()
        current = self._graph
        # Until a first rebuild exists, every call looks for it and waits for it: lists made
        # without the graph are stored as incomplete, and `aisle refresh all` warms them right
        # after the rebuild; polling every GRAPH_POLL_S left the first dozen of 8,442 warm-up
        # calls on the empty snapshot (make demo, 2026-12-07). The look is one indexed max().
        built = current is not None and current.version is not None
        if built and now - self._graph_polled_at < GRAPH_POLL_S:
            return current
        if self._graph_load is None or self._graph_load.done():
            self._graph_polled_at = now
            self._graph_load = asyncio.create_task(self._load_graph(current))
            self._graph_load.add_done_callback(_note_graph_failure)
        if built:
            return current
        return await asyncio.shield(self._graph_load)

    async def _load_graph(self, current: GraphSnapshot | None) -> GraphSnapshot:
        async with self.connection(timeout_s=POOL_WAIT_S) as conn:
            version = await retrieval.graph_version(conn)
            if current is not None and version == current.version:
                return current
            edges = await retrieval.co_occurrence_edges(conn)
            popular = await retrieval.category_popularity(conn)
        # 0.03 s for the 93k Scientific edges, 0.1 s for 59k items' popularity: off the loop.
        self._graph = GraphSnapshot(
            version,
            await asyncio.to_thread(CoOccurrenceGraph, *edges),
            await asyncio.to_thread(PopularByCategory, *popular),
        )
        return self._graph

    async def ready(self) -> bool:
        """An active embedding model, the lexicon and the co-occurrence graph loaded (so the
        first calls do not wait for them) and Triton ready."""
        try:
            model = await self.active_model()
            await self.lexicon()
            await self.graph()
        except Unavailable:
            return False
        if self.item_table(model) is None and self._items_load is not None:
            # Loaded too, though calls do not need it: until then each reads its facts from
            # Postgres, and a benchmark's first seconds would measure that. A failed load is
            # logged and retried after ITEM_RETRY_S, not a reason to stay unready.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._items_load)
        return await self.triton.ready()

    async def _query_model(self, triton_model: str) -> str:
        """The query twin of ``triton_model`` when Triton serves one (core/model_interfaces.py),
        else ``triton_model`` itself; looked up again every MODEL_TTL_S."""
        now = time.monotonic()
        known = self._query_models.get(triton_model)
        if known and now - known[0] < MODEL_TTL_S:
            return known[1]
        twin = query_model(triton_model)
        # A short look: this sits on the search path, and the base model answers just as well.
        ready = await self.triton.model_ready(twin, timeout_s=QUERY_MODEL_LOOKUP_S)
        if ready is None:
            # No answer in time (a busy machine) says nothing about the twin: keep what was known
            # and look again on the next call. Taken as "no twin", it sent every call of the next
            # MODEL_TTL_S to the refresh's models (a CI run's AnalyzeReviews did, 2026-12-08).
            return known[1] if known else triton_model
        chosen = twin if ready else triton_model
        self._query_models[triton_model] = (now, chosen)
        return chosen

    async def _embed_query(self, query: str, model: EmbeddingModel, budget: Budget) -> np.ndarray:
        cached = self.cache.get(model.version, query)
        if cached is not None:
            return cached
        triton_model = await self._query_model(model.triton_model)
        vector = (await self.triton.embed([query], timeout_s=max(budget.share(EMBED_SHARE), 0.001), model=triton_model))[0]
        self.cache.put(model.version, query, vector)
        return vector

    async def _rank(self, features: np.ndarray, budget: Budget) -> np.ndarray:
        return await self.triton.rank(features, timeout_s=max(budget.share(RANKER_SHARE / (1 - EMBED_SHARE)), 0.001))

    # --- Search ---------------------------------------------------------------------------

    async def search(self, q: SearchQuery) -> Ranked:
        budget, timer = Budget(q.time_left_s), Timer()
        pool = await self.search_pool(q, budget, timer)
        if pool.facts is None or not pool.facts.ids:
            return Ranked([], degraded=bool(pool.reasons), degraded_reason="; ".join(pool.reasons),
                          model_versions=self._versions(pool.model), stage_ms=timer.stages, expansions=pool.expansions)
        scores, rank_reason = await self._scores(pool.features, budget, timer)
        reasons = pool.reasons + ([rank_reason] if rank_reason else [])
        order = np.argsort(-scores, kind="stable")
        page = order[q.offset : q.offset + q.page_size]
        hits = [self._hit(pool, k, scores, q.explain, rank_reason is None) for k in page]
        return Ranked(
            hits,
            has_more=q.offset + q.page_size < len(order),
            degraded=bool(reasons),
            degraded_reason="; ".join(reasons),
            model_versions=self._versions(pool.model),
            stage_ms=timer.stages,
            expansions=pool.expansions,
        )

    async def search_pool(self, q: SearchQuery, budget: Budget | None = None, timer: Timer | None = None) -> Pool:
        """Everything up to the ranker: candidates, their facts and features (also what
        `aisle train ranker` learns from)."""
        budget, timer = budget or Budget(q.time_left_s), timer or Timer()
        reasons: list[str] = []
        model = await self.active_model()
        async with timer.stage("embed"):
            try:
                qvec = await self._embed_query(q.query, model, budget)
            except TritonInputError as exc:
                raise InvalidInput(str(exc)) from None
            except (TritonError, asyncio.TimeoutError) as exc:
                qvec = None
                reasons.append(f"encoder unavailable ({_short(exc)}): lexical and graph results only")

        lexicon = await self.lexicon()
        stats = lexicon.stats
        corrections = lexicon.corrector.corrections(q.query)
        async with timer.stage("retrieve"):
            lists, scores_by, graph_paths, expansions, lexemes, user = await self._search_candidates(
                q, expand(q.query, corrections), model, qvec, lexicon.index,
                budget.until(OPTIONAL_RETRIEVAL_SHARE), reasons,
            )
        for typed, fixed in corrections.items():
            expansions.setdefault(typed, []).append(f"spelling:{fixed}")
        ids = [i for i, _ in reciprocal_rank_fusion(lists)[:RANKED_POOL]]
        pool = Pool(model, reasons, expansions, graph_paths)
        if not ids:
            return pool
        async with timer.stage("features"):
            profile = user.profile.unit() if user is not None and user.profile is not None else None
            facts = await self._facts(ids, model, q.filters, {"query": qvec, "profile": profile})
            signals = self._signals(True, facts, lists, scores_by, user, graph_paths)
            docs = lexicon.index.lexemes_of(facts.ids)
            missing = [i for i, doc in zip(facts.ids, docs) if doc is None]
            if missing:
                # Items added since the index last looked for changes: read them directly.
                async with self.connection() as conn:
                    found = {d[0]: list(d[1] or ()) for d in await retrieval.documents_of(conn, missing)}
                docs = [found.get(i, []) if doc is None else doc for i, doc in zip(facts.ids, docs)]
            signals.columns.update(lexical_columns(lexemes, docs, stats))
            signals.columns.update(text_columns(q.query, facts.titles))
            signals.columns.update(type_columns(q.query, lexemes, facts.titles, docs))
            brand_match, cat_match = _query_matches(q.query, facts, expansions)
            signals.columns["brand_match"] = brand_match
            signals.columns["category_match"] = np.maximum(signals.column("category_match"), cat_match)
            pool.facts, pool.signals, pool.features = facts, signals, matrix(signals)
        return pool

    async def _search_candidates(
        self, q: SearchQuery, lexical_query: str, model: EmbeddingModel, qvec, index: LexicalIndex,
        optional_until: float, reasons: list[str],
    ):
        """The retrievers' lists; lexical retrieval is required, the others are left out (with
        a reason) when they are not done by ``optional_until``."""

        nearest = qvec is not None and await self._nearest_searchable(q.filters, reasons)

        async def dense():
            if not nearest:
                return []
            return await self._nearest(model, qvec, DENSE_CANDIDATES, q.filters)

        async def lexical():
            async with self.connection() as conn:
                lexemes = await retrieval.query_lexemes(conn, lexical_query)
                if q.filters.empty():
                    return [retrieval.Scored(i, s) for i, s in index.search(lexemes, LEXICAL_CANDIDATES)], lexemes
                hits = index.search(lexemes, FILTERED_LEXICAL_DEPTH)
                score = dict(hits)
                kept = await retrieval.keep_matching(conn, [i for i, _ in hits], q.filters)
                return [retrieval.Scored(i, score[i]) for i in kept[:LEXICAL_CANDIDATES]], lexemes

        async def graph():
            async with self.connection() as conn:
                matches = await retrieval.graph_matches(conn, lexical_query)
                ids = await retrieval.graph_items(conn, [m.node_id for m in matches], GRAPH_CANDIDATES * 20)
            if ids:
                # Order the graph's items by closeness to the query (its own retriever ranking).
                ids = await self._order_by_vector(ids, qvec, model, q.filters, GRAPH_CANDIDATES)
            return matches, ids

        async def user():
            return await self.user_state(q.user_id, model) if q.user_id else None

        (dense_hits, (lex_hits, lexemes), (matches, graph_ids), state) = await asyncio.gather(
            optional("dense retrieval", dense(), optional_until, reasons, []),
            lexical(),
            optional("knowledge-graph expansion", graph(), optional_until, reasons, ([], [])),
            optional("personalisation", user(), optional_until, reasons, None),
        )
        lists = {"dense": [h.item_id for h in dense_hits], "lexical": [h.item_id for h in lex_hits]}
        expansions: dict[str, list[str]] = {}
        for m in matches:
            expansions.setdefault(m.matched, []).append(m.label)
        graph_paths: dict[int, list[str]] = {}
        if graph_ids:
            lists["graph"] = graph_ids
            path = [f"query:{m.matched}" for m in matches[:1]] + [f"{m.kind}:{m.label}" for m in matches[:3]]
            for item_id in graph_ids:
                graph_paths[item_id] = path
        scores_by = {
            "dense": {h.item_id: h.score for h in dense_hits},
            "lexical": {h.item_id: h.score for h in lex_hits},
        }
        return lists, scores_by, graph_paths, expansions, lexemes, state

    async def _nearest(
        self, model: EmbeddingModel, vector: np.ndarray, n: int, filters: Filters,
        exclude: set[int] | frozenset[int] = frozenset(), ef_search: int = EF_SEARCH,
    ) -> list[retrieval.Scored]:
        """The ``n`` items closest to ``vector``: from the graph in memory over the item table
        when it is built and no filter applies (plus an exact scan in Postgres of the items
        added since the table's load, while there are at most STALE_SCAN_MAX), else pgvector's
        HNSW index (an exact scan with filters)."""
        table = self.item_table(model) if filters.empty() and self.settings.gateway_vector_index else None
        found = (
            table.nearest(vector, n, ef_search, exclude)
            if table is not None and len(table.stale) <= STALE_SCAN_MAX else None
        )
        if found is None:
            async with self.connection() as conn:
                return await retrieval.dense(
                    conn, model, vector, n, filters, exclude=list(exclude)[:MAX_EXCLUDED] or None,
                    ef_search=None if ef_search == EF_SEARCH else ef_search,
                )
        scored = [retrieval.Scored(i, s) for i, s in found]
        new = [i for i in table.stale if i not in exclude]
        if new:
            async with self.connection() as conn:
                scored += await retrieval.nearest_among(conn, model, vector, new, n)
            scored = sorted(scored, key=lambda h: (-h.score, h.item_id))[:n]
        return scored

    async def _order_by_vector(self, ids, vector, model, filters, n) -> list[int]:
        table = self.item_table(model)
        ordered = table.closest(ids, vector, n, filters) if table is not None else None
        if ordered is not None:
            return ordered
        async with self.connection() as conn:
            return await retrieval.closest_of(conn, ids, model, vector, n, filters)

    def _signals(self, is_search, facts, lists, scores_by, user: UserState | None, graph_paths) -> Signals:
        n = len(facts.ids)
        s = Signals(n, is_search)
        s.ranks = rank_positions(lists, facts.ids)
        for name, scores in scores_by.items():
            if name in lists:
                s.scores[name] = np.array([scores.get(i, 0.0) for i in facts.ids], dtype=np.float32)
        s.scores["graph"] = np.array([1.0 if i in graph_paths else 0.0 for i in facts.ids], dtype=np.float32)
        if "query" in facts.sims:
            s.columns["dense_sim"] = facts.sims["query"]
        s.columns["popularity"] = np.log1p(facts.popularity)
        s.columns["rating"] = facts.rating
        s.columns["review_count"] = np.log1p(facts.review_count)
        s.columns["sentiment"] = facts.sentiment
        prices = np.array([p if p is not None else 0.0 for p in facts.prices], dtype=np.float32)
        s.columns["price"] = np.log1p(prices)
        s.columns["has_price"] = np.array([p is not None for p in facts.prices], dtype=np.float32)
        if "profile" in facts.sims:
            s.columns["profile_sim"] = facts.sims["profile"]
        if user is not None and user.profile is not None:
            # Once per distinct path: a pool's 300 candidates share ~100 (Scientific users), and 300 lookups
            # took ~0.7 ms of a Recommend's ~10 ms of CPU (cProfile, 2026-12-08).
            by_path: dict[tuple[str, ...], float] = {}
            for path in facts.categories:
                if path not in by_path:
                    by_path[path] = category_affinity(user.profile, path)
            s.columns["category_affinity"] = np.array([by_path[c] for c in facts.categories], dtype=np.float32)
        return s

    async def _scores(self, features, budget, timer) -> tuple[np.ndarray, str | None]:
        """The ranker's scores, or the fused order when the ranker cannot answer in time."""
        async with timer.stage("rank"):
            try:
                return await self._rank(features, budget), None
            except asyncio.TimeoutError:
                reason = "ranker missed its budget: fused retrieval order"
            except TritonError as exc:
                reason = f"ranker unavailable ({_short(exc)}): fused retrieval order"
        return features[:, FEATURE_NAMES.index("rrf")].astype(np.float64), reason

    def _hit(self, pool: Pool, k, scores, explain, ranked) -> Hit:
        facts, features, signals, graph_paths = pool.facts, pool.features, pool.signals, pool.graph_paths
        item = Item(facts.external_ids[k], facts.titles[k], facts.brands[k], facts.categories[k], facts.prices[k])
        explanation = None
        if explain:
            explanation = Explanation(
                retrievers={
                    name: (int(r[k]), float(signals.scores.get(name, np.zeros(signals.n))[k]))
                    for name, r in signals.ranks.items()
                    if r[k] > 0
                },
                features={name: float(features[k, j]) for j, name in enumerate(FEATURE_NAMES)},
                ranker_score=float(scores[k]) if ranked else None,
                graph_path=graph_paths.get(facts.ids[k], []),
            )
        return Hit(item, float(scores[k]), explanation)

    def _versions(self, model: EmbeddingModel) -> dict[str, str]:
        return {"embedding": model.version, "ranker": self.ranker_version}

    # --- Users and Recommend --------------------------------------------------------------

    async def user_state(self, external_id: str, model: EmbeddingModel) -> UserState:
        """The stored profile with every event since its watermark folded in (read-your-writes)."""
        # Two round trips, not four: each costs the gateway ~0.3 ms of CPU in psycopg and the
        # event loop (py-spy). Embeddings and categories come only for the events the stored
        # profile has not folded yet; for a refreshed user that is none.
        async with self.connection() as conn:
            row = await (await conn.execute(
                "SELECT u.id, p.profile, p.weight, p.category_affinity, p.as_of, p.last_event_id "
                "FROM users u LEFT JOIN user_profiles p ON p.user_id = u.id AND p.model_version = %s "
                "WHERE u.external_id = %s",
                (model.version, external_id),
                binary=True,
            )).fetchone()
            if row is None:
                return UserState(None, None, set(), [])
            user_id = row[0]
            profile = Profile(row[1].astype(np.float64), row[2], dict(row[3]), row[4], row[5]) if row[1] is not None else None
            events = await (await conn.execute(
                "SELECT e.id, e.item_id, e.type::text, e.occurred_at, vector_send(ie.embedding), i.category_path, "
                "e.id > %(watermark)s AS unfolded, now() "
                "FROM events e "
                "LEFT JOIN items i ON i.id = e.item_id AND e.id > %(watermark)s "
                "LEFT JOIN item_embeddings ie ON ie.item_id = e.item_id AND ie.model_version = %(version)s "
                " AND e.id > %(watermark)s "
                "WHERE e.user_id = %(user)s ORDER BY e.occurred_at DESC, e.id DESC",
                {"user": user_id, "version": model.version, "watermark": profile.last_event_id if profile else 0},
                binary=True,
            )).fetchall()
        history = {r[1] for r in events}
        recent: list[int] = []
        for r in events:
            if r[1] not in recent:
                recent.append(r[1])
            if len(recent) >= RECENT_ITEMS:
                break
        unfolded = [r for r in reversed(events) if r[6] and r[4] is not None]
        if unfolded:
            vectors = retrieval.stack_vectors([r[4] for r in unfolded], model.dim)
            profile = fold(
                profile,
                [Event(r[0], r[1], r[2], r[3], v, tuple(r[5] or ())) for r, v in zip(unfolded, vectors)],
                self.settings.event_weights, self.settings.event_half_life_days * 86400, unfolded[0][7], model.dim,
            )
        unembedded = sum(1 for r in events if r[6] and r[4] is None)
        return UserState(user_id, profile, history, recent, max((r[0] for r in events), default=0), len(events),
                         unembedded)

    async def recommend(self, q: RecommendQuery) -> Ranked:
        budget, timer = Budget(q.time_left_s), Timer()
        cacheable = self._cacheable(q)
        if cacheable:
            async with timer.stage("cache"):
                model = await self.active_model()
                async with self.connection() as conn:
                    cached = await recommendation_cache.read(
                        conn, q.user_id, model.version, self.ranker_version, q.k
                    )
            if cached is not None:
                return Ranked([Hit(c.item, c.score) for c in cached], model_versions=self._versions(model),
                              stage_ms=timer.stages, cache_hit=True)
        # A cacheable call computes the whole cached list; its first k are the answer.
        k = max(q.k, CACHED_RECOMMENDATIONS) if cacheable else q.k
        pool = await self.recommend_pool(q, timer, budget)
        if pool.facts is None:
            async with timer.stage("popular"):
                ids, hits = await self._popular(pool.model, replace(q, k=k), pool.exclude)
            if cacheable and not pool.reasons:
                await self._remember(pool, ids, [h.score for h in hits], budget)
            return Ranked(hits[: q.k], degraded=bool(pool.reasons), degraded_reason="; ".join(pool.reasons),
                          model_versions=self._versions(pool.model), stage_ms=timer.stages,
                          cache_hit=False if cacheable else None)
        scores, rank_reason = await self._scores(pool.features, budget, timer)
        reasons = pool.reasons + ([rank_reason] if rank_reason else [])
        async with timer.stage("diversify"):
            picked = await self._diversify(pool, scores, k, budget, reasons)
        if cacheable and not reasons:
            await self._remember(pool, [pool.facts.ids[i] for i in picked], [float(scores[i]) for i in picked], budget)
        hits = [self._hit(pool, i, scores, q.explain, rank_reason is None) for i in picked[: q.k]]
        return Ranked(
            hits,
            degraded=bool(reasons),
            degraded_reason="; ".join(reasons),
            model_versions=self._versions(pool.model),
            stage_ms=timer.stages,
            cache_hit=False if cacheable else None,
        )

    def _cacheable(self, q: RecommendQuery) -> bool:
        """Whether the call is a user's plain Recommend, which the cache answers: context
        items, filters and explanations change the pipeline's input or output."""
        return (
            self.settings.recommend_cache_ttl_s > 0 and bool(q.user_id) and not q.context_item_ids
            and q.filters.empty() and not q.explain and q.k <= CACHED_RECOMMENDATIONS
        )

    async def _remember(self, pool: Pool, ids: list[int], scores: list[float], budget: Budget) -> None:
        """Store a clean answer for the user's next plain calls. Best effort: a failed or late
        write costs the next call a pipeline run, never this call its answer."""
        user = pool.user
        if user is None or user.user_id is None or not ids:
            return
        try:
            async with asyncio.timeout(max(budget.left(), 0.001)):
                async with self.connection() as conn:
                    await recommendation_cache.write(
                        conn, user.user_id, pool.model.version, self.ranker_version, user.last_event_id,
                        user.event_count, ids, scores, self.settings.recommend_cache_ttl_s, pool.complete,
                    )
        except (TimeoutError, OutOfTime, Unavailable, psycopg.Error) as exc:
            log.warning("recommendation cache write for user %s failed: %s", user.user_id, _short(exc))

    async def _diversify(self, pool: Pool, scores: np.ndarray, k: int, budget: Budget, reasons: list[str]) -> list[int]:
        """MMR over the best MMR_CANDIDATES_PER_PICK x k by score, scaled by the whole pool's
        range (so it picks as over the whole pool): only their embeddings are read, not the
        pool's 300 (460 KB, ~6 ms of the gateway's CPU to receive), from the item table when it
        holds them all. Without them in time, score order."""
        if not len(scores):  # the filters left nothing of the pool
            return []
        top = np.argsort(-scores, kind="stable")[: MMR_CANDIDATES_PER_PICK * k]
        ids = [pool.facts.ids[i] for i in top]

        async def read():
            try:
                async with self.connection() as conn:
                    return await retrieval.embeddings_of(conn, ids, pool.model)
            except Unavailable:
                reasons.append("diversity left out (database unavailable): score order")
                return None

        table = self.item_table(pool.model)
        if table is not None and (rows := table.rows(ids)).min(initial=0) >= 0:
            vectors = table.embeddings[rows]
        else:
            vectors = await optional("diversity", read(), budget.until(1.0), reasons, None)
        if vectors is None:
            return [int(i) for i in top[:k]]
        span = (float(scores.min()), float(scores.max()))
        return [int(top[i]) for i in mmr(scores[top], vectors, k, MMR_LAMBDA, span)]

    async def recommend_pool(self, q: RecommendQuery, timer: Timer | None = None, budget: Budget | None = None) -> Pool:
        """Candidates and features for a user (and/or context items); ``facts`` stays None when
        there is nothing to personalise on (cold start: the caller serves popular items) or no
        source answered in time (the caller serves popular items, degraded)."""
        timer, budget = timer or Timer(), budget or Budget(q.time_left_s)
        model = await self.active_model()
        async with timer.stage("user"):
            user = await self.user_state(q.user_id, model) if q.user_id else UserState(None, None, set(), [])
            context = await self._internal_ids(q.context_item_ids)
        anchors = context or user.recent
        pool = Pool(model, [], {}, {}, user=user)
        pool.exclude = user.history | set(context)
        if not anchors and (user.profile is None or user.profile.weight <= 0):
            return pool
        async with timer.stage("retrieve"):
            lists, anchor_facts, anchor_vecs, two_hop = await self._recommend_candidates(
                model, user, anchors, pool.exclude, q.filters, budget.until(OPTIONAL_RETRIEVAL_SHARE), pool.reasons
            )
        # The co-occurrence source has loaded the graph by now, unless it failed (then a reason says so).
        graph = self._graph
        pool.complete = not (user.history and (user.unembedded or graph is None or graph.version is None))
        ids = [i for i, _ in reciprocal_rank_fusion(lists) if i not in pool.exclude][:RANKED_POOL]
        if not ids:
            return pool
        async with timer.stage("features"):
            anchor = _mean_unit(anchor_vecs) if len(anchor_vecs) else None
            profile = user.profile.unit() if user.profile is not None and user.profile.weight > 0 else None
            recent = {f"recent_{j}": v for j, v in enumerate(anchor_vecs[1:], start=1)}
            facts = await self._facts(
                ids, model, q.filters,
                {"query": anchor if anchor is not None else profile, "profile": profile,
                 "last": anchor_vecs[0] if len(anchor_vecs) else None, **recent},
            )
            cooc, forward, backward = await self._cooccurrence(anchors, facts.ids)
            signals = self._signals(False, facts, lists, {}, user, {})
            signals.columns.update(cooc)
            sim_last = facts.sims.get("last", np.zeros(len(facts.ids), dtype=np.float32))
            signals.columns["sim_last"] = sim_last
            signals.columns["blend_score"] = blend_column(forward, backward, sim_last)
            signals.columns["brand_share"] = brand_share_column(facts.brands, anchor_facts.brands)
            signals.columns["cooc_two_hop"] = np.log1p(np.array([two_hop.get(i, 0.0) for i in facts.ids], dtype=np.float32))
            if len(anchor_vecs):
                # Item-kNN over every recent item, not only the last: offline it was among the
                # ranker's most used features (docs/models.md). Postgres computed the cosines.
                signals.columns["sim_recent_max"] = np.max(
                    [facts.sims["last"], *(facts.sims[name] for name in recent)], axis=0
                ).astype(np.float32)
            signals.columns["history_length"] = np.full(
                len(facts.ids), np.log1p(len(pool.exclude)), dtype=np.float32
            )
            if len(anchor_facts.ids):
                anchor_cats = set(anchor_facts.categories)
                signals.columns["category_match"] = np.array(
                    [1.0 if c and c in anchor_cats else 0.0 for c in facts.categories], dtype=np.float32
                )
            pool.facts, pool.signals, pool.features = facts, signals, matrix(signals)
        return pool

    async def _internal_ids(self, external_ids) -> list[int]:
        if not external_ids:
            return []
        async with self.connection() as conn:
            rows = await (await conn.execute(
                "SELECT external_id, id FROM items WHERE external_id = ANY(%s)", (list(external_ids),)
            )).fetchall()
        found = dict(rows)
        missing = [e for e in external_ids if e not in found]
        if missing:
            raise NotFound(f"unknown item ids: {', '.join(missing[:5])}")
        return [found[e] for e in external_ids]

    async def _recommend_candidates(self, model, user: UserState, anchors, exclude, filters, optional_until: float, reasons: list[str]):
        """Recommend's sources; each is left out (with a reason) when not done by ``optional_until``."""
        async def by_vector(vector):
            if vector is None or not nearest:
                return []
            return await self._nearest(model, vector, RECOMMEND_DENSE, filters, exclude, ef_search=RECOMMEND_DENSE)

        anchor_facts = await self._facts(anchors, model, with_embeddings=True)
        anchor_vecs = anchor_facts.embeddings[np.linalg.norm(anchor_facts.embeddings, axis=1) > 0]
        profile_vec = user.profile.unit() if user.profile is not None and user.profile.weight > 0 else None
        last_vec = anchor_vecs[0] if len(anchor_vecs) else None
        nearest = (profile_vec is not None or last_vec is not None) and await self._nearest_searchable(filters, reasons)

        async def cooc():
            graph = await self.graph()
            return graph.co_occurrence.expand(anchors, _recency_weights(anchors), TWO_HOP_EXPAND, TWO_HOP_WEIGHT, RECOMMEND_TWO_HOP)

        async def popular_in_categories():
            cats = set()
            for c in anchor_facts.categories:
                if c:
                    cats.add(c[-1])
            if user.profile:
                cats |= {k.split(" > ")[-1] for k in list(user.profile.affinity)[:5]}
            if not cats:
                return []
            return (await self.graph()).popular.top(sorted(cats), RECOMMEND_POPULAR)

        profile_hits, last_hits, around, popular_ids = await asyncio.gather(
            optional("profile similarity", by_vector(profile_vec), optional_until, reasons, []),
            optional("last-item similarity", by_vector(last_vec), optional_until, reasons, []),
            optional("co-occurrence", cooc(), optional_until, reasons, Neighbourhood.empty()),
            optional("popular in category", popular_in_categories(), optional_until, reasons, []),
        )
        reached = np.flatnonzero(around.one_hop > 0)
        one_hop = reached[np.lexsort((around.item_ids[reached], -around.one_hop[reached]))][:RECOMMEND_COOC]
        lists = {
            "profile": [h.item_id for h in profile_hits],
            "last_item": [h.item_id for h in last_hits],
            "cooccurrence": around.item_ids[one_hop].tolist(),
            "two_hop": around.item_ids.tolist(),
            "popular_category": popular_ids,
        }
        two_hop = dict(zip(lists["two_hop"], around.two_hop.tolist()))
        return {k: [i for i in v if i not in exclude] for k, v in lists.items() if v}, anchor_facts, anchor_vecs, two_hop

    async def _cooccurrence(self, anchors: list[int], ids: list[int]):
        """The co-occurrence features (log1p), and the raw recency-weighted weights from the
        recent items to each candidate and back (for blend_score)."""
        graph = await self.graph()
        w = graph.co_occurrence.anchor_weights(anchors, _recency_weights(anchors), ids)
        columns = {"cooc_last": w.last, "cooc_recent": w.recent, "cooc_reverse": w.reverse}
        return (
            {k: np.log1p(v).astype(np.float32) for k, v in columns.items()},
            w.recent.astype(np.float32),
            w.reverse.astype(np.float32),
        )

    async def _popular(self, model, q: RecommendQuery, exclude: set[int]) -> tuple[list[int], list[Hit]]:
        """Cold start: trending items (in the context items' categories when given), with their ids."""
        from psycopg import sql

        from gateway.retrieval import filter_sql

        where, params = filter_sql(q.filters)
        params.update(n=q.k + len(exclude), exclude=list(exclude))
        query = sql.SQL(
            "SELECT i.id FROM items i LEFT JOIN item_stats s ON s.item_id = i.id "
            "WHERE i.id <> ALL(%(exclude)s) {where} ORDER BY coalesce(s.popularity, 0) DESC, i.id LIMIT %(n)s"
        ).format(where=where)
        async with self.connection() as conn:
            ids = [r[0] for r in await (await conn.execute(query, params)).fetchall()][: q.k]
            facts = await retrieval.item_facts(conn, ids, model)
        hits = []
        for k in range(len(facts.ids)):
            item = Item(facts.external_ids[k], facts.titles[k], facts.brands[k], facts.categories[k], facts.prices[k])
            expl = Explanation(retrievers={"popular": (k + 1, float(facts.popularity[k]))}) if q.explain else None
            hits.append(Hit(item, float(facts.popularity[k]), expl))
        return facts.ids, hits

    async def similar_items(self, item_id: str, k: int, filters: Filters, explain: bool, time_left_s=None) -> Ranked:
        """Items like ``item_id``: the Recommend pipeline anchored on that item, with no user."""
        await self._internal_ids([item_id])
        return await self.recommend(
            RecommendQuery(user_id="", context_item_ids=(item_id,), k=k, filters=filters, explain=explain,
                           time_left_s=time_left_s)
        )

    # --- Models straight from Triton ------------------------------------------------------

    async def classify(self, texts: list[str], time_left_s: float | None = None) -> list[Classification]:
        model = await self._query_model(CLASSIFY_PRODUCT.model)
        results = await self._triton_call(self.triton.classify(texts, timeout_s=time_left_s, model=model))
        return [
            Classification(list(zip(c.department, c.department_prob)), list(zip(c.aisle, c.aisle_prob))) for c in results
        ]

    async def analyze(self, texts: list[str], time_left_s: float | None = None) -> list[Sentiment]:
        model = await self._query_model(ANALYZE_SENTIMENT.model)
        results = await self._triton_call(self.triton.sentiment(texts, timeout_s=time_left_s, model=model))
        return [Sentiment(label, prob) for label, prob in results]

    async def _triton_call(self, call: Awaitable):
        try:
            return await call
        except TritonInputError as exc:
            raise InvalidInput(str(exc)) from None
        except (TritonError, asyncio.TimeoutError) as exc:
            raise Unavailable(f"Triton unavailable: {_short(exc)}") from None

    # --- Events ---------------------------------------------------------------------------

    async def track_event(self, user_id: str, item_id: str, event_type: str) -> None:
        async with self.connection() as conn:
            async with conn.transaction():
                row = await (await conn.execute("SELECT id FROM items WHERE external_id = %s", (item_id,))).fetchone()
                if row is None:
                    raise NotFound(f"unknown item id {item_id!r}")
                user = await (await conn.execute(
                    "INSERT INTO users (external_id) VALUES (%s) ON CONFLICT (external_id) "
                    "DO UPDATE SET external_id = EXCLUDED.external_id RETURNING id",
                    (user_id,),
                )).fetchone()
                await conn.execute(
                    "INSERT INTO events (user_id, item_id, type, occurred_at) VALUES (%s, %s, %s, now())",
                    (user[0], row[0], event_type),
                )


def _recency_weights(anchors: list) -> list[float]:
    """Weights of the recent items, most recent first, in co-occurrence sources and features."""
    return [1.0 / (1 + pos) for pos in range(len(anchors))]


def _mean_unit(vectors: np.ndarray) -> np.ndarray:
    mean = vectors.mean(axis=0)
    norm = np.linalg.norm(mean)
    return mean / norm if norm > 0 else mean


def _note_lexicon_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("lexicon load failed (the next search retries): %s", task.exception())


def _note_graph_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("co-occurrence graph load failed (the next Recommend retries): %s", task.exception())


def _short(exc: BaseException) -> str:
    """What went wrong, for clients: the kind of failure, never addresses or internals (the
    full error goes to the log with the request id)."""
    from core.triton import TritonUnavailable

    # A timeout's message is empty; its kind says what happened.
    log.warning("degraded: %s", str(exc) or type(exc).__name__)
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, TritonUnavailable):
        return "not reachable"
    message = str(exc)
    if "unknown model" in message or "not found" in message:
        return "model not loaded"
    return type(exc).__name__


def _query_matches(query: str, facts, expansions: dict[str, list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Whether the query names each item's brand, and whether an expanded category is the item's."""
    q = f" {' '.join(query.lower().split())} "
    brand = np.array(
        [1.0 if b and f" {b.lower()} " in q else 0.0 for b in facts.brands], dtype=np.float32
    )
    labels = {label.lower() for found in expansions.values() for label in found}
    cat = np.array(
        [1.0 if any(c.lower() in labels for c in cats) else 0.0 for cats in facts.categories], dtype=np.float32
    )
    return brand, cat
