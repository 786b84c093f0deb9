"""Gateway fixtures: a catalog database with real data (3,000 Home Depot products, the Scientific
items and their purchase histories) embedded by the real Triton and refreshed by the real jobs,
and real gateways (`create_server` in an asyncio loop on a background thread) over it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
import pytest

from aisle import processes
from core import logs
from core.settings import Settings, load_settings
from tests.datasets import data_file

# Enough for every pipeline to have real work while the catalog embeds in about a minute on
# two shared cores: 2,000 Home Depot products and the first 2,000 Scientific items with the
# purchase histories on them (33,345 purchases by 8,274 users).
HOMEDEPOT_ITEMS = 2000
SCIENTIFIC_ITEMS = 2000


def create_database(postgres_server, name: str) -> str:
    from core.db import prepare
    from core.embeddings import DEFAULT_VERSION

    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = processes.postgres_url(postgres_server.port, name)
    prepare(url, DEFAULT_VERSION)
    return url


@dataclass
class Catalog:
    url: str
    items: int
    # A user of the Scientific purchase histories and the items they bought.
    user_id: str
    user_items: list[str]
    # A Scientific item with a category path.
    scientific_item: str
    scientific_category: str
    # The brand with the most Home Depot products, one of its items, and how many it has.
    brand: str
    brand_item: str
    brand_count: int


def scientific_subset(folder: Path, n_items: int) -> tuple[Path, Path]:
    """items.csv with item_idx < n_items and the interactions on those items."""
    import csv

    items_out, interactions_out = folder / "items.csv", folder / "interactions.csv"
    keep: set[str] = set()
    with open(data_file("scientific", "items.csv"), encoding="utf-8", newline="") as f, \
            open(items_out, "w", encoding="utf-8", newline="") as out:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(out, reader.fieldnames)
        writer.writeheader()
        for row in reader:
            if int(row["item_idx"]) < n_items:
                keep.add(row["asin"])
                writer.writerow(row)
    with open(data_file("scientific", "interactions.csv"), encoding="utf-8", newline="") as f, \
            open(interactions_out, "w", encoding="utf-8", newline="") as out:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(out, reader.fieldnames)
        writer.writeheader()
        writer.writerows(row for row in reader if row["asin"] in keep)
    return items_out, interactions_out


def _refresh(url: str, triton_url: str) -> None:
    from workers import dispatch, resources
    from workers.jobs import BATCH_JOBS

    settings = load_settings(database_url=url, triton_url=triton_url, embedding_batch=512)
    resources.reset()
    deps = resources.deps(need_triton=True, settings=settings)
    try:
        dispatch.run_inline(deps, BATCH_JOBS["embeddings"])
        dispatch.run_inline(deps, BATCH_JOBS["profiles"])
        dispatch.rebuild_graph(deps)
    finally:
        deps.conn.close()
        if deps.triton is not None:
            deps.triton.close()
        resources.reset()


@pytest.fixture(scope="session")
def catalog(postgres_server, triton_url, tmp_path_factory) -> Catalog:
    from tests.workers.conftest import load_homedepot
    from workers.loading import load

    folder = tmp_path_factory.mktemp("gateway-data")
    items_csv, interactions_csv = scientific_subset(folder, SCIENTIFIC_ITEMS)
    url = create_database(postgres_server, "aisle_gateway")
    t0 = time.monotonic()
    load_homedepot(url, folder, HOMEDEPOT_ITEMS)
    for kind, path in (("scientific-items", items_csv), ("scientific-interactions", interactions_csv)):
        report = load(kind, path, url)
        assert not report.errors, report.errors[:3]
    with psycopg.connect(url) as conn:
        # The datasets have no prices: give the Home Depot products deterministic ones so the
        # price filters have something to filter.
        conn.execute(
            "UPDATE items SET price = mod(id, 250) + 0.99 WHERE external_id ~ '^[0-9]+$'"
        )
    _refresh(url, triton_url)
    print(f"gateway catalog ready in {time.monotonic() - t0:.1f}s")
    with psycopg.connect(url) as conn:
        n = conn.execute("SELECT count(*) FROM items").fetchone()[0]
        user_id, = conn.execute(
            "SELECT u.external_id FROM users u JOIN events e ON e.user_id = u.id "
            "GROUP BY u.id ORDER BY count(*) DESC, u.external_id LIMIT 1"
        ).fetchone()
        user_items = [r[0] for r in conn.execute(
            "SELECT DISTINCT i.external_id FROM events e JOIN users u ON u.id = e.user_id JOIN items i ON i.id = e.item_id "
            "WHERE u.external_id = %s", (user_id,)
        )]
        sci_item, sci_cat = conn.execute(
            "SELECT i.external_id, i.category_path[2] FROM items i JOIN item_stats s ON s.item_id = i.id "
            "WHERE array_length(i.category_path, 1) >= 3 ORDER BY s.popularity DESC, i.id LIMIT 1"
        ).fetchone()
        brand, brand_item, brand_count = conn.execute(
            "SELECT brand, min(external_id), count(*) FROM items WHERE brand IS NOT NULL AND price IS NOT NULL "
            "GROUP BY brand ORDER BY count(*) DESC, brand LIMIT 1"
        ).fetchone()
    return Catalog(url, n, user_id, user_items, sci_item, sci_cat, brand, brand_item, brand_count)


# --- In-process gateways ----------------------------------------------------------------------

class LoopThread:
    """An asyncio loop on a daemon thread: the gateway's grpc.aio server and engine live on it
    while the tests call it through blocking clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="gateway-loop", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Gateway:
    loop: LoopThread
    server: object
    port: int
    metrics_port: int
    address: str = field(init=False)

    def __post_init__(self) -> None:
        self.address = f"{processes.LOOPBACK}:{self.port}"

    def client(self, **kwargs):
        from gateway.client import AisleClient

        return AisleClient(self.address, **kwargs)

    def stop(self, grace: float = 1.0) -> None:
        self.loop.run(self.server.stop(grace))


def wait_serving(address: str, service: str = "aisle.v1.Aisle", timeout: float = 90) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    last = None
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                last = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
                if last == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as exc:
                last = exc.code()
            time.sleep(0.2)
    raise AssertionError(f"{service} at {address} not SERVING after {timeout}s (last: {last})")


def start_gateway(loop: LoopThread, settings: Settings, wait: bool = True, **kwargs) -> Gateway:
    from gateway.server import create_server

    server, port = loop.run(create_server(f"{processes.LOOPBACK}:0", settings, metrics_port=0,
                                          metrics_address=processes.LOOPBACK, **kwargs))
    gw = Gateway(loop, server, port, server.metrics_port)
    if wait:
        wait_serving(gw.address)
    return gw


def side_gateway(gateway_loop: LoopThread, gateway: Gateway, catalog: Catalog, triton_url: str, wait: bool = True,
                 **overrides) -> Gateway:
    """A gateway with other settings (limits, keys, TLS) over the session gateway's engine: no
    second Postgres pool, and ready at once. ``stop()`` leaves the engine to its owner."""
    settings = load_settings(database_url=catalog.url, triton_url=triton_url, **{"api_keys": (), **overrides})
    return start_gateway(gateway_loop, settings, wait=wait, engine=gateway.server.engine)


@pytest.fixture(scope="session")
def gateway_loop():
    loop = LoopThread()
    yield loop
    loop.close()


class LogCapture:
    """The gateway's log lines as the JSON formatter writes them (the real formatter and
    request-id filter of core.logs on a root handler)."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(logs.JsonFormatter())
        self.handler.addFilter(logs.RequestIdFilter())
        self.handler.setLevel(logging.INFO)

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines() if line.strip()]

    def mark(self) -> int:
        return len(self.lines())

    def since(self, mark: int) -> list[dict]:
        return self.lines()[mark:]


@pytest.fixture(scope="session")
def gateway_logs():
    capture = LogCapture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture.handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    yield capture
    root.removeHandler(capture.handler)
    root.setLevel(old_level)


@pytest.fixture
def hung_triton():
    """An address that accepts TCP connections and never answers: a Triton wedged or behind
    a dead proxy, the case where only timeouts help (a stopped one refuses at once)."""
    sock = socket.socket()
    sock.bind((processes.LOOPBACK, 0))
    sock.listen(64)
    yield f"{processes.LOOPBACK}:{sock.getsockname()[1]}"
    sock.close()


def gateway_settings(catalog: Catalog, triton_url: str, **overrides) -> Settings:
    return load_settings(database_url=catalog.url, triton_url=triton_url, api_keys=(), **overrides)


@pytest.fixture(scope="session")
def gateway(gateway_loop, gateway_logs, catalog, triton_url) -> Gateway:
    gw = start_gateway(gateway_loop, gateway_settings(catalog, triton_url))
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def client(gateway):
    with gateway.client(timeout_s=30) as c:
        yield c


def rpc_error(call: Callable, *args, **kwargs) -> grpc.RpcError:
    """The RpcError ``call`` raises (fails the test when it succeeds)."""
    try:
        result = call(*args, **kwargs)
    except grpc.RpcError as exc:
        return exc
    raise AssertionError(f"expected an error, got {type(result).__name__}: {str(result)[:300]}")


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """Prometheus text from the metrics port as {(name, labels): value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{processes.LOOPBACK}:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def metric(samples: dict, name: str, **labels) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def eventually(check: Callable[[], object], timeout: float = 3.0):
    """``check()`` once it stops failing its assertions. A failed call's status reaches the
    client as it is sent, and the server logs and counts the call a moment later."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def triton_has_model(triton_url: str, model: str) -> bool:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton_url)
    try:
        return client.is_model_ready(model)
    except Exception:  # noqa: BLE001 - no such model
        return False
    finally:
        client.close()


REPO = Path(__file__).resolve().parents[2]
