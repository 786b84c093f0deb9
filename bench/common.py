"""What every benchmark shares: the real data, a Triton of its own, latency statistics and
the JSON result file."""

from __future__ import annotations

import csv
import json
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil

from core.settings import REPO_ROOT

DATA = REPO_ROOT.parent / "shared" / "data"
RESULTS = REPO_ROOT / "bench" / "results"


def require(path: Path) -> Path:
    if not path.exists():
        sys.exit(f"{path} is absent: the benchmarks read the real data from ../shared/data")
    return path


def homedepot_titles(n: int | None = None) -> list[str]:
    with open(require(DATA / "homedepot" / "products.csv"), encoding="utf-8") as f:
        titles = [r["product_title"] for r in csv.DictReader(f)]
    return titles[:n] if n else titles


def latency_stats(latencies_s: list[float]) -> dict:
    ms = np.asarray(latencies_s) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99))}


def tree_rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used by a process, its live descendants and the children it
    has reaped (a Postgres backend that exited counts in the postmaster's)."""
    proc = psutil.Process(pid)
    times = proc.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in proc.children(recursive=True):
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


@contextmanager
def triton_server(repository: Path, log: Path):
    """A tritonserver of the benchmark's own on the given repository."""
    from aisle import processes

    ports = processes.TritonPorts.free()
    server = processes.triton(repository, ports, log).start(timeout=300)
    try:
        yield server, f"{processes.LOOPBACK}:{ports.grpc}"
    finally:
        server.stop()


def machine() -> dict:
    return {
        "cpus": psutil.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg_1m": psutil.getloadavg()[0],
    }


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1))
    return path


def median(xs):
    return statistics.median(xs)
