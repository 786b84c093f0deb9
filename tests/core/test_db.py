"""Migrations: idempotent, recorded, and a clear message where pgvector is missing."""

from __future__ import annotations

import psycopg
import pytest

from core import embeddings
from core.db import DatabaseError, connect, migrate, migrations, prepare

# The machine's own Postgres 15 (no pgvector), as the issue asks to test that message on it.
SYSTEM_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def test_migrate_is_idempotent_and_recorded(fresh_database_url):
    # given a migrated database (the fixture ran every migration once)
    # when migrating again
    ran = migrate(fresh_database_url)
    # then nothing runs and every migration is recorded once
    assert ran == []
    with psycopg.connect(fresh_database_url) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]
    assert names == [name for name, _ in migrations()]


def test_prepare_registers_one_active_embedding_model(fresh_database_url):
    # given a database prepared with the default version (the fixture), prepared again with another
    prepare(fresh_database_url, "model-b@1")
    with connect(fresh_database_url, autocommit=True) as conn:
        models = {m.version: m.status for m in embeddings.listing(conn)}
        # then the first version of a database is active, a later one is built beside it
        assert models == {embeddings.DEFAULT_VERSION: "active", "model-b@1": "building"}
        # and switching is atomic and reversible
        embeddings.activate(conn, "model-b@1")
        assert embeddings.active(conn).version == "model-b@1"
        embeddings.activate(conn, embeddings.DEFAULT_VERSION)
        assert embeddings.active(conn).version == embeddings.DEFAULT_VERSION
        with pytest.raises(LookupError):
            embeddings.activate(conn, "nope")


def test_missing_pgvector_is_reported_clearly():
    # given the machine's own Postgres 15, which has no pgvector
    try:
        psycopg.connect(SYSTEM_POSTGRES, connect_timeout=3).close()
    except psycopg.OperationalError:
        pytest.skip("the machine's Postgres on 127.0.0.1:5432 is not running")
    with psycopg.connect(SYSTEM_POSTGRES, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone():
            pytest.skip("this Postgres has pgvector after all")
    # when migrating it
    with pytest.raises(DatabaseError) as err:
        migrate(SYSTEM_POSTGRES)
    # then the message says what is missing, where, and what to do
    message = str(err.value)
    assert "pgvector extension is not available" in message
    assert "Postgres 15" in message and "127.0.0.1:5432" in message
    assert "aisle up" in message
    # and nothing was created there
    with psycopg.connect(SYSTEM_POSTGRES) as conn:
        assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0] is None


def test_unreachable_database_is_a_clear_error():
    with pytest.raises(DatabaseError) as err:
        connect("postgresql://postgres@127.0.0.1:1/none")
    assert "cannot connect to Postgres at postgres@127.0.0.1:1/none" in str(err.value)


def test_gateway_connections_plan_each_query_with_its_real_arrays(fresh_database_url):
    import asyncio

    from core.db import EF_SEARCH, RANDOM_PAGE_COST, configure_async

    async def settings_after_configure():
        # given an async connection set up as the gateway's pool sets up each of its connections
        async with await psycopg.AsyncConnection.connect(fresh_database_url) as conn:
            await configure_async(conn)
            # when a query with an array parameter has run past psycopg's prepare threshold
            for _ in range(6):
                await conn.execute("SELECT count(*) FROM items WHERE id = ANY(%s)", ([1, 2, 3],))
            rows = [await (await conn.execute(f"SHOW {name}")).fetchone() for name in ("plan_cache_mode", "hnsw.ef_search", "random_page_cost")]
            return [r[0] for r in rows]

    # then Postgres still plans it for its actual arrays (a generic plan cannot see how long
    # an `= ANY($1)` array is: 3.7 -> 11.8 ms for Recommend's co-occurrence lookup) and HNSW
    # searches as wide as the largest neighbour list asked for, and random reads of a cached
    # catalog cost what they cost (item_facts looks its candidates up instead of scanning)
    assert asyncio.run(settings_after_configure()) == ["force_custom_plan", str(EF_SEARCH), str(RANDOM_PAGE_COST)]
