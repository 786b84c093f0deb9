"""The knowledge-graph rebuild: nodes and edges follow the catalog and the events, and a rebuild
that finds nothing new writes nothing."""

from __future__ import annotations

import json

import psycopg

from tests.workers.conftest import rebuild_graph


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


ITEMS = [
    {"external_id": "D-1", "title": "Cordless Drill 18V", "brand": "DEWALT", "category": ["Tools", "Power Tools", "Drills"]},
    {"external_id": "D-2", "title": "Impact Driver", "brand": "DEWALT", "category": ["Tools", "Power Tools", "Drivers"]},
    {"external_id": "B-1", "title": "Drill Bit Set", "brand": "Bosch", "category": ["Tools", "Accessories"]},
]
EVENTS = [
    {"event_id": "e1", "user_id": "u1", "item_id": "D-1", "type": "view", "timestamp": "2024-05-01T12:00:00Z"},
    {"event_id": "e2", "user_id": "u1", "item_id": "B-1", "type": "purchase", "timestamp": "2024-05-01T12:05:00Z"},
]


def _edges(url: str) -> dict[tuple[str, str, str], tuple[float, object]]:
    """(kind, src label, dst label) -> (weight, updated_at)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT e.kind, a.label, b.label, e.weight, e.updated_at FROM kg_edges e "
            "JOIN kg_nodes a ON a.id = e.src JOIN kg_nodes b ON b.id = e.dst"
        ).fetchall()
    return {(k, a, b): (w, t) for k, a, b, w, t in rows}


def test_the_graph_follows_the_catalog_and_an_unchanged_rebuild_rewrites_nothing(fresh_database_url, tmp_path):
    from workers.loading.loader import load

    url = fresh_database_url
    # Given three items and one user's history, and a first rebuild
    assert not load("items", _write(tmp_path / "items.jsonl", ITEMS), url).errors
    assert not load("events", _write(tmp_path / "events.jsonl", EVENTS), url).errors
    rebuild_graph(url)
    first = _edges(url)
    assert ("item_brand", "Cordless Drill 18V", "DEWALT") in first
    assert ("item_category", "Impact Driver", "Drivers") in first
    assert ("category_parent", "Drivers", "Power Tools") in first
    assert first[("co_occurrence", "Cordless Drill 18V", "Drill Bit Set")][0] == 1.0

    # When nothing changed, a rebuild touches no edge
    rebuild_graph(url)
    assert _edges(url) == first

    # When an item is retitled and moves brand, and the history grows
    items = [dict(ITEMS[0], title="Cordless Drill 20V", brand="Makita"), *ITEMS[1:]]
    assert not load("items", _write(tmp_path / "items2.jsonl", items), url).errors
    events = [*EVENTS, {"event_id": "e3", "user_id": "u1", "item_id": "D-2", "type": "view",
                        "timestamp": "2024-05-01T12:10:00Z"}]
    assert not load("events", _write(tmp_path / "events2.jsonl", events), url).errors
    rebuild_graph(url)
    after = _edges(url)

    # then the item's node carries its new title and brand; the old title's edges are gone
    assert ("item_brand", "Cordless Drill 20V", "Makita") in after
    assert not any("Cordless Drill 18V" in key for key in after)
    # the other items' brand edge is the same row as before (not rewritten)
    assert after[("item_brand", "Impact Driver", "DEWALT")] == first[("item_brand", "Impact Driver", "DEWALT")]
    # and the longer history adds its pairs (D-1 -> D-2 two positions apart weighs 1/2)
    assert after[("co_occurrence", "Cordless Drill 20V", "Impact Driver")][0] == 0.5
    assert after[("co_occurrence", "Drill Bit Set", "Impact Driver")][0] == 1.0
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM kg_nodes WHERE kind = 'item'").fetchone()[0] == 3
        # DEWALT still has an item (D-2); Makita is new
        brands = {r[0] for r in conn.execute("SELECT label FROM kg_nodes WHERE kind = 'brand'")}
        assert brands == {"DEWALT", "Bosch", "Makita"}
