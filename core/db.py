"""Postgres access: connections with pgvector registered, and the schema migrations."""

from __future__ import annotations

from importlib import resources

import numpy as np
import psycopg
from pgvector.psycopg import register_vector, register_vector_async
from psycopg.adapt import Loader
from psycopg.pq import Format

# Advisory lock key serialising migrations across processes ("aisle" in ASCII).
MIGRATION_LOCK = 0x6169736C65


class DatabaseError(RuntimeError):
    """A problem with the database the user must fix (pgvector missing, bad schema)."""


class DatabaseUnavailable(DatabaseError):
    """Postgres cannot be reached right now: worth retrying."""


def connect(url: str, autocommit: bool = False, register: bool = True) -> psycopg.Connection:
    try:
        conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to Postgres at {_redact(url)}: {str(exc).strip()}") from None
    if register:
        try:
            register_vector(conn)
        except psycopg.ProgrammingError:
            conn.close()
            raise DatabaseError(
                f"the database at {_redact(url)} has no vector type: run `aisle db migrate` first"
            ) from None
        _load_vectors_as_numpy(conn)
    return conn


# HNSW search breadth for the gateway's connections: at least the most neighbours a query asks
# for (200: Search's and Recommend's dense candidates); set once per connection instead of per
# query (a SET LOCAL costs three round trips). 300 neighbours at 300 took 2.9 ms a query, 200
# at 200 1.8 ms (300 real queries, sequential, 2026-11-29).
EF_SEARCH = 200
RANDOM_PAGE_COST = 1.1


async def configure_async(conn: psycopg.AsyncConnection) -> None:
    """Pool ``configure`` hook for the gateway's AsyncConnectionPool."""
    await register_vector_async(conn)
    _load_vectors_as_numpy(conn)
    await conn.execute(f"SET hnsw.ef_search = {EF_SEARCH}")
    # psycopg prepares a query after its fifth run, and Postgres then switches to a generic plan
    # blind to the size of `= ANY($1)` arrays: Recommend's co-occurrence lookup (10 anchors x 300
    # candidates) went from 3.7 to 11.8 ms a query that way (/tmp probe, 2026-11-29). Custom
    # plans keep the parse cached and plan each run with its real arrays.
    await conn.execute("SET plan_cache_mode = force_custom_plan")
    # The gateway reads a catalog that lives in shared buffers, where a random page costs what a
    # sequential one does; at the default 4 the planner hash-joined item_facts' 300 candidates
    # to a sequential scan of all 54,667 item_stats rows: 6.4 ms a Search against 1.5 ms with
    # index lookups at 1.1, the usual value for cached or SSD data (EXPLAIN ANALYZE, 2026-11-29).
    await conn.execute(f"SET random_page_cost = {RANDOM_PAGE_COST}")


class _VectorTextLoader(Loader):
    format = Format.TEXT

    def load(self, data) -> np.ndarray:
        return np.array(bytes(data)[1:-1].split(b","), dtype=np.float32)


class _VectorBinaryLoader(Loader):
    format = Format.BINARY

    def load(self, data) -> np.ndarray:
        # pgvector's binary form: uint16 dimensions, uint16 unused, then big-endian float32s.
        dim = int.from_bytes(bytes(data[:2]), "big")
        return np.frombuffer(data, dtype=">f4", count=dim, offset=4).astype(np.float32)


def _load_vectors_as_numpy(conn) -> None:
    """Read vector columns as float32 numpy arrays (pgvector's own loader makes Vector objects)."""
    oid = conn.adapters.types["vector"].oid
    conn.adapters.register_loader(oid, _VectorTextLoader)
    conn.adapters.register_loader(oid, _VectorBinaryLoader)


def _redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    host = info.get("host", "")
    return f"{info.get('user', '')}@{host}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def migrations() -> list[tuple[str, str]]:
    files = resources.files("core") / "migrations"
    return sorted((f.name, f.read_text()) for f in files.iterdir() if f.name.endswith(".sql"))


def migrate(url: str) -> list[str]:
    """Apply the migrations not yet applied, in order, each in its own transaction.

    Idempotent; concurrent callers serialise on an advisory lock. Returns what ran.
    """
    with connect(url, autocommit=True, register=False) as conn:
        if not conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone():
            version = conn.execute("SHOW server_version").fetchone()[0]
            raise DatabaseError(
                f"the pgvector extension is not available on Postgres {version} at {_redact(url)}: "
                "install pgvector (https://github.com/pgvector/pgvector) on that server, "
                "or unset AISLE_DATABASE_URL so `aisle up` starts its embedded Postgres with pgvector"
            )
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}
            ran = []
            for name, text in migrations():
                if name in done:
                    continue
                with conn.transaction():
                    conn.execute(text)
                    conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
                ran.append(name)
            return ran
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))




def prepare(url: str, embedding_model: str) -> list[str]:
    """Migrate, and register the default embedding model version (active in a new database)."""
    from core import embeddings

    ran = migrate(url)
    with connect(url, autocommit=True) as conn:
        embeddings.register(conn, embedding_model, activate_if_none=True)
    return ran
