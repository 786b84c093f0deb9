"""Embedding model versions: which ones workers fill, which one readers use, and their indexes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import psycopg
from psycopg import sql

from core.model_interfaces import EMBED_TEXT, EMBEDDING_DIM

DEFAULT_VERSION = "all-MiniLM-L6-v2@1"
# HNSW build parameters: pgvector's defaults (m=16, ef_construction=64) reached recall@10 0.99
# against exact search on the Home Depot titles (bench/gateway.py); more only slows the build.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
# Memory for building an HNSW index: the 54,667 x 384 graph (~110 MB) must fit, or the build
# spills and takes minutes instead of seconds.
BUILD_MEMORY = "512MB"


@dataclass(frozen=True)
class EmbeddingModel:
    version: str
    triton_model: str
    dim: int
    status: str


def register(
    conn: psycopg.Connection,
    version: str,
    triton_model: str = EMBED_TEXT.model,
    dim: int = EMBEDDING_DIM,
    activate_if_none: bool = False,
) -> EmbeddingModel:
    """Add a version (status 'building'); the first version of a database becomes 'active'."""
    with conn.transaction():
        has_active = conn.execute("SELECT 1 FROM embedding_models WHERE status = 'active'").fetchone()
        status = "active" if activate_if_none and not has_active else "building"
        conn.execute(
            "INSERT INTO embedding_models (version, triton_model, dim, status, activated_at) "
            "VALUES (%s, %s, %s, %s, CASE WHEN %s = 'active' THEN now() END) ON CONFLICT (version) DO NOTHING",
            (version, triton_model, dim, status, status),
        )
    return get(conn, version)


def get(conn: psycopg.Connection, version: str) -> EmbeddingModel:
    row = conn.execute(
        "SELECT version, triton_model, dim, status FROM embedding_models WHERE version = %s", (version,)
    ).fetchone()
    if row is None:
        raise LookupError(f"unknown embedding model version {version!r}")
    return EmbeddingModel(*row)


def listing(conn: psycopg.Connection) -> list[EmbeddingModel]:
    rows = conn.execute("SELECT version, triton_model, dim, status FROM embedding_models ORDER BY created_at")
    return [EmbeddingModel(*r) for r in rows]


def active(conn: psycopg.Connection) -> EmbeddingModel:
    row = conn.execute(
        "SELECT version, triton_model, dim, status FROM embedding_models WHERE status = 'active'"
    ).fetchone()
    if row is None:
        raise LookupError("no active embedding model: run `aisle db migrate`")
    return EmbeddingModel(*row)


def to_fill(conn: psycopg.Connection) -> list[EmbeddingModel]:
    rows = conn.execute(
        "SELECT version, triton_model, dim, status FROM embedding_models "
        "WHERE status IN ('active', 'building') ORDER BY status, version"
    )
    return [EmbeddingModel(*r) for r in rows]


def activate(conn: psycopg.Connection, version: str) -> None:
    """Switch readers to ``version`` in one transaction; the previous one stays filled (rollback =
    activating it again)."""
    with conn.transaction():
        model = get(conn, version)
        conn.execute("UPDATE embedding_models SET status = 'building' WHERE status = 'active'")
        conn.execute(
            "UPDATE embedding_models SET status = 'active', activated_at = now() WHERE version = %s", (version,)
        )
    ensure_index(conn, model)


def index_name(version: str) -> str:
    return "item_embeddings_hnsw_" + hashlib.sha1(version.encode()).hexdigest()[:12]


def vector_expr(model: EmbeddingModel) -> sql.Composable:
    """The indexed expression: the column cast to the version's dimension."""
    return sql.SQL("(embedding::vector({}))").format(sql.Literal(model.dim))


def has_index(conn: psycopg.Connection, model: EmbeddingModel) -> bool:
    return conn.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s", (index_name(model.version),)).fetchone() is not None


# Transaction advisory lock (with the index name's hash) held while a version's index is built:
# since a tick with nothing pending also makes sure the index exists (a worker may die between
# finishing a run and building it), two workers may get here at once, and two concurrent
# CREATE INDEX IF NOT EXISTS of one name fail on the catalog's unique name.
_INDEX_BUILD_LOCK = 0x484E5357


def ensure_index(conn: psycopg.Connection, model: EmbeddingModel) -> bool:
    """Create the version's partial HNSW index if missing; returns whether it was created.

    Built after a full refresh rather than maintained row by row during it: on 2 cores,
    54,667 384-d vectors inserted in batches of 256 took 1.0 s plus an 8.2 s bulk build, against
    92 s (365 ms per batch) into a live index (pgvector 0.6, clustered synthetic vectors;
    `python bench/hnsw.py`: 8.9 s against 89 s in its latest run). Until it exists the gateway
    leaves unfiltered nearest-neighbour retrieval out, degraded.
    """
    name = index_name(model.version)
    if has_index(conn, model):
        return False
    with conn.transaction():
        locked = conn.execute("SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))", (_INDEX_BUILD_LOCK, name)).fetchone()[0]
        if not locked or has_index(conn, model):
            # Another session builds it (and callers that need it wait for it to appear).
            return False
        conn.execute(sql.SQL("SET LOCAL maintenance_work_mem = {}").format(sql.Literal(BUILD_MEMORY)))
        conn.execute(
            sql.SQL(
                "CREATE INDEX IF NOT EXISTS {} ON item_embeddings USING hnsw ({} vector_cosine_ops) "
                "WITH (m = {}, ef_construction = {}) WHERE model_version = {}"
            ).format(
                sql.Identifier(name),
                vector_expr(model),
                sql.Literal(HNSW_M),
                sql.Literal(HNSW_EF_CONSTRUCTION),
                sql.Literal(model.version),
            )
        )
    return True
