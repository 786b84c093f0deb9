"""The stop's drain (gateway/drain.py) on a bare grpc.aio server whose handler keeps the event
loop busy, as a saturated gateway does: calls pile up in gRPC's core, and a plain stop ends
them CANCELLED (without the drain, 29 of the calls sent before the stop were, 2026-12-06)."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc

from gateway.drain import ShutdownDrain

METHOD = "/drain.Test/Echo"
# Two 10 ms CPU steps per call, on the loop: 32 callers keep the core's queue full.
CPU_STEP_S = 0.01
CALLERS = 32
LOAD_S = 1.5
GRACE_S = 5.0


async def started_busy_server() -> tuple[grpc.aio.Server, ShutdownDrain, int]:
    drain = ShutdownDrain()
    server = busy_server(drain)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, drain, port


def busy_server(drain: ShutdownDrain) -> grpc.aio.Server:
    async def echo(request, context):
        time.sleep(CPU_STEP_S)  # CPU work that holds the loop, like feature computation
        await asyncio.sleep(0)
        time.sleep(CPU_STEP_S)
        return request

    server = grpc.aio.server(interceptors=[drain])
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("drain.Test", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),)
    )
    return server


class Callers:
    """``CALLERS`` clients on a thread of their own, each calling back to back; every call's
    start time and outcome recorded."""

    def __init__(self, port: int):
        self.port, self.calls, self._stop = port, [], threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self):
        async def caller():
            async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
                echo = channel.unary_unary(METHOD)
                while not self._stop.is_set():
                    t0 = time.monotonic()
                    try:
                        await echo(b"x", timeout=10)
                        code = grpc.StatusCode.OK
                    except grpc.aio.AioRpcError as exc:
                        code = exc.code()
                        await asyncio.sleep(0.05)
                    self.calls.append((t0, code))

        await asyncio.gather(*(caller() for _ in range(CALLERS)))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(15)
        assert not self._thread.is_alive()


def test_given_calls_queued_in_the_core_when_the_server_stops_after_the_drain_then_every_call_sent_before_is_answered():
    async def scenario():
        # Given a busy server with calls queued in gRPC's core
        server, drain, port = await started_busy_server()
        with Callers(port) as callers:
            await asyncio.sleep(LOAD_S)
            # When it takes the queued calls, then stops, then lets the held calls through
            t_stop = time.monotonic()
            spent = await drain.stop_server(server, GRACE_S)
        return t_stop, spent, callers.calls

    t_stop, spent, calls = asyncio.run(scenario())
    # Then every call sent before the stop was answered
    before = [code for started, code in calls if started < t_stop]
    assert len(before) > CALLERS, "the load never got going"
    lost = [code.name for code in before if code != grpc.StatusCode.OK]
    assert not lost, f"{len(lost)} of {len(before)} calls sent before the stop ended {set(lost)}"
    # and later ones were answered or refused, never cancelled
    after = {code for started, code in calls if started >= t_stop}
    assert after <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, after
    assert spent < 0.25 + 0.1


def test_given_callers_that_never_stop_sending_when_draining_then_the_drain_ends_at_its_limit_and_held_calls_are_answered():
    async def scenario():
        # Given a server and a caller that sends a new call every 5 ms without waiting for any
        server, drain, port = await started_busy_server()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.unary_unary(METHOD)
            sent: list[asyncio.Task] = []

            async def keep_sending():
                while True:
                    sent.append(asyncio.ensure_future(echo(b"x", timeout=10)))
                    await asyncio.sleep(0.005)

            sender = asyncio.create_task(keep_sending())
            await asyncio.sleep(0.2)
            # When the drain runs with a 0.2 s limit
            try:
                spent = await drain.stop_server(server, GRACE_S, max_drain_s=0.2)
            finally:
                sender.cancel()
            outcomes = await asyncio.gather(*sent, return_exceptions=True)
        return spent, outcomes

    spent, outcomes = asyncio.run(scenario())
    # Then it stopped waiting at its limit (the callers never went quiet)
    assert 0.2 <= spent < 0.2 + 0.1, spent
    # and the calls it held were answered: the stop refused or cancelled only the latest ones
    answered = [o for o in outcomes if o == b"x"]
    assert len(answered) >= 0.2 / 0.005 / 2, f"{len(answered)} of {len(outcomes)} answered"
