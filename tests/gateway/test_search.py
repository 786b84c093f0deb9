"""Search through a real gateway over real data: results, explanations, pages, filters, and
SQL metacharacters treated as data."""

from __future__ import annotations

import grpc
import psycopg
import pytest

from gateway.protos.aisle.v1 import aisle_pb2 as pb
from tests.gateway.conftest import rpc_error

# These tests serve the real data of ../shared/data (skipped without it).
pytestmark = pytest.mark.data


def test_search_finds_products_for_a_query(client):
    # When a customer searches for a cordless drill
    response = client.search("cordless drill", page_size=5)
    # then five products come back, best first, most of them drills
    assert len(response.items) == 5
    scores = [i.score for i in response.items]
    assert scores == sorted(scores, reverse=True)
    assert sum("drill" in i.title.lower() for i in response.items) >= 3, [i.title for i in response.items]
    for item in response.items:
        assert item.id and item.title
        # explanations and timings only when asked for
        assert not item.HasField("explanation")
    assert not response.stage_ms
    # and the answer says which models made it
    assert response.model_versions["embedding"] == "all-MiniLM-L6-v2@1"
    assert "ranker" in response.model_versions
    # a degraded answer always says why
    assert response.degraded == bool(response.degraded_reason)


def test_explain_returns_retrievers_features_and_stage_timings(client):
    response = client.search("cordless drill", page_size=5, explain=True)
    assert response.items
    for item in response.items:
        e = item.explanation
        # each item says which retrievers proposed it, at which rank
        assert e.retrievers, item.title
        assert {r.name for r in e.retrievers} <= {"dense", "lexical", "graph"}
        assert all(r.rank >= 1 for r in e.retrievers)
        # and the ranker's features by name
        assert {"dense_sim", "bm25", "rrf", "popularity"} <= set(e.features)
        # a ranker score exactly when the ranker answered
        assert e.HasField("ranker_score") == ("ranker unavailable" not in response.degraded_reason
                                              and "ranker missed" not in response.degraded_reason)
    # the dense retriever found at least one of them (the encoder answered)
    assert any(r.name == "dense" for i in response.items for r in i.explanation.retrievers)
    # per-stage timings of the pipeline
    assert {"embed", "retrieve", "features", "rank"} <= set(response.stage_ms)
    assert all(ms >= 0 for ms in response.stage_ms.values())


def test_a_query_naming_a_brand_is_expanded_through_the_graph(client, catalog):
    # Given the brand with the most products in the catalog
    response = client.search(f"{catalog.brand} products", page_size=10, explain=True)
    # then the query expansion names that brand
    labels = {label.lower() for e in response.expansions for label in e.labels}
    assert catalog.brand.lower() in labels, list(response.expansions)
    # and the graph retriever brought its items in, with the path that led there
    graph_items = [i for i in response.items if any(r.name == "graph" for r in i.explanation.retrievers)]
    assert graph_items
    assert any(p.lower() == f"brand:{catalog.brand.lower()}" for p in graph_items[0].explanation.graph_path)


def test_pages_follow_each_other_without_overlap(client):
    # Given the first two pages of a query, page by page
    first = client.search("drill bit set", page_size=7)
    assert first.next_page_token
    second = client.search("drill bit set", page_size=7, page_token=first.next_page_token)
    # then they are the first 14 results, in order, without repeats
    whole = client.search("drill bit set", page_size=14)
    assert [i.id for i in first.items] + [i.id for i in second.items] == [i.id for i in whole.items]


def test_the_last_page_has_no_next_token(client, catalog):
    # Given a query whose filtered results fit in one page (the brand has fewer than 100 items)
    assert catalog.brand_count < 100
    response = client.search(catalog.brand, brands=[catalog.brand], page_size=100)
    assert 0 < len(response.items) <= catalog.brand_count
    # then there is no next page
    assert response.next_page_token == ""


def test_pages_reach_the_end_of_the_ranked_pool(client):
    # Following tokens ends (the pool is the first 500 results) with every id once
    ids = [i.id for i in client.search_all("steel", page_size=100, max_pages=10)]
    assert 100 < len(ids) <= 500
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    "change",
    [
        {"query": "hammer"},
        {"brands": ["BEHR"]},
        {"max_price": 50.0},
        {"user_id": "someone-else"},
    ],
    ids=["other-query", "other-filters", "other-price", "other-user"],
)
def test_a_page_token_of_another_request_is_invalid(client, change):
    first = client.search("cordless drill", page_size=5)
    kwargs = {"query": "cordless drill", "page_size": 5, "page_token": first.next_page_token, **change}
    err = rpc_error(client.search, **kwargs)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in err.details()


def test_brand_and_price_filters_hold_for_every_result(client, catalog):
    # When searching within one brand and a price range
    response = client.search(catalog.brand, brands=[catalog.brand.upper()], min_price=10, max_price=120, page_size=50)
    # then every result is of that brand (case-insensitive) and in the range
    assert response.items
    for item in response.items:
        assert item.brand.lower() == catalog.brand.lower()
        assert item.HasField("price") and 10 <= item.price <= 120
    # and an item of the brand outside the range is not among them
    outside = client.search(catalog.brand, brands=[catalog.brand], min_price=200, page_size=50)
    assert {i.id for i in outside.items}.isdisjoint({i.id for i in response.items})
    assert all(i.price >= 200 for i in outside.items)


def test_category_filter_matches_any_level_of_the_path(client, catalog):
    # (the query names the category, so the graph retriever brings its items in)
    response = client.search(catalog.scientific_category, categories=[catalog.scientific_category.lower()], page_size=20)
    assert response.items
    for item in response.items:
        assert catalog.scientific_category in item.category_path


def test_searching_as_a_user_personalises_without_failing(client, catalog):
    response = client.search("lab supplies", user_id=catalog.user_id, page_size=5, explain=True)
    assert len(response.items) == 5
    # the user's profile reaches the ranker's features
    assert any(i.explanation.features["profile_sim"] != 0 for i in response.items)


SQL_QUERIES = [
    "'; DROP TABLE items; --",
    "drill' OR '1'='1",
    'drill" OR 1=1 --',
    "drill %",
    "_",
    "\\",
    "$$ drill $$",
    "drill & | ! ( ) :* <-> <2>",
    "drill); DELETE FROM items WHERE (1=1",
    "%(q)s %s {where}",
]


@pytest.mark.parametrize("query", SQL_QUERIES)
def test_sql_metacharacters_in_queries_are_data(client, catalog, query):
    # When a query is full of SQL and tsquery syntax
    response = client.search(query, page_size=5)
    # then it is searched as text: an answer (maybe empty), and the catalog is intact
    assert isinstance(response, pb.SearchResponse)
    with psycopg.connect(catalog.url) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == catalog.items


@pytest.mark.parametrize("value", ["x' OR '1'='1", "%", "_%", "') OR TRUE --", "%(f_brands)s"])
def test_sql_metacharacters_in_filters_match_nothing(client, catalog, value):
    # A filter value that would match everything if it were spliced into SQL matches nothing
    for kwargs in ({"brands": [value]}, {"categories": [value]}):
        response = client.search("drill", page_size=10, **kwargs)
        assert list(response.items) == [], (kwargs, [i.title for i in response.items])
    rec = client.recommend(catalog.user_id, k=5, brands=[value])
    assert list(rec.items) == []
    with psycopg.connect(catalog.url) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == catalog.items


def test_an_item_loaded_while_serving_is_found_by_its_words_within_seconds(client, catalog, tmp_path):
    from gateway.engine import LEXICAL_POLL_S
    from tests.gateway.conftest import eventually, unique
    from workers.loading import load

    # Given a serving gateway whose lexical index was built before the item existed
    assert client.search("cordless drill", page_size=1).items
    word = unique("quuxolator").replace("-", "")
    item_id = unique("new-item")
    path = tmp_path / "items.csv"
    path.write_text(f"external_id,title\n{item_id},Cordless {word} with battery\n")
    # when the item is loaded (not yet embedded: only its words can find it)
    assert not load("items", path, catalog.url).errors

    # then a search for its invented word finds it within a few polls of the index
    def found(text):
        assert [i.id for i in client.search(text, page_size=5).items][:1] == [item_id]

    eventually(lambda: found(word), timeout=LEXICAL_POLL_S * 3)
    # and once retitled, its new word finds it and the old one no longer does
    renamed = word.replace("quux", "zort")
    path.write_text(f"external_id,title\n{item_id},Cordless {renamed} with battery\n")
    assert not load("items", path, catalog.url).errors
    eventually(lambda: found(renamed), timeout=LEXICAL_POLL_S * 3)
    assert item_id not in [i.id for i in client.search(word, page_size=10).items]


def test_a_poll_after_a_catalog_import_reads_only_what_changed_since(gateway, gateway_loop, catalog, monkeypatch):
    from gateway import engine as engine_module

    engine = gateway.server.engine
    # Given items stamped just before a full build of the lexical index (as right after an
    # import), more of them than an overlay takes
    monkeypatch.setattr(engine_module, "OVERLAY_MAX", 10)
    with psycopg.connect(catalog.url) as conn:
        recent = [r[0] for r in conn.execute(
            "UPDATE items SET updated_at = now() WHERE id IN (SELECT id FROM items ORDER BY id LIMIT 50) RETURNING id"
        )]
    built = gateway_loop.run(engine._load_lexicon())
    assert set(recent) <= built.stamps.keys()

    # When the index looks for changes and none came since
    polled = gateway_loop.run(engine._poll_lexicon(built))
    # then it keeps its base (no full rebuild) and reads no document again
    assert polled.loaded_at == built.loaded_at
    assert polled.changed == {}

    # and when three of those items change, exactly those three are read into the overlay
    with psycopg.connect(catalog.url) as conn:
        conn.execute("UPDATE items SET updated_at = now() WHERE id = ANY(%s)", (recent[:3],))
    polled = gateway_loop.run(engine._poll_lexicon(polled))
    assert polled.loaded_at == built.loaded_at
    assert sorted(polled.changed) == sorted(recent[:3])


def test_a_full_lexicon_build_puts_the_index_beyond_the_cyclic_collector(gateway, gateway_loop):
    import gc

    engine = gateway.server.engine
    # given a process whose objects are all back within the collector's reach
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    # when the lexical index is built in full
    built = gateway_loop.run(engine._load_lexicon())
    # then its objects (at least a posting list per document) sit in the permanent generation:
    # a full collection, 64-88 ms with them, no longer walks them
    with psycopg.connect(engine.settings.database_url) as conn:
        documents = conn.execute("SELECT count(*) FROM items").fetchone()[0]
    assert gc.get_freeze_count() > documents > 0
    assert gc.get_count()[2] == 0


def test_a_full_lexicon_build_warms_every_title_s_cached_forms(gateway, gateway_loop):
    from core.features import _padded_title, title_head

    engine = gateway.server.engine
    # Given empty per-title caches, as in a fresh gateway
    _padded_title.cache_clear()
    title_head.cache_clear()
    # when the lexical index is built in full
    gateway_loop.run(engine._load_lexicon())
    # then every catalog title's normalised text and product-type head are already cached
    with psycopg.connect(engine.settings.database_url) as conn:
        titles = {r[0] for r in conn.execute("SELECT title FROM items")}
    assert _padded_title.cache_info().currsize == title_head.cache_info().currsize == len(titles) > 1000
