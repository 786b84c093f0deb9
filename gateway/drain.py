"""Taking in the calls gRPC's core holds before a server stops.

grpc.aio asks the core for one call at a time and needs several event-loop turns to take each
one. When the loop is busy (a saturated gateway on two cores), the calls clients have sent wait
in the core; `server.stop()` then ends every call no handler has taken with CANCELLED, however
long ago it was sent (grpc/grpc#41785, open). Clients don't retry CANCELLED, so a plain stop
under load drops calls the gateway had received.

:class:`ShutdownDrain` closes that gap. Before the core stops, :meth:`take_queued_calls` holds
new calls at the door and finished calls' answers (handlers start no new work, so the loop
turns fast, and callers waiting for an answer send nothing more) until no call has come in for
a while: the core's queue is empty. The server then stops (new connections and calls are
refused), and :meth:`open` lets the held calls and answers go, within the grace period.
:meth:`stop_server` does the three in that order.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from gateway.metrics import wrap_unary_unary

log = logging.getLogger(__name__)

# No call taken for this many loop turns and this long: the core's queue is empty. grpc.aio
# needs about five turns to take one call (server.pyx.pxi: completion, request task, wait,
# serving loop, next request); 20 turns leave four chances. The time covers the core's
# completion thread waiting for the GIL (switch interval 5 ms).
QUIET_TURNS = 20
QUIET_S = 0.02
# The most a stop waits for the queue before stopping anyway (an open stream of new callers
# never goes quiet). tests/gateway/test_drain.py's queue (29 calls) is taken in 28 ms, the
# chaos test's 12 in 110 ms (2026-12-06); it is also short of the 0.5 s in which the chaos
# test expects a new connection to be refused.
MAX_DRAIN_S = 0.25
# Services whose calls are never held: health probes report the stop, reflection is cheap.
UNHELD_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.")


class ShutdownDrain(grpc.aio.ServerInterceptor):
    """Counts the calls the server takes and, while draining, holds them before their handler
    (outermost interceptor, so a held call has done no work) and holds answers after it."""

    def __init__(self) -> None:
        self.taken = 0
        self._open = asyncio.Event()
        self._open.set()

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        self.taken += 1
        handler = await continuation(details)
        if details.method.lstrip("/").startswith(UNHELD_SERVICES):
            return handler

        def around(behavior):
            async def held(request, context):
                if not self._open.is_set():
                    await self._open.wait()
                response = await behavior(request, context)
                # A caller answered during the drain sends its next call at once, and the core's
                # queue never empties; answered after the core stops, its next call gets a clean
                # UNAVAILABLE (which clients retry elsewhere) instead of CANCELLED.
                if not self._open.is_set():
                    await self._open.wait()
                return response

            return held

        return wrap_unary_unary(handler, around)

    async def take_queued_calls(self, max_s: float = MAX_DRAIN_S) -> float:
        """Hold new calls and wait until the core has handed over every call it held, at most
        ``max_s`` seconds; returns the seconds spent. Call :meth:`open` after the server's stop
        has begun."""
        self._open.clear()
        t0, first = time.monotonic(), self.taken
        quiet_since, quiet_turns, seen = t0, 0, self.taken
        while time.monotonic() - t0 < max_s:
            # Turns first; then short sleeps, so the wait leaves the GIL to the core's thread.
            await asyncio.sleep(0 if quiet_turns < QUIET_TURNS else 0.002)
            if self.taken != seen:
                quiet_since, quiet_turns, seen = time.monotonic(), 0, self.taken
                continue
            quiet_turns += 1
            if quiet_turns >= QUIET_TURNS and time.monotonic() - quiet_since >= QUIET_S:
                break
        spent = time.monotonic() - t0
        log.info("took %d queued calls in %.0f ms before stopping%s", self.taken - first, spent * 1000,
                 "" if spent < max_s else " (callers never went quiet)")
        return spent

    def open(self) -> None:
        self._open.set()

    async def stop_server(self, server: grpc.aio.Server, grace: float | None, max_drain_s: float = MAX_DRAIN_S) -> float:
        """Take the queued calls (for at most ``max_drain_s`` and half the grace), stop
        ``server`` with what is left of ``grace``, and let the held calls through once the core
        has stopped taking calls. Without a grace period, stops at once. Returns the seconds the
        drain took."""
        spent = 0.0
        if grace:
            spent = await self.take_queued_calls(min(max_drain_s, grace / 2))
            grace = max(grace - spent, 0.0)
        stopping = asyncio.create_task(server.stop(grace))
        # The core stops taking calls in the stop's first step; the held ones go on after it.
        await asyncio.sleep(0)
        self.open()
        await stopping
        return spent
