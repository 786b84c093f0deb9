"""workers.loading on a real Postgres: the standard format's malformed rows, idempotent reloads,
updates, event dedupe, the dataset adapters on the real data, and arbitrary text."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from rich.console import Console

from core.catalog import content_hash
from core.settings import REPO_ROOT
from tests.datasets import data_file
from workers.loading import LoadError, LoadProgress, TableCounts, load, rich_progress
from workers.loading.datasets import SCIENTIFIC_ANCHOR, parse_scientific_text


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def query(url: str, sql: str, *params) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params or None).fetchall()


def errors_of(report) -> list[tuple[int, str]]:
    return [(e.line, e.reason) for e in report.errors]


def snapshot(url: str) -> dict[str, list[tuple]]:
    """Every row's id and xmin (a new row version changes it) and every sequence's position."""
    state = {
        table: query(url, f"SELECT id, xmin::text FROM {table} ORDER BY id")
        for table in ("items", "users", "events", "reviews")
    }
    state["items.updated_at"] = query(url, "SELECT id, updated_at FROM items ORDER BY id")
    state["sequences"] = query(url, "SELECT sequencename, last_value FROM pg_sequences ORDER BY 1")
    return state


ITEMS_CSV = (
    b"external_id,title,description,brand,category,price,attributes\n"
    b'A1,Good one,desc,Acme,Tools > Drills,12.5,"{""v"": 1}"\n'
    b"A2,,desc,,,,\n"
    b"A3,Bad price,,,,12;50,\n"
    b"A4,Negative,,,,-1,\n"
    b"A5,Bad json,,,,,{nope\n"
    b"A6,Not an object,,,,,[1]\n"
    b"A7,Too many,,,,,,extra\n"
    b'A8,"Multi\nline title",,,,,\n'
    b"A9,Bad \xff bytes,,,,,\n"
    b"A1,Duplicate,,,,,\n"
    b"A10,Empty level,,,A >  > B,,\n"
    b"A11,NUL \x00 inside,,,,,\n"
    b"A12,Free,,,,0,\n"
)


def test_malformed_item_rows_are_reported_with_line_and_skipped(fresh_database_url, tmp_path):
    # Given a CSV catalog mixing good rows with one malformed row of each kind
    path = write(tmp_path / "catalog.csv", ITEMS_CSV)

    # When it is loaded
    report = load("items", path, fresh_database_url)

    # Then each bad row is reported with its line and reason, and the good ones are stored
    assert errors_of(report) == [
        (3, "title is required"),
        (4, "price '12;50' is not a number"),
        (5, "price '-1' is negative"),
        (6, "attributes is not valid JSON (Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1))"),
        (7, "attributes must be a JSON object, not a list"),
        (8, "expected 7 fields as in the header, found 8"),
        (11, "bytes that are not valid UTF-8"),
        (12, "duplicate external_id 'A1' (first on line 2)"),
        (13, "category 'A >  > B' has an empty level"),
        (14, "title contains a NUL character"),
    ]
    assert all(e.file == str(path) for e in report.errors)
    assert str(report.errors[0]) == f"{path}:3: title is required"
    assert (report.read, report.rejected, report.inserted) == (13, 10, 3)
    rows = query(
        fresh_database_url,
        "SELECT external_id, title, description, brand, category_path, price, attributes, content_hash "
        "FROM items ORDER BY external_id",
    )
    assert rows == [
        ("A1", "Good one", "desc", "Acme", ["Tools", "Drills"], Decimal("12.50"), {"v": 1},
         content_hash("Good one", "desc")),
        ("A12", "Free", "", None, [], Decimal("0.00"), {}, content_hash("Free")),
        ("A8", "Multi\nline title", "", None, [], None, {}, content_hash("Multi\nline title")),
    ]


def test_malformed_jsonl_rows_are_reported_and_skipped(fresh_database_url, tmp_path):
    # Given a JSONL catalog with good objects, broken JSON, wrong types and a blank line
    lines = [
        '{"external_id": 1, "title": "Int id", "category": ["A", "B"], "price": 3, "attributes": {"k": [1, 2]}}',
        '{"external_id": "J2", "title": 5}',
        "not json",
        "[1, 2]",
        '{"external_id": "J5", "title": "x", "category": ["A", 3]}',
        "",
        '{"external_id": "J7", "title": "x", "price": NaN}',
        '{"external_id": "J8", "title": "Path string", "category": "A > B"}',
        '{"external_id": "J9", "title": "lone \\ud800 surrogate"}',
        '{"external_id": "J10", "title": "t", "price": true}',
        '{"external_id": "J11", "title": "t", "attributes": {"k": "\\u0000"}}',
    ]
    path = write(tmp_path / "catalog.jsonl", "\n".join(lines) + "\n")

    # When it is loaded
    report = load("items", path, fresh_database_url)

    # Then the bad lines are reported by number and the good ones stored
    assert [line for line, _ in errors_of(report)] == [2, 3, 4, 5, 7, 9, 10, 11]
    reasons = dict(errors_of(report))
    assert reasons[2] == "title must be a string, not a number"
    assert reasons[3].startswith("invalid JSON")
    assert reasons[4] == "expected a JSON object, found list"
    assert reasons[5] == "category levels must be strings, not a number"
    assert reasons[7] == "invalid JSON (NaN is not valid JSON)"
    assert reasons[9] == "title is not valid Unicode (lone surrogate)"
    assert reasons[10] == "price must be a number, not a boolean"
    assert reasons[11] == "attributes contains a NUL character"
    assert report.read == 10  # the blank line is no row
    assert query(fresh_database_url, "SELECT external_id, category_path, price, attributes FROM items ORDER BY 1") == [
        ("1", ["A", "B"], Decimal("3.00"), {"k": [1, 2]}),
        ("J8", ["A", "B"], None, {}),
    ]


EVENTS_CSV = """event_id,user_id,item_id,type,timestamp
,u1,A1,view,2024-05-01T12:30:00Z
,u1,A1,view,1714566600
,u1,A1,view,2024-05-01 12:30:00
e4,u2,A1,purchase,2024-05-01T14:30:00+02:00
e5,u2,A1,buy,2024-05-01
e6,u2,A1,click,yesterday
e7,u4,NOPE,click,2024-05-01
e8,,A1,click,2024-05-01
e9,u3,A1,cart,1714566600.5
"""


def test_malformed_event_rows_are_reported_and_the_same_event_is_stored_once(fresh_database_url, tmp_path):
    # Given a catalog, and events where one view is written three ways (Z, epoch, no zone)
    write(tmp_path / "items.csv", "external_id,title\nA1,Drill\n")
    load("items", tmp_path / "items.csv", fresh_database_url)
    path = write(tmp_path / "events.csv", EVENTS_CSV)

    # When the events are loaded
    report = load("events", path, fresh_database_url)

    # Then the bad rows are reported, the view is stored once, and users appear on first sight
    assert errors_of(report) == [
        (6, "type 'buy' is not one of view, click, cart, purchase, review"),
        (7, "timestamp 'yesterday' is neither ISO-8601 nor epoch seconds"),
        (8, "unknown item 'NOPE' (load its items first)"),
        (9, "user_id is required"),
    ]
    events = report.tables["events"]
    assert (events.inserted, events.unchanged, report.tables["users"].inserted) == (3, 2, 3)
    utc = timezone.utc
    assert query(
        fresh_database_url,
        "SELECT u.external_id, e.type::text, e.occurred_at, e.source_key FROM events e "
        "JOIN users u ON u.id = e.user_id ORDER BY e.occurred_at, u.external_id",
    ) == [
        ("u1", "view", datetime(2024, 5, 1, 12, 30, tzinfo=utc),
         "derived:" + derived("u1", "A1", "view", "2024-05-01T12:30:00+00:00")),
        ("u2", "purchase", datetime(2024, 5, 1, 12, 30, tzinfo=utc), "e4"),
        ("u3", "cart", datetime(2024, 5, 1, 12, 30, 0, 500000, tzinfo=utc), "e9"),
    ]
    # The row rejected for its unknown item created no user.
    assert query(fresh_database_url, "SELECT external_id FROM users ORDER BY 1") == [("u1",), ("u2",), ("u3",)]

    # When the same file is loaded again, Then nothing is inserted
    again = load("events", path, fresh_database_url)
    assert (again.tables["events"].inserted, again.tables["events"].unchanged) == (0, 5)
    assert query(fresh_database_url, "SELECT count(*) FROM events") == [(3,)]


def derived(*parts: str) -> str:
    """The documented derived key, computed independently of the loader."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


REVIEWS_CSV = """review_id,item_id,user_id,rating,title,text,created_at
r1,A1,u1,5,Great,"Works, really.",2024-05-03
r2,A1,,6,Too good,text,
r3,A1,,,No text,,
r4,NOPE,,,x,text,
,A1,,4.5,,anonymous review,
r6,A1,u9,1,,bad date,not-a-date
"""


def test_malformed_review_rows_are_reported_and_skipped(fresh_database_url, tmp_path):
    # Given an item and reviews with an out-of-range rating, no text, an unknown item, a bad date
    write(tmp_path / "items.csv", "external_id,title\nA1,Drill\n")
    load("items", tmp_path / "items.csv", fresh_database_url)
    path = write(tmp_path / "reviews.csv", REVIEWS_CSV)

    # When the reviews are loaded
    report = load("reviews", path, fresh_database_url)

    # Then those rows are reported and the two good reviews stored (one with a derived id)
    assert errors_of(report) == [
        (3, "rating '6' is outside 0..5"),
        (4, "text is required"),
        (5, "unknown item 'NOPE' (load its items first)"),
        (7, "created_at 'not-a-date' is neither ISO-8601 nor epoch seconds"),
    ]
    rows = query(
        fresh_database_url,
        "SELECT r.external_id, u.external_id, r.rating, r.title, r.body, r.created_at FROM reviews r "
        "LEFT JOIN users u ON u.id = r.user_id ORDER BY r.external_id",
    )
    assert rows[1] == ("r1", "u1", 5.0, "Great", "Works, really.", datetime(2024, 5, 3, tzinfo=timezone.utc))
    assert rows[0][:5] == ("derived:" + derived("A1", "", "anonymous review"), None, 4.5, "", "anonymous review")
    assert query(fresh_database_url, "SELECT external_id FROM users") == [("u1",)]


def test_loading_the_same_files_twice_changes_nothing(fresh_database_url, tmp_path):
    # Given items, events and reviews loaded once
    write(tmp_path / "items.csv", ITEMS_CSV)
    write(tmp_path / "items.jsonl", '{"external_id": "J1", "title": "Json", "category": ["A"], "price": 1.005}\n')
    write(tmp_path / "events.csv", EVENTS_CSV)
    write(tmp_path / "reviews.csv", REVIEWS_CSV)
    files = [("items", "items.csv"), ("items", "items.jsonl"), ("events", "events.csv"), ("reviews", "reviews.csv")]
    for kind, name in files:
        load(kind, tmp_path / name, fresh_database_url)
    before = snapshot(fresh_database_url)
    assert len(before["items"]) == 4 and len(before["events"]) == 3 and len(before["reviews"]) == 2

    # When they are all loaded again
    reports = [load(kind, tmp_path / name, fresh_database_url) for kind, name in files]

    # Then no row is inserted or rewritten, no updated_at moves and no sequence advances
    assert [(r.inserted, r.updated) for r in reports] == [(0, 0)] * 4
    assert [r.unchanged for r in reports] == [3, 1, 5, 2]
    assert snapshot(fresh_database_url) == before


def test_a_load_leaves_fresh_planner_statistics_for_what_it_changed(fresh_database_url, tmp_path):
    # Given a fresh database (its tables never analysed) and items and events to load
    write(tmp_path / "items.csv", ITEMS_CSV)
    write(tmp_path / "events.csv", EVENTS_CSV)

    # When they are loaded
    load("items", tmp_path / "items.csv", fresh_database_url)
    load("events", tmp_path / "events.csv", fresh_database_url)

    # Then the planner knows each changed table's size (never analysed: -1), at once rather
    # than after autovacuum gets round to it
    sizes = dict(query(
        fresh_database_url,
        "SELECT relname, reltuples FROM pg_class WHERE relname IN ('items', 'events', 'users', 'reviews')",
    ))
    assert sizes["items"] == len(query(fresh_database_url, "SELECT 1 FROM items"))
    assert sizes["events"] == len(query(fresh_database_url, "SELECT 1 FROM events")) > 0
    assert sizes["users"] == len(query(fresh_database_url, "SELECT 1 FROM users")) > 0
    # and a table the loads did not touch is left to autovacuum
    assert sizes["reviews"] == -1


def test_a_changed_item_gets_a_new_hash_and_updated_at(fresh_database_url, tmp_path):
    # Given three items loaded
    path = tmp_path / "items.csv"
    write(path, "external_id,title,description,brand,price\nA,Drill,Cordless,Acme,10\nB,Saw,,Acme,5\nC,Hammer,,,1\n")
    load("items", path, fresh_database_url)
    state = "SELECT external_id, content_hash, updated_at, xmin::text FROM items"
    before = {r[0]: r[1:] for r in query(fresh_database_url, state)}

    # When A's title changes, B loses its brand and gets a new price, and C stays the same
    write(path, "external_id,title,description,brand,price\nA,Drill 18V,Cordless,Acme,10\nB,Saw,,,6\nC,Hammer,,,1\n")
    report = load("items", path, fresh_database_url)

    # Then A has the hash of its new text, B keeps its hash, both have a later updated_at, C is untouched
    assert (report.inserted, report.updated, report.unchanged) == (0, 2, 1)
    after = {r[0]: r[1:] for r in query(fresh_database_url, state)}
    assert after["A"][0] == content_hash("Drill 18V", "Cordless") != before["A"][0]
    assert after["B"][0] == before["B"][0]
    assert after["A"][1] > before["A"][1] and after["B"][1] > before["B"][1]
    assert after["C"] == before["C"]
    b = query(fresh_database_url, "SELECT brand, price FROM items WHERE external_id = 'B'")
    assert b == [(None, Decimal("6.00"))]


def test_a_review_with_new_text_loses_its_sentiment(fresh_database_url, tmp_path):
    # Given two scored reviews
    write(tmp_path / "items.csv", "external_id,title\nA1,Drill\n")
    load("items", tmp_path / "items.csv", fresh_database_url)
    path = tmp_path / "reviews.csv"
    write(path, "review_id,item_id,rating,text,created_at\nr1,A1,5,Great drill,2024-05-03\nr2,A1,4,Fine,2024-05-04\n")
    load("reviews", path, fresh_database_url)
    with psycopg.connect(fresh_database_url) as conn:
        conn.execute("UPDATE reviews SET sentiment_label = 'positive', sentiment_prob = 0.9, scored_at = now()")

    # When r1's text changes and r2 only its rating (created_at left out)
    write(path, "review_id,item_id,rating,text\nr1,A1,5,Broke after a week\nr2,A1,3,Fine\n")
    report = load("reviews", path, fresh_database_url)

    # Then r1's sentiment is reset, r2 keeps it, and both keep their created_at
    assert report.tables["reviews"].updated == 2
    assert query(
        fresh_database_url,
        "SELECT external_id, rating, body, sentiment_label, sentiment_prob IS NULL, scored_at IS NULL, created_at "
        "FROM reviews ORDER BY 1",
    ) == [
        ("r1", 5.0, "Broke after a week", None, True, True, datetime(2024, 5, 3, tzinfo=timezone.utc)),
        ("r2", 3.0, "Fine", "positive", False, False, datetime(2024, 5, 4, tzinfo=timezone.utc)),
    ]


@pytest.mark.parametrize(
    ("kind", "name", "content", "options", "message"),
    [
        ("items", "absent.csv", None, {}, "no such file"),
        ("items", "folder", "dir", {}, "is a directory"),
        ("items", "catalog.xlsx", "external_id,title\n", {}, "unknown file type '.xlsx'"),
        ("things", "catalog.csv", "external_id,title\n", {}, "unknown kind 'things'"),
        ("items", "catalog.csv", "external_id,title\n", {"splits": ["train"]}, "items takes no option splits"),
        ("items", "catalog.csv", "id,name\n1,x\n", {}, "missing required columns ['external_id', 'title']"),
        ("items", "catalog.csv", "", {}, "the file is empty"),
        ("events", "events.csv", "user_id,item_id,type,type,timestamp\n", {}, "duplicated columns ['type']"),
    ],
)
def test_a_file_that_cannot_be_loaded_raises_load_error(database_url, tmp_path, kind, name, content, options, message):
    # Given a missing, misnamed or headless file, or a wrong kind or option
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        write(path, content)

    # When it is loaded, Then a LoadError says why, and nothing is stored (the shared session
    # database saves creating one per case)
    before = snapshot(database_url)
    with pytest.raises(LoadError, match=re.escape(message)):
        load(kind, path, database_url, **options)
    assert snapshot(database_url) == before


def test_a_database_without_the_schema_raises_load_error(postgres_server, tmp_path):
    # Given an empty database that was never migrated
    name = f"aisle_unmigrated_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = postgres_server.url.rsplit("/", 1)[0] + f"/{name}"
    path = write(tmp_path / "items.csv", "external_id,title\nA,Drill\n")

    # When a file is loaded into it, Then a LoadError says what to run
    with pytest.raises(LoadError, match=r"no aisle schema .*aisle db migrate"):
        load("items", path, url)


def test_progress_is_reported_per_batch_and_at_the_end(fresh_database_url, tmp_path):
    # Given five items and batches of two
    path = write(tmp_path / "items.csv", "external_id,title\n" + "".join(f"{i},Item {i}\n" for i in range(5)))
    seen: list[LoadProgress] = []

    # When they are loaded with a progress hook
    report = load("items", path, fresh_database_url, progress=seen.append, batch_rows=2)

    # Then the hook sees three batches then the end, rows growing up to the file's size
    assert report.inserted == 5
    assert [(p.rows, p.done) for p in seen] == [(2, False), (4, False), (5, False), (5, True)]
    assert seen[-1].bytes_read == seen[-1].bytes_total == path.stat().st_size

    # And the rich bar draws the rows and the rate
    out = io.StringIO()
    with rich_progress("items", console=Console(file=out, width=120)) as hook:
        load("items", path, fresh_database_url, progress=hook)
    assert re.search(r"items .*100%.* 5 rows +[0-9,]+ rows/s", out.getvalue()), out.getvalue()


def test_the_documented_examples_load(fresh_database_url, tmp_path):
    # Given the CSV and JSON examples of docs/data-format.md
    doc = (REPO_ROOT / "docs" / "data-format.md").read_text()
    blocks = re.findall(r"```(csv|json)\n(.*?)```", doc, re.S)
    assert [f for f, _ in blocks] == ["csv", "json", "csv", "csv"]

    # When each is loaded in order (items, JSONL items, events, reviews)
    kinds = ["items", "items", "events", "reviews"]
    csv_blocks = [b for f, b in blocks if f == "csv"]
    json_block = next(b for f, b in blocks if f == "json")
    write(tmp_path / "items.csv", csv_blocks[0])
    write(tmp_path / "items.jsonl", json_block)
    write(tmp_path / "events.csv", csv_blocks[1])
    write(tmp_path / "reviews.csv", csv_blocks[2])
    names = ["items.csv", "items.jsonl", "events.csv", "reviews.csv"]
    reports = [load(kind, tmp_path / name, fresh_database_url) for kind, name in zip(kinds, names, strict=True)]

    # Then every documented row is valid
    assert [r.rejected for r in reports] == [0, 0, 0, 0]
    assert [r.tables for r in reports] == [
        {"items": TableCounts(inserted=2)},
        {"items": TableCounts(updated=1)},
        {"events": TableCounts(inserted=2), "users": TableCounts(inserted=1)},
        {"reviews": TableCounts(inserted=1)},
    ]


def test_a_value_validation_missed_loses_only_its_row(fresh_database_url, tmp_path, monkeypatch):
    # Given validation that lets NUL through (standing in for any value it might miss)
    from workers.loading import fields

    check_text = fields.check_text
    monkeypatch.setattr(fields, "check_text", lambda value, name: check_text(value.replace("\x00", ""), name))
    path = write(tmp_path / "items.csv", b"external_id,title\nA,Good\nB,NUL \x00 here\nC,Also good\n")

    # When the batch holding it is stored
    report = load("items", path, fresh_database_url)

    # Then Postgres' refusal is reported for that row alone and the others load
    assert [(e.line, e.reason.split(":")[0]) for e in report.errors] == [(3, "refused by Postgres")]
    assert query(fresh_database_url, "SELECT external_id FROM items ORDER BY 1") == [("A",), ("C",)]


# --- the real data of ../shared/data -------------------------------------------------------------


@pytest.mark.data
def test_homedepot_catalog_loads_fast_with_brands_and_reloads_unchanged(fresh_database_url):
    # Given the full Home Depot catalog
    path = data_file("homedepot", "products.csv")

    # When it is loaded
    report = load("homedepot", path, fresh_database_url)

    # Then every product is an item with its title decoded and its brand where one is clear
    assert (report.read, report.inserted, report.rejected) == (54_667, 54_667, 0)
    assert report.seconds < 30, report.summary()  # a few seconds here; 30 catches a row-by-row fallback
    brands = dict(query(
        fresh_database_url,
        "SELECT external_id, brand FROM items WHERE external_id IN ('100001', '100002', '100005', '100006')",
    ))
    assert brands == {"100001": "Simpson Strong-Tie", "100002": None, "100005": "Delta", "100006": "Whirlpool"}
    entities = "SELECT count(*) FROM items WHERE title LIKE '%&amp;%' OR title LIKE '%&#39;%'"
    assert query(fresh_database_url, entities) == [(0,)]
    assert query(fresh_database_url, "SELECT count(*) FROM items WHERE brand = 'Hampton Bay'") == [(1114,)]
    (branded,) = query(fresh_database_url, "SELECT count(brand) FROM items")[0]
    assert 0.75 < branded / 54_667 < 0.85  # measured 80%

    # When it is loaded again, Then nothing changes
    before = snapshot(fresh_database_url)
    again = load("homedepot", path, fresh_database_url)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 54_667)
    assert snapshot(fresh_database_url) == before


@pytest.mark.data
def test_scientific_items_then_interactions_by_split(fresh_database_url):
    # Given the Scientific items loaded
    items = load("scientific-items", data_file("scientific", "items.csv"), fresh_database_url)
    assert (items.inserted, items.rejected) == (4_385, 0)
    rows = dict((r[0], r[1:]) for r in query(
        fresh_database_url,
        "SELECT external_id, title, brand, category_path FROM items "
        "WHERE external_id IN ('B00TNNWMXI', 'B0147CJTSA')",
    ))
    assert rows["B00TNNWMXI"] == (
        "eSUN Bronze filament 1.75mm 0.5kg(1.1lb) Spool for Makerbot, Reprap, UP, Afinia, Flash Forge "
        "and all FDM 3D Printers",
        "eSUN",
        ["Industrial & Scientific", "Additive Manufacturing Products", "3D Printing Supplies", "3D Printing Filament"],
    )
    assert rows["B0147CJTSA"] == ("NinjaFlex TPU Flexible Filament 1.75mm 50g Midnight (black)", "3dprintny.com", [])
    assert query(fresh_database_url, "SELECT count(*) FROM items WHERE category_path = '{}'") == [(134,)]

    # When only the valid split of the interactions is loaded
    path = data_file("scientific", "interactions.csv")
    valid = load("scientific-interactions", path, fresh_database_url, splits=["valid"])

    # Then each user's last interaction in the file is stored, at the anchor
    assert (valid.read, valid.skipped, valid.tables["events"].inserted) == (50_942, 42_500, 8_442)
    assert query(fresh_database_url, "SELECT DISTINCT occurred_at FROM events") == [(SCIENTIFIC_ANCHOR,)]

    # When all splits are loaded afterwards
    full = load("scientific-interactions", path, fresh_database_url)

    # Then the train rows are added and the valid ones found unchanged: 50,942 events of 8,442 users,
    # one day apart in position order
    assert (full.tables["events"].inserted, full.tables["events"].unchanged, full.rejected) == (42_500, 8_442, 0)
    assert query(fresh_database_url, "SELECT count(*), count(DISTINCT user_id) FROM events") == [(50_942, 8_442)]
    history = query(
        fresh_database_url,
        "SELECT e.source_key, e.occurred_at FROM events e JOIN users u ON u.id = e.user_id "
        "WHERE u.external_id = 'ABW8NXS7SV55K' ORDER BY e.occurred_at",
    )
    assert [key for key, _ in history] == [f"scientific:ABW8NXS7SV55K:{p}" for p in range(len(history))]
    last = len(history) - 1
    assert [t for _, t in history] == [SCIENTIFIC_ANCHOR - timedelta(days=last - p) for p in range(last + 1)]

    # And a split the file does not have is an error, not an empty load
    with pytest.raises(LoadError, match=r"no rows in splits \['tran'\]"):
        load("scientific-interactions", path, fresh_database_url, splits="train,tran")


@pytest.mark.data
def test_instacart_and_sentiment_datasets(fresh_database_url):
    # Given the Instacart products and the sentiment reviews
    instacart = load("instacart", data_file("instacart", "products_train.csv"), fresh_database_url)
    sentiment = load("sentiment", data_file("sentiment", "reviews_train.csv"), fresh_database_url)

    # Then every product is an item with [department, aisle], empty for missing/other departments
    assert (instacart.inserted, instacart.rejected) == (39_764, 0)
    assert query(fresh_database_url, "SELECT title, category_path FROM items WHERE external_id = '1'") == [
        ("Chocolate Sandwich Cookies", ["snacks", "cookies cakes"])
    ]
    assert query(
        fresh_database_url,
        # Instacart ids have at most 5 digits; the sentiment asins have 10 characters.
        "SELECT count(*) FROM items WHERE length(external_id) < 6 AND category_path = '{}'",
    ) == [(999 + 442,)]

    # And every sentiment row is a review of an item made from its product
    counts = (sentiment.tables["items"].inserted, sentiment.tables["reviews"].inserted, sentiment.rejected)
    assert counts == (5_031, 6_398, 0)
    assert query(
        fresh_database_url,
        "SELECT i.title, i.category_path, r.rating, r.title FROM reviews r JOIN items i ON i.id = r.item_id "
        "WHERE i.external_id = '0785758968'",
    ) == [("Sphere: Books: Michael Crichton", ["books"], 5.0, "One of the best Crichton novels")]


def test_scientific_text_keeps_periods_inside_titles_and_brands():
    # Given item texts whose brand has ". " in it, or whose category or brand is empty
    # Then the parts are found by the category root and the empty segments
    assert parse_scientific_text("Cover Glass. Industrial & Scientific Fasteners Screws. C. B. Gitty. ") == (
        "Cover Glass", "Industrial & Scientific Fasteners Screws", "C. B. Gitty")
    assert parse_scientific_text("Gypsum- 1 lb. . LD Carlson. ") == ("Gypsum- 1 lb", "", "LD Carlson")
    assert parse_scientific_text("Lugs. Industrial & Scientific Terminals. . ") == (
        "Lugs", "Industrial & Scientific Terminals", "")


# --- arbitrary text ------------------------------------------------------------------------------

# Text that would break naive SQL or COPY: quotes, comments, COPY's NULL marker and end marker,
# its delimiters, backslashes, and lines that look like CSV.
NASTY = ["'; DROP TABLE items; --", '"quoted", comma', "\\N", "\\.", "tab\there", "back\\slash", "a\r\nb"]


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def _first_problem(values: dict[str, str]) -> str | None:
    """The field a load must reject, in the order the fields are read, or None."""
    for name in ("external_id", "title", "description", "brand"):
        value = values[name]
        required = name in ("external_id", "title")
        if "\x00" in value or _has_surrogate(value) or (required and not value.strip()):
            return name
    return None


# Any code point, lone surrogates included, mixed with NUL and the characters CSV, COPY and SQL
# treat specially, as pieces (an alphabet would draw these few among a million code points).
SPECIAL = st.sampled_from(["\x00", "\ud800", "'", '"', "\\", "\n", "\r", "\t", ",", " "])
PIECE = st.text(st.characters(exclude_categories=()), max_size=8) | SPECIAL
TEXT = st.lists(PIECE, max_size=5).map("".join) | st.sampled_from(NASTY)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(["csv", "jsonl"]), external_id=TEXT, title=TEXT, description=TEXT, brand=TEXT)
@example(fmt="csv", external_id="x'1", title=NASTY[0], description="\\N", brand="\\.")
@example(fmt="jsonl", external_id="\\N", title="tab\there", description="a\r\nb", brand="\x00")
def test_arbitrary_text_round_trips_or_is_rejected(
    fresh_database_url, tmp_path_factory, fmt, external_id, title, description, brand
):
    # Given an item whose fields are arbitrary text (CSV cannot carry lone surrogates: JSONL does)
    values = {"external_id": external_id, "title": title, "description": description, "brand": brand}
    if fmt == "csv" and any(_has_surrogate(v) for v in values.values()):
        fmt = "jsonl"
    path = tmp_path_factory.mktemp("text") / f"item.{fmt}"
    if fmt == "csv":
        out = io.StringIO(newline="")
        writer = csv.writer(out)
        writer.writerow(values.keys())
        writer.writerow(values.values())
        write(path, out.getvalue())
    else:
        write(path, json.dumps(values) + "\n")

    # When it is loaded
    report = load("items", path, fresh_database_url)

    # Then it is either stored exactly (an empty optional field is absent) or rejected, naming the field
    problem = _first_problem(values)
    event(f"{fmt}: " + (f"rejected for {problem}" if problem else "stored"))
    if problem is not None:
        assert report.rejected == 1 and report.errors[0].line == 2 - (fmt == "jsonl")
        assert report.errors[0].reason.startswith(problem), (problem, report.errors)
        return
    assert report.rejected == 0, report.errors
    assert query(
        fresh_database_url,
        "SELECT title, description, brand, content_hash FROM items WHERE external_id = %s",
        external_id,
    ) == [(title, description, brand or None, content_hash(title, description))]
