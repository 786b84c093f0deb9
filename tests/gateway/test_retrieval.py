"""The gateway's SQL retrievers against the gateway test catalog, checked against the same
computation in Python over the stored edges."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import psycopg
import pytest

from gateway import retrieval

pytestmark = pytest.mark.data


def _edges(url: str) -> tuple[dict[int, dict[int, float]], dict[int, int]]:
    """Co-occurrence as an undirected weighted graph over item ids (both directions summed),
    and each item's graph node (the retriever breaks ties between neighbours by node)."""
    graph: dict[int, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    with psycopg.connect(url) as conn:
        for a, b, w in conn.execute(
            "SELECT na.item_id, nb.item_id, e.weight FROM kg_edges e "
            "JOIN kg_nodes na ON na.id = e.src JOIN kg_nodes nb ON nb.id = e.dst WHERE e.kind = 'co_occurrence'"
        ):
            graph[a][b] += w
            graph[b][a] += w
        node = dict(conn.execute("SELECT item_id, id FROM kg_nodes WHERE kind = 'item'").fetchall())
    return graph, node


async def _co_occurrence(url: str, *args, **kwargs):
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return await retrieval.co_occurrence(conn, *args, **kwargs)


def test_co_occurrence_scores_one_and_two_hops_in_both_directions(catalog):
    # Given the two items with the most co-occurrence neighbours, weighted 1 and 0.5
    graph, node = _edges(catalog.url)
    anchors = sorted(graph, key=lambda i: (-len(graph[i]), i))[:2]
    weights = [1.0, 0.5]
    # when the retriever expands the 5 strongest one-hop neighbours
    rows = {r.item_id: r for r in asyncio.run(_co_occurrence(catalog.url, anchors, weights, expand=5, alpha=0.1, n=10_000))}
    # then each item's one-hop weight is the anchors' weighted edges to it, either direction
    one = defaultdict(float)
    for a, w in zip(anchors, weights):
        for b, e in graph[a].items():
            one[b] += w * e
    top = sorted(one, key=lambda i: (-one[i], node[i]))[:5]
    two = defaultdict(float)
    for t in top:
        for b, e in graph[t].items():
            two[b] += one[t] * e
    # (edge weights are stored as float4, so sums agree to ~1e-7)
    assert set(rows) == set(one) | set(two)
    for item, row in rows.items():
        assert row.one_hop == pytest.approx(one.get(item, 0.0), rel=1e-6), item
        assert row.two_hop == pytest.approx(two.get(item, 0.0), rel=1e-6), item
    # and some items are reached through a neighbour alone
    assert any(r.one_hop == 0 and r.two_hop > 0 for r in rows.values())


def test_co_occurrence_orders_by_one_hop_plus_alpha_two_hops_and_caps(catalog):
    # Given the item with the most co-occurrence neighbours
    graph, _ = _edges(catalog.url)
    anchor = max(graph, key=lambda i: (len(graph[i]), -i))
    # when at most 7 are asked for
    every = asyncio.run(_co_occurrence(catalog.url, [anchor], [1.0], expand=3, alpha=0.1, n=10_000))
    rows = asyncio.run(_co_occurrence(catalog.url, [anchor], [1.0], expand=3, alpha=0.1, n=7))
    # then the best 7 of them come, by one hop + 0.1 x two hops
    assert len(every) > 7 and [r.item_id for r in rows] == [r.item_id for r in every[:7]]
    combined = [r.one_hop + 0.1 * r.two_hop for r in rows]
    assert combined == sorted(combined, reverse=True)
