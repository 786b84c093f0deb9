"""When Triton goes away mid-flight: Search still answers from the lexical and graph retrievers,
within the caller's deadline and saying so; the models' own RPCs answer UNAVAILABLE. When a
Postgres query stalls: a retriever the answer can do without is left out at its budget, one the
answer needs ends the call before the caller's deadline; either way the query is cancelled."""

from __future__ import annotations

import time
from contextlib import contextmanager

import grpc
import psycopg
import pytest

from aisle import processes
from tests.gateway.conftest import eventually, gateway_settings, metric, rpc_error, scrape, start_gateway, unique

# These tests serve the real data of ../shared/data (skipped without it).
pytestmark = pytest.mark.data


@pytest.fixture
def own_triton(model_repository, tmp_path):
    """A Triton of this test's own, to stop mid-test (the session's stays up for the others)."""
    ports = processes.TritonPorts.free()
    server = processes.triton(model_repository, ports, tmp_path / "tritonserver.log").start(timeout=300)
    server.url = f"{processes.LOOPBACK}:{ports.grpc}"
    yield server
    server.stop()


def test_search_degrades_to_lexical_when_triton_stops(gateway_loop, catalog, own_triton):
    # Given a gateway whose Triton answers
    gw = start_gateway(gateway_loop, gateway_settings(catalog, own_triton.url))
    try:
        with gw.client(timeout_s=10) as client:
            warm = client.search("cordless drill", page_size=5, explain=True)
            assert "encoder" not in warm.degraded_reason
            assert any(r.name == "dense" for i in warm.items for r in i.explanation.retrievers)

            # When Triton stops
            own_triton.stop()
            before = scrape(gw.metrics_port)

            # then a Search of a query never embedded before still answers within its deadline
            t0 = time.monotonic()
            response = client.search(unique("cordless drill"), page_size=5, explain=True, timeout_s=3.0)
            elapsed = time.monotonic() - t0
            assert elapsed < 3.0
            # from the lexical (and graph) retrievers only, and says so
            assert response.items
            assert response.degraded
            assert "encoder unavailable" in response.degraded_reason
            for item in response.items:
                assert {r.name for r in item.explanation.retrievers} <= {"lexical", "graph"}, item
            assert sum("drill" in i.title.lower() for i in response.items) >= 3

            # and the models' own RPCs, which have no degraded answer, are UNAVAILABLE
            for call in (client.classify_product, client.analyze_reviews):
                err = rpc_error(call, ["a cordless drill with two batteries"])
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
                assert "Traceback" not in err.details()

            # Events need only Postgres: still recorded
            client.track_event(unique("user"), catalog.brand_item, "view")
            # and the service stays SERVING (Search answers, degraded)
            assert client.health() == "SERVING"

            def counted():
                after = scrape(gw.metrics_port)
                # The client retried each idempotent model call on UNAVAILABLE (3 attempts each)
                for rpc in ("ClassifyProduct", "AnalyzeReviews"):
                    tries = metric(after, "grpc_server_handled_total", grpc_method=rpc, grpc_code="UNAVAILABLE") - metric(
                        before, "grpc_server_handled_total", grpc_method=rpc, grpc_code="UNAVAILABLE"
                    )
                    assert tries == 3, rpc
                assert metric(after, "aisle_gateway_degraded_total", rpc="Search") - metric(
                    before, "aisle_gateway_degraded_total", rpc="Search"
                ) >= 1

            eventually(counted)
    finally:
        gw.stop()


def test_search_answers_within_its_deadline_when_triton_hangs(gateway_loop, catalog, hung_triton):
    # Given a gateway whose Triton never answers (so it never turns SERVING)
    gw = start_gateway(gateway_loop, gateway_settings(catalog, hung_triton), wait=False)
    try:
        with gw.client() as client:
            assert client.health("") == "SERVING"
            assert client.health("aisle.v1.Aisle") == "NOT_SERVING"
            # when a caller with a 2 s deadline searches
            t0 = time.monotonic()
            response = client.search(unique("cordless drill"), page_size=5, explain=True, timeout_s=2.0)
            elapsed = time.monotonic() - t0
            # then the pipeline gave up on the encoder and the ranker in time and answered
            assert elapsed < 2.0
            assert response.degraded and "encoder unavailable" in response.degraded_reason
            assert response.items
            assert all({r.name for r in i.explanation.retrievers} <= {"lexical", "graph"} for i in response.items)
    finally:
        gw.stop()


@contextmanager
def locked(url: str, table: str):
    """Another session holds ``table`` exclusively: every query that reads it waits."""
    with psycopg.connect(url) as conn:
        conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        try:
            yield conn
        finally:
            conn.rollback()


def lock_waiters(conn) -> int:
    """Queries of other sessions waiting on a lock in this database."""
    return conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    ).fetchone()[0]


def test_search_leaves_out_a_stalled_graph_query_and_cancels_it(client, catalog):
    # Given the knowledge graph's tables locked by another session (every graph query waits)
    with locked(catalog.url, "kg_nodes") as holder:
        # When a search runs with a 2 s deadline
        t0 = time.monotonic()
        response = client.search(unique("cordless drill"), page_size=5, explain=True, timeout_s=2.0)
        elapsed = time.monotonic() - t0

        # then it answers within the deadline, without graph candidates, and says so
        assert elapsed < 2.0
        assert response.degraded
        assert "knowledge-graph expansion missed its budget" in response.degraded_reason
        assert response.items
        for item in response.items:
            assert "graph" not in {r.name for r in item.explanation.retrievers}, item
        # and the stalled query was cancelled, not left waiting for the lock
        eventually(lambda: assert_no_waiters(holder))

    # and once the lock is gone the same search is whole again
    again = client.search("cordless drill", page_size=5, timeout_s=10.0)
    assert "knowledge-graph" not in again.degraded_reason


def test_search_ends_at_its_deadline_when_a_needed_query_stalls(gateway_loop, catalog, triton_url):
    # Given a gateway that reads the candidates' facts from Postgres (its item table off, as for
    # a catalog too large for its memory), and the item statistics locked: the facts, which
    # every answer needs, wait
    gw = start_gateway(gateway_loop, gateway_settings(catalog, triton_url, gateway_item_table=False))
    try:
        with locked(catalog.url, "item_stats") as holder, gw.client() as client:
            # When a search runs with a 1.5 s deadline
            t0 = time.monotonic()
            err = rpc_error(client.search, unique("cordless drill"), page_size=5, timeout_s=1.5)
            elapsed = time.monotonic() - t0

            # then the gateway itself ends it before the caller's timer: DEADLINE_EXCEEDED, saying why
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()
            assert "database did not answer within the call's deadline" in err.details()
            assert elapsed < 1.5
            # and the query was cancelled in Postgres, not left holding a connection
            eventually(lambda: assert_no_waiters(holder))
    finally:
        gw.stop()


def assert_no_waiters(conn) -> None:
    assert lock_waiters(conn) == 0


def test_nearest_neighbour_retrieval_waits_for_the_index_of_a_new_catalog(gateway_loop, postgres_server, triton_url, tmp_path):
    from core import embeddings
    from core.settings import load_settings
    from tests.gateway.conftest import _refresh, create_database
    from tests.workers.conftest import load_homedepot

    # Given a new catalog, embedded, whose active version has no HNSW index yet (a first refresh
    # builds it only at its end; until then every nearest-neighbour query scans the whole table)
    url = create_database(postgres_server, unique("aisle_noindex").replace("-", "_"))
    load_homedepot(url, tmp_path, 300)
    _refresh(url, triton_url)
    with psycopg.connect(url, autocommit=True) as conn:
        model = embeddings.active(conn)
        conn.execute(f'DROP INDEX "{embeddings.index_name(model.version)}"')
        drill = conn.execute("SELECT external_id FROM items WHERE title ILIKE '%%drill%%' LIMIT 1").fetchone()[0]
    gw = start_gateway(gateway_loop, load_settings(database_url=url, triton_url=triton_url, api_keys=()))
    try:
        with gw.client(timeout_s=10) as client:
            # When a search and a similar-items call arrive
            response = client.search("cordless drill", page_size=5, explain=True)
            similar = client.similar_items(drill, k=5, explain=True)

            # then both answer without the scan, from the other retrievers, and say why
            for answer in (response, similar):
                assert answer.degraded
                assert f"nearest-neighbour retrieval waits for the {model.version} index" in answer.degraded_reason
            assert response.items
            assert all({r.name for r in i.explanation.retrievers} <= {"lexical", "graph"} for i in response.items)
            assert all(not {"profile", "last_item"} & {r.name for r in i.explanation.retrievers} for i in similar.items)

            # and once the index is built, the same gateway answers in full again without a restart
            with psycopg.connect(url, autocommit=True) as conn:
                assert embeddings.ensure_index(conn, model)

            def whole():
                again = client.search("cordless drill", page_size=5, explain=True)
                assert "nearest-neighbour" not in again.degraded_reason
                assert any(r.name == "dense" for i in again.items for r in i.explanation.retrievers)

            # (within the gateway's index poll, not its 10 s trust in the active model)
            eventually(whole, timeout=5.0)
    finally:
        gw.stop()


def test_a_timed_out_stage_is_logged_by_its_kind(caplog):
    import asyncio
    import logging

    from gateway.engine import _short

    # given a stage that ran out of time (asyncio's timeout carries no message)
    with caplog.at_level(logging.WARNING, logger="gateway.engine"):
        # when the engine words it for the client
        reason = _short(asyncio.TimeoutError())
    # then the client reads "timed out" and the log names the kind instead of nothing
    assert reason == "timed out"
    assert "degraded: TimeoutError" in caplog.text
