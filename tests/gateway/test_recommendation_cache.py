"""The recommendation cache: a user's plain Recommend is stored and read back while fresh; the
user's own events, the TTL, another ranker, and calls the cache cannot answer go to the
pipeline; degraded answers are never stored; the workers' warm-up fills it through the gateway."""

from __future__ import annotations

import contextlib
import threading

import psycopg
import pytest

from core import embeddings
from core.settings import load_settings
from gateway.engine import CACHED_RECOMMENDATIONS
from gateway.recommendation_cache import TTL_SPREAD
from tests.gateway.conftest import gateway_settings, metric, scrape, start_gateway, unique
from workers.jobs import recommendations

# These tests serve the real data of ../shared/data (skipped without it).
pytestmark = pytest.mark.data

# A score no ranker gives: a list carrying it was read from the row this test wrote.
MARKER = 42.0


def cached_row(url: str, user: str):
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT r.item_ids, r.scores, r.last_event_id, (SELECT max(id) FROM events e WHERE e.user_id = u.id) "
            "FROM recommendations r JOIN users u ON u.id = r.user_id WHERE u.external_id = %s", (user,)
        ).fetchone()


def mark(url: str, user: str, set_sql: str = "") -> None:
    """Overwrite the user's stored scores with MARKER (and apply ``set_sql`` to the row)."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE recommendations r SET scores = array_fill(%s::real, ARRAY[cardinality(r.item_ids)])"
            f"{', ' + set_sql if set_sql else ''} FROM users u WHERE u.id = r.user_id AND u.external_id = %s",
            (MARKER, user),
        )


def complete_of(url: str, user: str) -> bool | None:
    """Whether the user's stored list was made from their whole state (None: no list)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT r.complete FROM recommendations r JOIN users u ON u.id = r.user_id WHERE u.external_id = %s", (user,)
        ).fetchone()
    return row[0] if row else None


@contextlib.contextmanager
def unembedded_item(url: str, title: str):
    """An item as the loader writes it, before any refresh job has embedded it (removed after)."""
    from core.catalog import content_hash

    item = unique("unembedded")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO items (external_id, title, content_hash) VALUES (%s, %s, %s)",
                     (item, title, content_hash(title)))
    try:
        yield item
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM items WHERE external_id = %s", (item,))


def scores(response) -> list[float]:
    return [i.score for i in response.items]


def new_reader(client, catalog) -> str:
    user = unique("cached")
    client.track_event(user, catalog.scientific_item, "view")
    return user


def test_a_plain_recommend_is_stored_and_read_back(client, catalog, gateway):
    # Given a user with one event, recommended items for the first time
    user = new_reader(client, catalog)
    before = scrape(gateway.metrics_port)
    first = client.recommend(user, k=10)
    # then the list is stored: the cache's full length, seen up to the user's last event, and
    # the answer is its first ten
    item_ids, stored_scores, last_event, newest = cached_row(catalog.url, user)
    assert len(item_ids) == CACHED_RECOMMENDATIONS
    assert last_event == newest
    assert scores(first) == pytest.approx(stored_scores[:10], rel=1e-6)
    # and it expires within the last fifth of the TTL after it was written
    with psycopg.connect(catalog.url) as conn:
        lifetime = conn.execute(
            "SELECT extract(epoch FROM r.expires_at - r.computed_at) FROM recommendations r "
            "JOIN users u ON u.id = r.user_id WHERE u.external_id = %s", (user,)
        ).fetchone()[0]
    ttl = load_settings().recommend_cache_ttl_s
    assert (1 - TTL_SPREAD) * ttl <= float(lifetime) <= ttl

    # When the stored row is marked and the user asks again, for ten and for five
    mark(catalog.url, user)
    again, five = client.recommend(user, k=10), client.recommend(user, k=5)
    # then both answers come from the row, in its order
    assert [i.id for i in again.items] == [i.id for i in first.items]
    assert scores(again) == [MARKER] * 10
    assert [i.id for i in five.items] == [i.id for i in first.items][:5]
    assert again.model_versions["ranker"] and not again.degraded
    after = scrape(gateway.metrics_port)
    assert metric(after, "aisle_gateway_recommend_cache_total", result="hit") - metric(
        before, "aisle_gateway_recommend_cache_total", result="hit") == 2
    assert metric(after, "aisle_gateway_recommend_cache_total", result="miss") - metric(
        before, "aisle_gateway_recommend_cache_total", result="miss") == 1


def test_the_users_own_event_makes_the_stored_list_stale_at_once(client, catalog):
    # Given a user whose stored list is marked
    user = new_reader(client, catalog)
    bought = client.recommend(user, k=10).items[0].id
    mark(catalog.url, user)
    # When they buy the first recommendation
    client.track_event(user, bought, "purchase")
    # then the very next Recommend runs the pipeline: no marker, the purchase left out
    after = client.recommend(user, k=10)
    assert MARKER not in scores(after)
    assert bought not in [i.id for i in after.items]
    # and stores the list it made, which has seen the purchase
    _, _, last_event, newest = cached_row(catalog.url, user)
    assert last_event == newest


def test_an_event_that_commits_after_a_newer_one_still_makes_the_list_stale(client, catalog):
    # (TrackEvent serialises a user's events on their users row; bulk loads do not.)
    insert = ("INSERT INTO events (user_id, item_id, type, occurred_at) SELECT u.id, i.id, %s, now() "
              "FROM users u, items i WHERE u.external_id = %s AND i.external_id = %s")
    # Given a user, and one of their events whose transaction is still open (its id is taken)
    user = new_reader(client, catalog)
    with psycopg.connect(catalog.url) as late, psycopg.connect(catalog.url, autocommit=True) as other:
        late.execute(insert, ("purchase", user, catalog.brand_item))
        # when a newer event commits first and the list is computed and stored from it
        other.execute(insert, ("view", user, catalog.scientific_item))
        client.recommend(user, k=10)
        mark(catalog.url, user)
        assert scores(client.recommend(user, k=10)) == [MARKER] * 10
        late.commit()
    # then the late event, whose id is below the newest one the list saw, makes it stale
    after = client.recommend(user, k=10)
    assert MARKER not in scores(after)
    assert catalog.brand_item not in [i.id for i in after.items]


def test_a_list_made_before_the_users_items_were_embedded_serves_until_they_are(client, catalog):
    # Given an item the refresh has not embedded yet (the loader wrote it, no job ran since)
    # and a user whose only event is on it
    with unembedded_item(catalog.url, "Benchtop centrifuge rotor for 1.5 ml tubes") as item:
        user = unique("early")
        client.track_event(user, item, "purchase")
        # when they are recommended items, the list is stored as made from part of their state,
        # and serves while the item still has no embedding
        first = client.recommend(user, k=10)
        assert item not in [i.id for i in first.items]
        assert complete_of(catalog.url, user) is False
        with psycopg.connect(catalog.url) as conn:
            assert user not in recommendations.stale_users(conn, 100_000)
        mark(catalog.url, user)
        assert scores(client.recommend(user, k=10)) == [MARKER] * 10
        # When the refresh embeds the item (the same row the embeddings job writes)
        with psycopg.connect(catalog.url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO item_embeddings (item_id, model_version, content_hash, embedding) "
                "SELECT i.id, e.model_version, i.content_hash, e.embedding FROM items i, item_embeddings e "
                "JOIN items s ON s.id = e.item_id AND s.external_id = %s WHERE i.external_id = %s",
                (catalog.scientific_item, item),
            )
            # then the warm-up counts the user as stale, and the next call runs the pipeline
            assert user in recommendations.stale_users(conn, 100_000)
        after = client.recommend(user, k=10)
        assert MARKER not in scores(after)
        # and stores a complete list
        assert complete_of(catalog.url, user) is True


def test_the_warm_up_leaves_users_whose_lists_would_be_made_incomplete(client, catalog):
    # Given two users without a stored list: one whose only event is on an item the refresh
    # has not embedded yet, one whose item is embedded
    with unembedded_item(catalog.url, "Digital caliper with a 150 mm range") as item:
        waiting, ready = unique("waiting"), unique("ready")
        client.track_event(waiting, item, "view")
        client.track_event(ready, catalog.scientific_item, "view")
        with psycopg.connect(catalog.url) as conn:
            # then the warm-up asks for the second only, while both count as stale
            asked = recommendations.stale_users(conn, 100_000)
            assert ready in asked and waiting not in asked
            assert recommendations.stale_count(conn, warmable=True) == len(asked)
            assert recommendations.stale_count(conn) > len(asked)
            # and before the graph's first rebuild (its finished runs hidden in this
            # transaction) it asks for nobody
            conn.execute("UPDATE job_runs SET finished_at = NULL WHERE job = 'graph'")
            assert recommendations.stale_users(conn, 100_000) == []
            assert recommendations.stale_count(conn, warmable=True) == 0
            conn.rollback()
            # and while the version's HNSW index is not built (dropped in this transaction), it
            # asks for nobody either: the gateway's answers would come back degraded
            index = embeddings.index_name(embeddings.active(conn).version)
            assert recommendations.stale_users(conn, 100_000)
            conn.execute(f'DROP INDEX "{index}"')
            assert recommendations.stale_users(conn, 100_000) == []
            assert recommendations.stale_count(conn, warmable=True) == 0
            conn.rollback()


def test_a_list_made_before_the_first_graph_rebuild_is_renewed_as_soon_as_one_exists(gateway_loop, catalog, triton_url):
    hide = ("WITH old AS (SELECT id, finished_at FROM job_runs WHERE job = 'graph' AND finished_at IS NOT NULL) "
            "UPDATE job_runs j SET finished_at = NULL FROM old WHERE j.id = old.id RETURNING old.id, old.finished_at")

    def restore(runs) -> None:
        with psycopg.connect(catalog.url, autocommit=True) as conn:
            for run_id, finished_at in runs:
                conn.execute("UPDATE job_runs SET finished_at = %s WHERE id = %s", (finished_at, run_id))

    # Given a catalog whose graph has never been rebuilt (its finished runs hidden) and a new
    # gateway on it
    with psycopg.connect(catalog.url, autocommit=True) as conn:
        hidden = conn.execute(hide).fetchall()
    assert hidden
    gw = start_gateway(gateway_loop, gateway_settings(catalog, triton_url))
    try:
        user = unique("before-graph")
        with gw.client(timeout_s=30) as c:
            c.track_event(user, catalog.scientific_item, "view")
            # when a user is recommended items, their list is stored as made without the graph
            c.recommend(user, k=10)
            assert complete_of(catalog.url, user) is False
            # and when the rebuild finishes, the very next call (well inside the gateway's graph
            # poll interval) runs with the graph and stores a complete list
            restore(hidden)
            c.recommend(user, k=10)
            assert complete_of(catalog.url, user) is True
    finally:
        restore(hidden)
        gw.stop()


@pytest.mark.parametrize("stale", ["expires_at = now() - interval '1 second'", "ranker_version = 'ranker@0'"])
def test_an_old_row_or_another_rankers_is_not_served(client, catalog, stale):
    user = new_reader(client, catalog)
    client.recommend(user, k=10)
    mark(catalog.url, user, stale)
    assert MARKER not in scores(client.recommend(user, k=10))


@pytest.mark.parametrize("call", [
    dict(k=CACHED_RECOMMENDATIONS + 1),
    dict(k=10, explain=True),
    dict(k=10, max_price=10_000.0),
])
def test_calls_the_cache_cannot_answer_run_the_pipeline(client, catalog, call):
    # Given a user with a marked stored list
    user = new_reader(client, catalog)
    client.recommend(user, k=10)
    mark(catalog.url, user)
    # then more items than it holds, an explanation, or a filter come from the pipeline
    response = client.recommend(user, **call)
    assert response.items and MARKER not in scores(response)
    # and such calls leave the stored row alone
    assert cached_row(catalog.url, user)[1] == [MARKER] * CACHED_RECOMMENDATIONS


def test_a_degraded_answer_is_not_stored(gateway_loop, catalog, hung_triton, client):
    # Given a gateway whose Triton never answers (the ranker misses its budget)
    gw = start_gateway(gateway_loop, gateway_settings(catalog, hung_triton), wait=False)
    try:
        user = new_reader(client, catalog)
        with gw.client() as hung:
            response = hung.recommend(user, k=10, timeout_s=2.0)
        # then the answer comes in retrieval order, degraded, and nothing is stored
        assert response.degraded and response.items
        assert cached_row(catalog.url, user) is None
    finally:
        gw.stop()


def test_the_warm_up_asks_the_gateway_for_stale_users(client, catalog, gateway, triton_url):
    settings = load_settings(database_url=catalog.url, triton_url=triton_url, gateway_address=gateway.address,
                             api_keys=())
    with psycopg.connect(catalog.url, autocommit=True) as conn:
        # Given users without a stored list, the first of them in the warm-up's order
        stale_before = recommendations.stale_count(conn)
        first = recommendations.stale_users(conn, 3)
        assert len(first) == 3
        # When a warm-up of three runs
        asked: list[str] = []

        def recommend(user: str) -> None:
            asked.append(user)
            client.recommend(user)

        result = recommendations.warm(conn, settings, recommend, limit=3)
        # then it asked for exactly those users, and each now has a fresh list
        assert sorted(asked) == sorted(first)
        assert result == recommendations.WarmResult(asked=3, failed=0, stored=3)
        assert all(cached_row(catalog.url, u) is not None for u in first)
        assert recommendations.stale_count(conn) == stale_before - 3
        assert not set(first) & set(recommendations.stale_users(conn, 3))

        # and a warm-up that finds another one running does nothing
        held = threading.Event()
        release = threading.Event()

        def hold() -> None:
            with psycopg.connect(catalog.url, autocommit=True) as other:
                other.execute("SELECT pg_advisory_lock(%s, %s)", recommendations._LOCK)
                held.set()
                release.wait(10)

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            assert held.wait(10)
            assert recommendations.warm(conn, settings, recommend, limit=3).busy
            assert len(asked) == 3
        finally:
            release.set()
            holder.join(10)


def test_a_warm_up_whose_answers_are_degraded_stops_and_stores_nothing(catalog, gateway_loop, hung_triton, triton_url):
    # Given the gateway's Triton hangs, so every answer comes back degraded
    gw = start_gateway(gateway_loop, gateway_settings(catalog, hung_triton), wait=False)
    settings = load_settings(database_url=catalog.url, triton_url=triton_url, api_keys=())
    try:
        with psycopg.connect(catalog.url, autocommit=True) as conn, gw.client(timeout_s=2.0) as hung:
            result = recommendations.warm(conn, settings, hung.recommend, limit=3 * recommendations.GIVE_UP_AFTER)
        # then the warm-up gives up after one chunk of such answers and says it stored nothing
        # (the CLI stops, the task queues no follow-up)
        assert result == recommendations.WarmResult(asked=recommendations.GIVE_UP_AFTER, failed=0, stored=0)
    finally:
        gw.stop()


def test_status_counts_the_stale_users_and_the_oldest_ones_age(client, catalog, triton_url):
    from workers import dispatch
    from workers.jobs.base import Deps

    settings = load_settings(database_url=catalog.url, triton_url=triton_url, api_keys=())
    user = new_reader(client, catalog)
    client.recommend(user, k=10)
    with psycopg.connect(catalog.url, autocommit=True) as conn:
        before = recommendations.backlog(conn)
        # Given a user with a fresh list, when they act
        client.track_event(user, catalog.brand_item, "view")
        after = recommendations.backlog(conn)
        # then one more user is stale, as the warm-up counts them
        assert after.pending == before.pending + 1 == recommendations.stale_count(conn)
        assert after.oldest is not None
        # and the status table (and the workers' metrics) carry the row
        [row] = [f for f in dispatch.freshness(Deps(conn, settings)) if f.job == "recommendations"]
        assert row.pending == after.pending and row.lag_s > 0 and row.last_run is None
