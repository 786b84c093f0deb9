"""Background load for the chaos tests: a few asyncio tasks calling the gateway back to back,
each call with its own deadline, every outcome recorded with its start and end times so a test
can ask what happened to the calls in flight around a fault."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from gateway.protos.aisle.v1 import aisle_pb2 as pb
from gateway.protos.aisle.v1 import aisle_pb2_grpc


@dataclass(frozen=True)
class Call:
    started: float  # time.monotonic()
    ended: float
    deadline_s: float
    code: grpc.StatusCode
    degraded: bool
    reason: str

    @property
    def elapsed(self) -> float:
        return self.ended - self.started


class Load:
    """``tasks`` asyncio tasks on a thread of their own, each sending Search after Search (the
    next query from ``queries``) with ``deadline_s`` until :meth:`stop`.

    Each task has its own channel: one channel's broken connection must not stand for all
    clients, and a new connection after a restart is what real clients make. The channels do
    not retry, so every attempt is one recorded call."""

    def __init__(self, address: str, queries: list[str], *, tasks: int = 4, deadline_s: float = 2.0,
                 unique_queries: bool = True):
        self.address, self.tasks, self.deadline_s = address, tasks, deadline_s
        # A unique suffix keeps the query-embedding cache cold, so every call needs the encoder.
        suffix = (lambda: f" {uuid.uuid4().hex[:6]}") if unique_queries else (lambda: "")
        cycle = itertools.cycle(queries)
        self._next_query: Callable[[], str] = lambda: next(cycle) + suffix()
        self.calls: list[Call] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="chaos-load", daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30) -> list[Call]:
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the load tasks did not stop: a call outlived every deadline"
        return sorted(self.calls, key=lambda c: c.started)

    def between(self, t0: float, t1: float) -> list[Call]:
        """Calls that started in [t0, t1)."""
        return [c for c in list(self.calls) if t0 <= c.started < t1]

    async def _run(self) -> None:
        await asyncio.gather(*(self._task() for _ in range(self.tasks)))

    async def _task(self) -> None:
        async with grpc.aio.insecure_channel(self.address, options=[("grpc.enable_retries", 0)]) as channel:
            stub = aisle_pb2_grpc.AisleStub(channel)
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    reply = await stub.Search(pb.SearchRequest(query=self._next_query(), page_size=10),
                                              timeout=self.deadline_s)
                    call = Call(t0, time.monotonic(), self.deadline_s, grpc.StatusCode.OK, reply.degraded,
                                reply.degraded_reason)
                except grpc.aio.AioRpcError as exc:
                    call = Call(t0, time.monotonic(), self.deadline_s, exc.code(), False, exc.details() or "")
                    # A refused connection fails at once: don't spin the shared CPUs meanwhile.
                    await asyncio.sleep(0.05)
                self.calls.append(call)


def summary(calls: list[Call]) -> dict:
    """Counts by outcome and the slowest call, for the failure messages and the JSON summary."""
    by: dict[str, int] = {}
    for c in calls:
        key = c.code.name + (" degraded" if c.degraded else "")
        by[key] = by.get(key, 0) + 1
    return {"calls": len(calls), "by_outcome": by,
            "max_elapsed_s": round(max((c.elapsed for c in calls), default=0.0), 3)}
