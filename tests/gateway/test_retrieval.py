"""The gateway's SQL retrievers against the gateway test catalog."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from gateway import retrieval
from gateway.model import Filters

pytestmark = pytest.mark.data


def test_dense_search_breadth_holds_for_its_own_statement_only(catalog):
    from core.db import EF_SEARCH, configure_async
    from core.embeddings import DEFAULT_VERSION, EmbeddingModel

    async def scenario():
        async with await psycopg.AsyncConnection.connect(catalog.url, autocommit=True) as conn:
            await configure_async(conn)
            # 4,000 rows are few enough for the planner to sort them all; the HNSW scan is what
            # the breadth governs, as on a full catalog, so no other plan is left to it.
            await conn.execute("SET enable_seqscan = off")
            await conn.execute("SET enable_sort = off")
            model = EmbeddingModel(*await (await conn.execute(
                "SELECT version, triton_model, dim, status FROM embedding_models WHERE version = %s", (DEFAULT_VERSION,)
            )).fetchone())
            vector = (await (await conn.execute(
                "SELECT embedding FROM item_embeddings ORDER BY item_id LIMIT 1"
            )).fetchone())[0]
            # Given a gateway connection (HNSW breadth EF_SEARCH) and a query for 150 neighbours
            # when one query narrows its breadth to 40 and the next leaves it alone
            narrow = await retrieval.dense(conn, model, vector, 150, Filters(), ef_search=40)
            wide = await retrieval.dense(conn, model, vector, 150, Filters())
            setting = (await (await conn.execute("SHOW hnsw.ef_search")).fetchone())[0]
            return narrow, wide, setting

    narrow, wide, setting = asyncio.run(scenario())
    # then the narrow scan stopped near 40 neighbours (HNSW returns about its breadth: a little
    # more where identical vectors share a graph element), the next one at the 150 asked for,
    # and the connection's own setting never changed
    assert 40 <= len(narrow) < 50 and len(wide) == 150
    assert setting == str(EF_SEARCH)
