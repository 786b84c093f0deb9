"""Recommend, SimilarItems and TrackEvent over the Scientific purchase histories."""

from __future__ import annotations

import psycopg
import pytest

from tests.gateway.conftest import unique

# These tests serve the real data of ../shared/data (skipped without it).
pytestmark = pytest.mark.data


def test_recommend_answers_k_items_the_user_has_not_bought(client, catalog):
    # Given the user with the longest purchase history
    response = client.recommend(catalog.user_id, k=10, explain=True)
    # then ten distinct items come back, none of them already bought
    ids = [i.id for i in response.items]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert set(ids).isdisjoint(catalog.user_items)
    # each explained by the candidate sources that proposed it
    sources = {"profile", "last_item", "cooccurrence", "two_hop", "popular_category"}
    for item in response.items:
        assert {r.name for r in item.explanation.retrievers} <= sources
        assert item.explanation.retrievers, item.id
    assert {"user", "retrieve", "features", "rank"} <= set(response.stage_ms)
    assert response.model_versions["embedding"]


def test_recommend_for_an_unknown_user_falls_back_to_popular_items(client):
    response = client.recommend(unique("new-user"), k=5, explain=True)
    assert len(response.items) == 5
    assert all(i.explanation.retrievers[0].name == "popular" for i in response.items)
    # popular first
    scores = [i.score for i in response.items]
    assert scores == sorted(scores, reverse=True)


def test_recommend_anchored_on_items_in_view_leaves_them_out(client, catalog):
    response = client.recommend(unique("browser"), context_item_ids=[catalog.scientific_item], k=10)
    ids = [i.id for i in response.items]
    assert len(ids) == 10
    assert catalog.scientific_item not in ids
    # most share the anchor's top category
    assert sum(catalog.scientific_category in i.category_path for i in response.items) >= 3


def test_a_purchase_is_excluded_from_the_very_next_recommend(client, catalog):
    # Given a new user who viewed one item and is recommended others
    user = unique("reader")
    client.track_event(user, catalog.scientific_item, "view")
    before = client.recommend(user, k=10)
    assert before.items
    bought = before.items[0].id
    # When they buy the first recommendation
    client.track_event(user, bought, "purchase")
    # then the very next Recommend (no refresh job in between) leaves it out
    after = client.recommend(user, k=10)
    assert after.items
    assert bought not in [i.id for i in after.items]
    assert catalog.scientific_item not in [i.id for i in after.items]
    # and the event is stored as sent
    with psycopg.connect(catalog.url) as conn:
        rows = conn.execute(
            "SELECT i.external_id, e.type::text FROM events e JOIN users u ON u.id = e.user_id "
            "JOIN items i ON i.id = e.item_id WHERE u.external_id = %s ORDER BY e.id",
            (user,),
        ).fetchall()
    assert rows == [(catalog.scientific_item, "view"), (bought, "purchase")]


def test_every_event_type_is_recorded(client, catalog):
    user = unique("typist")
    for event_type in ("view", "click", "cart", "purchase", "review"):
        client.track_event(user, catalog.brand_item, event_type)
    with psycopg.connect(catalog.url) as conn:
        types = [r[0] for r in conn.execute(
            "SELECT e.type::text FROM events e JOIN users u ON u.id = e.user_id WHERE u.external_id = %s ORDER BY e.id",
            (user,),
        )]
    assert types == ["view", "click", "cart", "purchase", "review"]


def test_similar_items_are_like_the_item_and_exclude_it(client, catalog):
    response = client.similar_items(catalog.scientific_item, k=8, explain=True)
    ids = [i.id for i in response.items]
    assert len(ids) == 8 and catalog.scientific_item not in ids
    assert sum(catalog.scientific_category in i.category_path for i in response.items) >= 3
    assert response.stage_ms


def test_similar_items_honour_filters(client, catalog):
    response = client.similar_items(catalog.brand_item, k=5, brands=[catalog.brand], max_price=200)
    assert response.items
    for item in response.items:
        assert item.brand.lower() == catalog.brand.lower() and item.price <= 200
        assert item.id != catalog.brand_item
