"""Chaos fixtures: a small refreshed catalog, an asyncio loop for in-process gateways, real
queries for the load, and (with AISLE_RESULTS set) a JSON summary of the chaos run for
`bench/report.py`.

Every test here stops or kills a server of its own (Triton, Postgres, Redis, `aisle serve`),
never a session one, so the rest of the suite is not disturbed."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import pytest

from core.settings import REPO_ROOT
from tests.datasets import data_file

# Small on purpose: the faults are the subject, not the catalog. 400 Home Depot products embed
# in a few seconds on two shared cores and still give every retriever real candidates.
CHAOS_ITEMS = 400
# Queries for the load: the first Home Depot dev queries (real user wording).
CHAOS_QUERIES = 200

# nodeid -> {"outcome", "seconds", "measured": {...}} of this session's chaos tests.
_RESULTS: dict[str, dict] = {}


def build_catalog(database_url: str, triton_url: str, folder: Path, n: int = CHAOS_ITEMS) -> None:
    """Load the first ``n`` Home Depot products into a migrated database and run the refresh
    jobs (embeddings, profiles, graph) in-process, as the gateway's catalog fixture does."""
    from tests.gateway.conftest import _refresh
    from tests.workers.conftest import load_homedepot

    assert load_homedepot(database_url, folder, n) == n
    _refresh(database_url, triton_url)


@pytest.fixture(scope="session")
def chaos_catalog(postgres_server, triton_url, tmp_path_factory) -> str:
    """URL of a database in the session's Postgres with the small catalog, refreshed."""
    from tests.gateway.conftest import create_database

    url = create_database(postgres_server, "aisle_chaos")
    build_catalog(url, triton_url, tmp_path_factory.mktemp("chaos-data"))
    return url


@pytest.fixture(scope="session")
def chaos_queries() -> list[str]:
    with open(data_file("homedepot", "queries_dev.csv"), encoding="utf-8", newline="") as f:
        return [row["query"] for _, row in zip(range(CHAOS_QUERIES), csv.DictReader(f))]


@pytest.fixture(scope="session")
def chaos_loop():
    """The loop in-process gateways run on (the tests call them from other threads)."""
    from tests.gateway.conftest import LoopThread

    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture
def chaos_record(request) -> dict:
    """Measurements of this test for the JSON summary (fill it as the test goes)."""
    entry = _RESULTS.setdefault(request.node.nodeid, {})
    return entry.setdefault("measured", {})


def pytest_runtest_logreport(report) -> None:
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        entry = _RESULTS.setdefault(report.nodeid, {})
        entry["outcome"] = report.outcome
        entry["seconds"] = round(report.duration, 2)


def pytest_sessionfinish(session) -> None:
    """With AISLE_RESULTS set (a folder, or 1 for bench/results), write what the chaos tests
    measured where `bench/report.py` finds it."""
    target = os.environ.get("AISLE_RESULTS")
    if not target or not _RESULTS:
        return
    folder = REPO_ROOT / "bench" / "results" if target == "1" else Path(target)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"chaos-{time.strftime('%Y%m%d-%H%M%S')}.json"
    from bench.common import machine

    path.write_text(json.dumps({"machine": machine(), "tests": _RESULTS}, indent=1, default=str))
