"""The items' facts in the gateway's memory (gateway/item_table.py) against the SQL they stand
in for, and how the table follows changes, on the gateway test catalog."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.db import configure_async
from core.embeddings import EmbeddingModel
from gateway import item_table, retrieval
from gateway import engine as engine_module
from gateway.engine import ITEM_POLL_S, STALE_SCAN_MAX, Engine
from gateway.model import Filters, Unavailable
from tests.gateway.conftest import gateway_settings, unique

pytestmark = pytest.mark.data


async def _connect(url: str) -> psycopg.AsyncConnection:
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await configure_async(conn)
    return conn


@contextlib.asynccontextmanager
async def _loaded_engine(catalog, triton_url):
    """An engine on the test catalog whose item table (and graph) is loaded, a connection to the
    catalog, and the active model."""
    engine = await Engine.create(gateway_settings(catalog, triton_url))
    conn = await _connect(catalog.url)
    try:
        model = await engine.active_model()
        assert engine.item_table(model) is None
        await engine._items_load
        yield engine, conn, model
    finally:
        await conn.close()
        await engine.close()


async def _model(conn) -> EmbeddingModel:
    return EmbeddingModel(*await (await conn.execute(
        "SELECT version, triton_model, dim, status FROM embedding_models WHERE status = 'active'"
    )).fetchone())


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def db(loop, catalog):
    conn = loop.run_until_complete(_connect(catalog.url))
    yield conn
    loop.run_until_complete(conn.close())


@pytest.fixture(scope="module")
def table(loop, db) -> item_table.ItemTable:
    model = loop.run_until_complete(_model(db))
    at, rows = loop.run_until_complete(item_table.read(db, model.version))
    return item_table.build(rows, model.version, model.dim, at, time.monotonic())


@pytest.fixture(scope="module")
def values(table):
    """Filter values the catalog holds: categories at every level, brands, prices."""
    categories = sorted({c for path in table.categories for c in path})
    brands = sorted({b for b in table.brands if b})
    return categories, brands


def filters_from(values):
    categories, brands = values
    # Case differs from the stored values on purpose: filters match case-insensitively.
    category = st.sampled_from(categories).map(lambda c: c.upper() if len(c) % 2 else c.lower())
    brand = st.sampled_from(brands).map(lambda b: b.swapcase())
    price = st.one_of(st.none(), st.floats(0, 260).map(lambda p: round(p, 2)))
    return st.builds(
        Filters,
        categories=st.lists(category, max_size=2).map(tuple),
        brands=st.lists(brand, max_size=2).map(tuple),
        min_price=price,
        max_price=price,
    )


def test_the_table_answers_what_the_facts_query_answers(loop, db, table, values):
    model = EmbeddingModel(table.version, "", table.embeddings.shape[1], "active")
    ids = table.ids.tolist()

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        picked=st.lists(st.sampled_from(ids), min_size=1, max_size=300, unique=True),
        unknown=st.lists(st.integers(10**9, 10**9 + 50), max_size=3, unique=True),
        filters=filters_from(values),
        source=st.integers(0, len(ids) - 1),
        with_embeddings=st.booleans(),
    )
    def check(picked, unknown, filters, source, with_embeddings):
        # Given candidates (and ids no item has), filters, and vectors to compare them with
        asked = picked + unknown
        vectors = {"query": table.embeddings[source], "profile": table.embeddings[source] * 0.5 + 0.01}
        # when the table and Postgres give their facts
        held, missing = table.facts(asked, filters, vectors, with_embeddings)
        sql = loop.run_until_complete(retrieval.item_facts(db, asked, model, filters, vectors, with_embeddings))
        # then the table leaves only the unknown ids to Postgres, and answers the same rows
        assert missing == unknown
        assert held.ids == sql.ids
        for name in ("external_ids", "titles", "brands", "categories", "prices"):
            assert getattr(held, name) == getattr(sql, name), name
        for name in ("popularity", "rating", "review_count", "sentiment"):
            np.testing.assert_array_equal(getattr(held, name), getattr(sql, name), err_msg=name)
        assert held.sims.keys() == sql.sims.keys()
        for name in sql.sims:
            np.testing.assert_allclose(held.sims[name], sql.sims[name], atol=1e-5, err_msg=name)
        if with_embeddings:
            np.testing.assert_array_equal(held.embeddings, sql.embeddings)
        # and orders them as the graph retriever's SQL does
        for vector in (vectors["query"], None):
            closest = table.closest(picked, vector, 50, filters)
            assert closest == loop.run_until_complete(retrieval.closest_of(db, picked, model, vector, 50, filters))
        if unknown:
            assert table.closest(asked, None, 50, filters) is None

    check()


def test_facts_held_and_read_merge_in_the_order_asked(table):
    # Given facts of the same items split between two sources
    ids = table.ids[:40].tolist()
    vectors = {"query": table.embeddings[0]}
    whole, _ = table.facts(ids, Filters(), vectors, True)
    odd, _ = table.facts(ids[1::2], Filters(), vectors, True)
    even, _ = table.facts(ids[0::2], Filters(), vectors, True)
    # when they are merged back in the order asked
    merged = retrieval.merge_facts(ids, odd, even)
    # then every column is the whole's
    assert merged.ids == whole.ids and merged.titles == whole.titles and merged.prices == whole.prices
    np.testing.assert_array_equal(merged.popularity, whole.popularity)
    np.testing.assert_array_equal(merged.sims["query"], whole.sims["query"])
    np.testing.assert_array_equal(merged.embeddings, whole.embeddings)


def test_a_look_for_changes_reads_again_only_rows_whose_stamps_differ(table):
    # Given a look for changes that finds three items: one unchanged (seen again within the
    # look-back margin), one whose stats changed, and one the table lacks
    same, changed = int(table.ids[0]), int(table.ids[1])
    stamps = {
        same: tuple(int(x) for x in table.stamps[0]),
        changed: tuple(int(x) for x in table.stamps[1] + np.array([0, 1, 0])),
        10**9: (1, -1, -1),
    }
    # when the table sorts them
    held, unknown = table.differing(stamps)
    # then it reads the changed one again and leaves the new one to Postgres
    assert held == [changed] and unknown == [10**9]


def test_a_table_loaded_before_the_catalog_leaves_every_item_to_postgres(table):
    # Given a table read while the catalog was still empty (a gateway started before the loads)
    empty = item_table.build([], table.version, table.embeddings.shape[1], table.polled_at_db, time.monotonic())
    ids = table.ids[:3].tolist()
    stamps = {i: tuple(int(x) for x in s) for i, s in zip(ids, table.stamps[:3])}
    # when the catalog arrives, then the look for changes finds every item new
    assert empty.differing(stamps) == ([], ids)
    # and the table answers for none of them, in facts or in the graph's order
    facts, missing = empty.facts(ids, Filters(), {"query": table.embeddings[0]}, True)
    assert facts.ids == [] and facts.embeddings.shape == (0, table.embeddings.shape[1]) and missing == ids
    assert empty.closest(ids, table.embeddings[0], 10, Filters()) is None


def test_rows_read_again_replace_theirs_in_a_copy(loop, db, table):
    # Given the rows of two held items as Postgres has them now, one with another title
    ids = [int(table.ids[2]), int(table.ids[3])]
    rows = loop.run_until_complete(item_table.rows_of(db, table.version, ids))
    renamed = list(rows[1])
    renamed[2] = "Renamed hinge"
    # when they replace the table's rows (and an item it lacks is marked stale)
    after = table.with_rows([rows[0], tuple(renamed)], [10**9], table.polled_at_db, time.monotonic())
    # then the copy answers the new row, the table it was made from still the old one
    facts, missing = after.facts(ids + [10**9], Filters(), {"query": table.embeddings[0]}, False)
    assert facts.titles == [table.titles[2], "Renamed hinge"] and missing == [10**9]
    assert table.facts(ids, Filters(), {}, False)[0].titles == [table.titles[2], table.titles[3]]
    np.testing.assert_array_equal(after.embeddings[:2], table.embeddings[:2])
    assert 10**9 in after.stale and not table.stale
    # and columns the changed rows left as they were are shared, not copied
    assert after.embeddings is table.embeddings and after.norms is table.norms


def test_the_engine_follows_a_changed_item_once_its_table_looks_for_changes(catalog, triton_url):
    async def scenario():
        async with _loaded_engine(catalog, triton_url) as (engine, conn, model):
            # Given an engine whose item table is loaded, and an item it holds
            item_id, price = (await (await conn.execute(
                "SELECT id, price::float8 FROM items WHERE external_id = %s", (catalog.brand_item,)
            )).fetchone())
            assert (await engine._facts([item_id], model)).prices == [price]
            expensive = Filters(min_price=price + 5000)
            # when the item's price changes in Postgres (as a load stamps it)
            await conn.execute("UPDATE items SET price = price + 10000, updated_at = now() WHERE id = %s", (item_id,))
            try:
                # then within the table's look for changes, facts and filters follow Postgres
                deadline = time.monotonic() + ITEM_POLL_S + 3
                while True:
                    facts = await engine._facts([item_id], model, expensive)
                    if facts.ids == [item_id]:
                        break
                    assert time.monotonic() < deadline, "the changed price never reached the answer"
                    await asyncio.sleep(0.2)
                assert facts.prices == [price + 10000]
                # from the table itself, whose row was read again
                held, missing = engine.item_table(model).facts([item_id], expensive, {}, False)
                assert held.prices == [price + 10000] and not missing
            finally:
                await conn.execute("UPDATE items SET price = %s, updated_at = now() WHERE id = %s", (price, item_id))
            # and an item added after the load is answered at once (from Postgres)
            new_id = (await (await conn.execute(
                "INSERT INTO items (external_id, title, price, content_hash) VALUES (%s, 'Brass cabinet hinge', 3.5, "
                "'\\x00') RETURNING id", (unique("hinge"),)
            )).fetchone())[0]
            try:
                assert (await engine._facts([new_id], model)).titles == ["Brass cabinet hinge"]
            finally:
                await conn.execute("DELETE FROM items WHERE id = %s", (new_id,))

    asyncio.run(scenario())


def test_without_the_table_the_engine_reads_every_fact_from_postgres(catalog, triton_url):
    async def scenario():
        engine = await Engine.create(gateway_settings(catalog, triton_url, gateway_item_table=False))
        try:
            model = await engine.active_model()
            item_id = (await engine._internal_ids([catalog.brand_item]))[0]
            facts = await engine._facts([item_id], model)
            return engine.item_table(model), engine._items_load, facts.ids == [item_id]
        finally:
            await engine.close()

    table, load, answered = asyncio.run(scenario())
    assert table is None and load is None and answered


def test_stamps_are_microseconds_since_the_epoch(loop, db, table):
    # The look for changes compares these to Postgres's updated_at exactly.
    async def updated_at():
        return (await (await db.execute("SELECT updated_at FROM items WHERE id = %s", (int(table.ids[0]),))).fetchone())[0]

    since_epoch = loop.run_until_complete(updated_at()) - datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert table.stamps[0][0] == since_epoch // timedelta(microseconds=1)


def test_a_failed_load_is_retried_after_a_pause_not_by_every_call(catalog, triton_url, monkeypatch):
    reads = []

    async def unreadable(conn, version):
        reads.append(version)
        raise psycopg.OperationalError("the catalog could not be read")

    monkeypatch.setattr(item_table, "read", unreadable)

    async def scenario():
        engine = await Engine.create(gateway_settings(catalog, triton_url))
        try:
            model = await engine.active_model()
            item_id = (await engine._internal_ids([catalog.brand_item]))[0]
            # Given a first load of the table that fails (the database error, as the engine
            # reports it)
            assert engine.item_table(model) is None
            with pytest.raises(Unavailable, match="the catalog could not be read"):
                await engine._items_load
            # when calls keep coming
            answers = []
            for _ in range(20):
                answers.append((await engine._facts([item_id], model)).ids)
            # then they are answered from Postgres, and none of them starts another full read
            return answers
        finally:
            await engine.close()

    answers = asyncio.run(scenario())
    assert all(a == answers[0] for a in answers) and answers[0]
    assert len(reads) == 1


def test_a_gateway_started_before_the_catalog_holds_it_once_it_is_loaded(postgres_server, triton_url, tmp_path):
    from core.settings import load_settings
    from tests.gateway.conftest import create_database
    from tests.workers.conftest import load_homedepot

    url = create_database(postgres_server, unique("aisle_before").replace("-", "_"))

    async def scenario():
        engine = await Engine.create(load_settings(database_url=url, triton_url=triton_url, api_keys=()))
        try:
            # Given an engine whose item table was read while the catalog was empty
            model = await engine.active_model()
            assert engine.item_table(model) is None
            await engine._items_load
            assert len(engine.item_table(model)) == 0
            # when the catalog is loaded
            await asyncio.to_thread(load_homedepot, url, tmp_path, 300)
            ids = await engine._internal_ids(["100001", "100002"])
            # then within a few looks for changes the table holds all of it, and answers for it
            deadline = time.monotonic() + 3 * ITEM_POLL_S + 5
            while True:
                table = engine.item_table(model)
                if table is not None and len(table) == 300:
                    break
                assert time.monotonic() < deadline, f"the table still holds {len(table or ())} items"
                await asyncio.sleep(0.2)
            facts, missing = table.facts(ids, Filters(), {}, False)
            assert facts.ids == ids and not missing
        finally:
            await engine.close()

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def indexed(table) -> item_table.ItemTable:
    return table.indexed()


def test_the_graph_in_memory_answers_what_pgvectors_index_answers(loop, db, indexed):
    model = EmbeddingModel(indexed.version, "", indexed.embeddings.shape[1], "active")
    rng = np.random.default_rng(0)
    held = np.flatnonzero(indexed.norms > 0)
    overlaps = []
    for source in rng.choice(held, 20, replace=False):
        # Given a query near a held item, and items to leave out (a history), the item among them
        query = indexed.embeddings[source] + rng.normal(0, 0.02, indexed.embeddings.shape[1]).astype(np.float32)
        exclude = {int(i) for i in indexed.ids[rng.choice(held, 30)]} | {int(indexed.ids[source])}
        # when the graph and pgvector's index are asked for the 50 nearest
        mine = indexed.nearest(query, 50, 200, exclude)
        sql = loop.run_until_complete(retrieval.dense(db, model, query, 50, Filters(), exclude=list(exclude)))
        # then the graph answers 50, none left out, closest first, with the similarities SQL computes
        assert len(mine) == 50 and not exclude & {i for i, _ in mine}
        sims = [s for _, s in mine]
        assert sims == sorted(sims, reverse=True)
        theirs = {h.item_id: h.score for h in sql}
        for item_id, sim in mine:
            if item_id in theirs:
                assert sim == pytest.approx(theirs[item_id], abs=1e-5)
        overlaps.append(len(theirs.keys() & {i for i, _ in mine}) / len(theirs))
    # and (nearly) the same items: both are approximate
    assert np.mean(overlaps) >= 0.95, overlaps


def test_a_re_embedded_row_is_found_where_its_new_embedding_lies(loop, db, indexed):
    # Given an indexed table, and a held item whose embedding Postgres now holds as another's
    held = np.flatnonzero(indexed.norms > 0)
    row, other = int(held[5]), int(held[9])
    item_id = int(indexed.ids[row])
    (stored,) = loop.run_until_complete(item_table.rows_of(db, indexed.version, [item_id]))
    dim = indexed.embeddings.shape[1]
    re_embedded = list(stored)
    re_embedded[12] = struct.pack(">HH", dim, 0) + indexed.embeddings[other].astype(">f4").tobytes()
    # when the row replaces the table's
    after = indexed.with_rows([tuple(re_embedded)], [], indexed.polled_at_db, time.monotonic())
    # then the copy scores it by its new embedding, though the graph holds the old one
    assert after.moved == {row} and not indexed.moved and after.vectors is indexed.vectors
    assert after.embeddings is not indexed.embeddings
    near_new = dict(after.nearest(indexed.embeddings[other], 5, 200))
    assert near_new[item_id] == pytest.approx(1.0, abs=1e-5)
    near_old = dict(after.nearest(indexed.embeddings[row], 5, 200))
    assert near_old.get(item_id, 0.0) < 0.999
    # and the table it was made from still where the old one lies
    assert dict(indexed.nearest(indexed.embeddings[row], 5, 200))[item_id] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("scan_max", [STALE_SCAN_MAX, 0], ids=["scanned", "read-again"])
def test_an_item_embedded_after_the_load_is_a_nearest_neighbour_within_a_look(catalog, triton_url, monkeypatch, scan_max):
    # Few new items are scanned in Postgres beside the graph; more than STALE_SCAN_MAX send the
    # queries to pgvector and the table (and its graph) is read again.
    monkeypatch.setattr(engine_module, "STALE_SCAN_MAX", scan_max)

    async def scenario():
        async with _loaded_engine(catalog, triton_url) as (engine, conn, model):
            # Given an engine whose item table and graph are loaded
            table = engine.item_table(model)
            assert table.vectors is not None and len(table.vectors) > 0
            vector = table.embeddings[int(np.flatnonzero(table.norms > 0)[0])] * np.float32(-1)
            # when an item is added and embedded after the load, far from every item held
            new_id = (await (await conn.execute(
                "INSERT INTO items (external_id, title, content_hash) VALUES (%s, 'Reversed hinge', '\\x00') "
                "RETURNING id", (unique("reversed"),)
            )).fetchone())[0]
            try:
                await conn.execute(
                    "INSERT INTO item_embeddings (item_id, model_version, content_hash, embedding) "
                    "VALUES (%s, %s, '\\x00', %s)", (new_id, model.version, vector),
                )
                # then within the table's look for changes it is the nearest item to its own vector
                deadline = time.monotonic() + ITEM_POLL_S + 3
                while True:
                    hits = await engine._nearest(model, vector, 10, Filters())
                    if hits and hits[0].item_id == new_id:
                        break
                    assert time.monotonic() < deadline, "the new item never reached nearest-neighbour retrieval"
                    await asyncio.sleep(0.2)
                assert hits[0].score == pytest.approx(1.0, abs=1e-5)
                if scan_max:
                    assert new_id in engine.item_table(model).stale
                else:
                    # and the table read again holds it, in its graph too
                    while new_id not in engine.item_table(model).ids:
                        assert time.monotonic() < deadline + 30, "the table was not read again"
                        await asyncio.sleep(0.2)
                    table = engine.item_table(model)
                    assert new_id not in table.stale and table.nearest(vector, 1, 200)[0][0] == new_id
                # and a user who has it in their history is not offered it
                assert new_id not in {h.item_id for h in await engine._nearest(model, vector, 10, Filters(), {new_id})}
            finally:
                await conn.execute("DELETE FROM items WHERE id = %s", (new_id,))

    asyncio.run(scenario())


def test_a_full_read_of_an_unchanged_catalog_keeps_its_graph(loop, db, indexed):
    # Given the catalog read again in full, unchanged since the graph was built
    at, rows = loop.run_until_complete(item_table.read(db, indexed.version))
    again = item_table.build(rows, indexed.version, indexed.embeddings.shape[1], at, time.monotonic())
    # when it is indexed after the table it replaces, then that table's graph serves on
    assert again.indexed(indexed).vectors is indexed.vectors
    # but a graph some rows moved away from since, or built over other embeddings, is built anew
    moved = replace(indexed, moved=frozenset({0}))
    assert again.indexed(moved).vectors is not indexed.vectors
    shifted = replace(again, embeddings=again.embeddings[::-1].copy())
    rebuilt = shifted.indexed(indexed)
    assert rebuilt.vectors is not indexed.vectors and len(rebuilt.vectors) == len(indexed.vectors)
