"""Injection: SQL metacharacters, tsquery syntax and JSON in queries, filters and ids are data.

A gateway of its own connects with ``log_statement=all`` (a per-connection option of its
database URL; nothing else logs more), so the Postgres log shows every statement it sends and,
on separate ``DETAIL: parameters:`` lines, the values bound to it. Each hostile value carries a
marker: the marker may appear in parameter lines only, never in a statement's text or in an
error, and every call answers a sane code with the value round-tripping intact where it is
stored."""

from __future__ import annotations

import re
import urllib.parse
import uuid
from pathlib import Path

import grpc
import psycopg
import pytest

from core.settings import load_settings
from tests.gateway.conftest import eventually, start_gateway

# These tests serve the real data of ../shared/data (skipped without it).
pytestmark = pytest.mark.data

MARK = f"inj{uuid.uuid4().hex[:10]}"
PAYLOADS = [
    "'; DROP TABLE items; --",
    "x' OR '1'='1",
    "\\'; SELECT pg_sleep(5); --",
    ") UNION SELECT external_id, 1 FROM users --",
    "$1 $$ $q$ %s %(q)s {} {0}",
    "a & | ! :* <-> ( )",
    "drill:* & !(saw | 'hammer') <2> paint:A",
    '{"$ne": null, "brand": {"$gt": ""}}',
    "[1, 2, {\"a\": \"b'c\"}]",
    "E'\\\\x41' || chr(65) /* c */ -- d",
]
HOSTILE = [f"{MARK} {payload}" for payload in PAYLOADS]

# A log record starts with log_line_prefix ('%m [%p] ': time, zone, process id) and a severity.
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \S+ \[\d+\] (?P<severity>[A-Z]+):  (?P<text>.*)$")


def log_records(path: Path, offset: int) -> list[tuple[str, str]]:
    """(severity, text) of the records written after ``offset``, continuation lines included."""
    with open(path, "rb") as f:
        f.seek(offset)
        lines = f.read().decode("utf-8", errors="replace").splitlines()
    records: list[list[str]] = []
    for line in lines:
        m = RECORD.match(line)
        if m:
            records.append([m["severity"], m["text"]])
        elif records:
            records[-1][1] += "\n" + line
    return [(severity, text) for severity, text in records]


@pytest.fixture(scope="module")
def logged_gateway(gateway_loop, catalog, triton_url):
    # The gateway's own connections log every statement: libpq passes `options` to the server
    # at connection time (a superuser setting; the test server's user is the superuser).
    options = urllib.parse.quote("-c log_statement=all")
    settings = load_settings(database_url=f"{catalog.url}?options={options}", triton_url=triton_url, api_keys=())
    gw = start_gateway(gateway_loop, settings)
    yield gw
    gw.stop()


def codes_of(calls) -> list[grpc.StatusCode]:
    out = []
    for call, args, kwargs in calls:
        try:
            call(*args, **kwargs)
            out.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            out.append(exc.code())
    return out


def test_hostile_values_travel_as_parameters_and_stay_data(logged_gateway, postgres_server, catalog):
    log_path = Path(postgres_server.log_path)
    offset = log_path.stat().st_size
    with psycopg.connect(catalog.url) as conn:
        items_before = conn.execute("SELECT count(*) FROM items").fetchone()[0]

    with logged_gateway.client(timeout_s=30) as client:
        for value in HOSTILE:
            # Given a hostile value in every field that reaches Postgres
            search = codes_of([
                (client.search, (value,), {}),
                (client.search, ("cordless drill",), {"user_id": value, "brands": [value], "categories": [value]}),
            ])
            recommend = codes_of([
                (client.recommend, (value,), {"k": 3}),
                (client.recommend, ("",), {"context_item_ids": [value]}),
            ])
            by_id = codes_of([
                (client.similar_items, (value,), {}),
                (client.track_event, ("inj-user", value, "view"), {}),
                (client.track_event, (value, catalog.brand_item, "view"), {}),
            ])
            # then every call answers as it would for any other text
            assert search == [grpc.StatusCode.OK] * 2, value
            assert recommend == [grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND], value
            assert by_id == [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OK], value
            # a brand filter of the value matches no brand (it is compared, not executed)
            assert not client.search("cordless drill", brands=[value]).items
            # and a user named by the value is stored under exactly that name
            assert client.recommend(value, k=3).items is not None

    with psycopg.connect(catalog.url) as conn:
        stored = {r[0] for r in conn.execute("SELECT external_id FROM users WHERE external_id LIKE %s", (f"{MARK}%",))}
        # nothing was dropped, nothing added but the users, whose names round-trip intact
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == items_before
    assert stored == set(HOSTILE)

    def logged():
        records = log_records(log_path, offset)
        # the log holds the gateway's statements (the option took effect) ...
        assert any(sev == "LOG" and "plainto_tsquery" in text for sev, text in records)
        marked = [(sev, text) for sev, text in records if MARK in text]
        # ... and every hostile value in it, each only ever as a bound parameter
        assert marked
        outside = [(sev, text[:300]) for sev, text in marked if not (sev == "DETAIL" and text.startswith("parameters:"))]
        assert not outside, outside[:5]
        # every payload reached Postgres that way, whole (single quotes doubled, as the log quotes them)
        details = "\n".join(text for _, text in marked)
        for value in HOSTILE:
            assert f"'{value.replace(chr(39), chr(39) * 2)}'" in details, value

    eventually(logged, timeout=10)
