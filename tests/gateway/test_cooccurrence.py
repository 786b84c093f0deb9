"""The in-memory co-occurrence graph: against the same computation written plainly in Python
(over random graphs and over the catalog's stored edges), and reloaded after a graph rebuild."""

from __future__ import annotations

import asyncio
import csv
from collections import defaultdict

import numpy as np
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.settings import load_settings
from gateway import retrieval
from gateway.cooccurrence import CoOccurrenceGraph
from tests.workers.conftest import rebuild_graph


def _plain(edges: list[tuple[int, int, float]], anchors: list[int], weights: list[float], expand: int, alpha: float):
    """One hop, two hops and their order, with dicts."""
    both: dict[int, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for a, b, w in edges:
        both[a][b] += w
        both[b][a] += w
    one: dict[int, float] = defaultdict(float)
    for a, w in zip(anchors, weights):
        for b, e in both.get(a, {}).items():
            one[b] += w * e
    top = sorted((i for i in one if one[i] > 0), key=lambda i: (-one[i], i))[:expand]
    two: dict[int, float] = defaultdict(float)
    for t in top:
        for b, e in both[t].items():
            two[b] += one[t] * e
    order = sorted(set(one) | set(two), key=lambda i: (-(one.get(i, 0) + alpha * two.get(i, 0)), i))
    return one, two, order


def _graph(edges) -> CoOccurrenceGraph:
    src, dst, w = zip(*edges) if edges else ((), (), ())
    return CoOccurrenceGraph(np.array(src), np.array(dst), np.array(w, dtype=np.float32))


# Small integer weights keep every sum exact in float64, so orders can be compared exactly.
_edges = st.dictionaries(
    st.tuples(st.integers(1, 30), st.integers(1, 30)).filter(lambda p: p[0] != p[1]),
    st.integers(1, 5).map(float),
    max_size=80,
).map(lambda d: [(a, b, w) for (a, b), w in d.items()])


@settings(max_examples=200, deadline=None)
@given(edges=_edges, anchors=st.lists(st.integers(1, 32), min_size=1, max_size=5, unique=True),
       expand=st.integers(0, 6), n=st.integers(1, 40))
def test_expand_matches_plain_python(edges, anchors, expand, n):
    # Given a random directed graph and anchors (some perhaps not in it), recency-weighted
    weights = [1.0 / (1 + k) for k in range(len(anchors))]
    one, two, order = _plain(edges, anchors, weights, expand, 0.25)
    # when the graph expands them
    got = _graph(edges).expand(anchors, weights, expand, 0.25, n)
    # then the items, their order (ties by item id) and both scores are the plain computation's
    assert got.item_ids.tolist() == order[:n]
    assert got.one_hop.tolist() == pytest.approx([one.get(i, 0.0) for i in order[:n]])
    assert got.two_hop.tolist() == pytest.approx([two.get(i, 0.0) for i in order[:n]])


@settings(max_examples=200, deadline=None)
@given(edges=_edges, anchors=st.lists(st.integers(1, 32), max_size=5, unique=True),
       ids=st.lists(st.integers(1, 32), max_size=12))
def test_anchor_weights_follow_edge_directions(edges, anchors, ids):
    # Given a random directed graph, anchors most recent first and candidate ids
    recency = [1.0 / (1 + k) for k in range(len(anchors))]
    forward = {(a, b): w for a, b, w in edges}
    # when the features' weights are read
    w = _graph(edges).anchor_weights(anchors, recency, ids)
    # then "recent" follows anchor -> candidate edges, "reverse" candidate -> anchor ones, and
    # "last" the most recent anchor's edges alone
    for k, c in enumerate(ids):
        assert w.recent[k] == pytest.approx(sum(r * forward.get((a, c), 0) for a, r in zip(anchors, recency)))
        assert w.reverse[k] == pytest.approx(sum(r * forward.get((c, a), 0) for a, r in zip(anchors, recency)))
        assert w.last[k] == (forward.get((anchors[0], c), 0) if anchors else 0)


def test_an_empty_graph_answers_nothing():
    # Given no edges at all (a catalog without purchase histories)
    graph = _graph([])
    # then expansion finds nothing and every weight is zero
    assert len(graph.expand([1, 2], [1.0, 0.5], 50, 0.1, 300)) == 0
    w = graph.anchor_weights([1, 2], [1.0, 0.5], [3, 4])
    assert not w.recent.any() and not w.reverse.any() and not w.last.any()


@pytest.mark.data
def test_stored_edges_expand_as_plain_python(catalog):
    # Given the catalog's stored co-occurrence edges, and the two items with most neighbours
    with psycopg.connect(catalog.url) as conn:
        edges = [tuple(r) for r in conn.execute(
            "SELECT na.item_id, nb.item_id, e.weight FROM kg_edges e "
            "JOIN kg_nodes na ON na.id = e.src JOIN kg_nodes nb ON nb.id = e.dst WHERE e.kind = 'co_occurrence'"
        )]
    degree = defaultdict(int)
    for a, b, _ in edges:
        degree[a] += 1
        degree[b] += 1
    anchors = sorted(degree, key=lambda i: (-degree[i], i))[:2]

    async def load():
        async with await psycopg.AsyncConnection.connect(catalog.url) as conn:
            return await retrieval.co_occurrence_edges(conn)

    # when the gateway's loader reads them into a graph and expands 5 neighbours
    graph = CoOccurrenceGraph(*asyncio.run(load()))
    got = graph.expand(anchors, [1.0, 0.5], 5, 0.1, 10_000)
    # then every edge was read, and scores agree with Python over the same rows (edge weights
    # are stored as float4: sums agree to ~1e-7)
    assert graph.edges == len(edges) > 1000
    one, two, _ = _plain(edges, anchors, [1.0, 0.5], 5, 0.1)
    assert set(got.item_ids.tolist()) == set(one) | set(two)
    ids = got.item_ids.tolist()
    assert got.one_hop.tolist() == pytest.approx([one.get(i, 0.0) for i in ids], rel=1e-6)
    assert got.two_hop.tolist() == pytest.approx([two.get(i, 0.0) for i in ids], rel=1e-6)
    # and some items are reached through a neighbour alone
    assert ((got.one_hop == 0) & (got.two_hop > 0)).any()


def _write_histories(folder, histories: dict[str, list[str]]) -> tuple:
    items = sorted({i for h in histories.values() for i in h})
    with open(folder / "items.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_idx", "asin", "text"])
        w.writerows((k, a, f"Item {a}. Industrial & Scientific Lab Supplies. Acme. ") for k, a in enumerate(items))
    with open(folder / "interactions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_idx", "reviewer_id", "position", "item_idx", "asin", "loo_split"])
        for u, (user, history) in enumerate(sorted(histories.items())):
            w.writerows((u, user, p, items.index(a), a, "train") for p, a in enumerate(history))
    return folder / "items.csv", folder / "interactions.csv"


def test_engine_reloads_the_graph_after_a_rebuild(postgres_server, triton_url, tmp_path, monkeypatch):
    from gateway import engine as engine_module
    from gateway.engine import Engine
    from tests.gateway.conftest import create_database
    from workers.loading import load

    # Given a catalog where one user bought A then B, and the graph built from it
    url = create_database(postgres_server, "aisle_graph_reload")
    for kind, path in zip(("scientific-items", "scientific-interactions"),
                          _write_histories(tmp_path, {"u1": ["A", "B"], "u2": ["C", "D"]})):
        assert not load(kind, path, url).errors
    rebuild_graph(url)
    with psycopg.connect(url) as conn:
        ids = dict(conn.execute("SELECT external_id, id FROM items").fetchall())

    async def neighbours(engine, item):
        graph = (await engine.graph()).co_occurrence
        return set(graph.expand([ids[item]], [1.0], 0, 0.0, 10).item_ids.tolist())

    async def scenario():
        engine = await Engine.create(load_settings(database_url=url, triton_url=triton_url))
        try:
            before = await neighbours(engine, "A")
            # when a new purchase (A then C) is loaded and the graph job rebuilds
            _write_histories(tmp_path, {"u3": ["A", "C"]})
            assert not load("scientific-interactions", tmp_path / "interactions.csv", url).errors
            await asyncio.to_thread(rebuild_graph, url)
            unpolled = await neighbours(engine, "A")
            monkeypatch.setattr(engine_module, "GRAPH_POLL_S", 0.0)
            await engine.graph()  # notices the newer run; its task reloads
            await engine._graph_load
            after = await neighbours(engine, "A")
            return before, unpolled, after
        finally:
            await engine.close()

    before, unpolled, after = asyncio.run(scenario())
    # then the engine serves the old graph until it polls, and the new edge after
    assert before == unpolled == {ids["B"]}
    assert after == {ids["B"], ids["C"]}
