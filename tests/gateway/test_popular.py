"""Popular items per category in memory: against a plain sort, and against Postgres over the
catalog's stored categories and popularity."""

from __future__ import annotations

import asyncio

import numpy as np
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import retrieval
from gateway.popular import PopularByCategory

_items = st.lists(
    st.tuples(st.sampled_from(["drills", "saws", "fans", "tape"]), st.integers(0, 6).map(float)),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(items=_items, labels=st.sets(st.sampled_from(["drills", "saws", "fans", "glue"])), n=st.integers(1, 50))
def test_top_is_the_most_popular_of_the_labels_ties_by_id(items, labels, n):
    # Given items (id = position) in leaf categories with popularity, some tied
    popular = PopularByCategory([c for c, _ in items], np.arange(len(items)), np.array([p for _, p in items]))
    # when the best n of some categories are asked for (one perhaps unknown)
    got = popular.top(labels, n)
    # then they are those categories' items by popularity, lower id first among equals
    expected = sorted((k for k, (c, _) in enumerate(items) if c in labels), key=lambda k: (-items[k][1], k))[:n]
    assert got == expected


@pytest.mark.data
def test_stored_popularity_orders_as_postgres_does(catalog):
    # Given the catalog's stored categories and popularity, loaded as the gateway loads them
    async def load():
        async with await psycopg.AsyncConnection.connect(catalog.url) as conn:
            return await retrieval.category_popularity(conn)

    popular = PopularByCategory(*asyncio.run(load()))
    with psycopg.connect(catalog.url) as conn:
        labels = [r[0] for r in conn.execute(
            "SELECT c.label FROM kg_nodes c JOIN kg_edges e ON e.dst = c.id AND e.kind = 'item_category' "
            "GROUP BY c.label ORDER BY count(*) DESC, c.label LIMIT 3"
        )]
        # when the three largest categories' best 100 are asked of memory and of Postgres
        expected = [r[0] for r in conn.execute(
            "SELECT n.item_id FROM kg_nodes c "
            "JOIN kg_edges e ON e.dst = c.id AND e.kind = 'item_category' "
            "JOIN kg_nodes n ON n.id = e.src JOIN item_stats s ON s.item_id = n.item_id "
            "WHERE c.kind = 'category' AND c.label = ANY(%s) "
            "ORDER BY s.popularity DESC, n.item_id LIMIT 100",
            (labels,),
        )]
    # then both give the same items in the same order
    assert popular.top(labels, 100) == expected
    assert len(expected) == 100
