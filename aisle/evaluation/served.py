"""The gateway an evaluation talks to: a running one at an address, or one started in this
process on a free port (``gateway.server.create_server``) over the given settings' database.

Either way the evaluation speaks gRPC to it, so what it measures is what clients get: the
servicer's validation and defaults, the engine's deadlines, the proto round trip.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc

from core.settings import Settings

# How long a gateway may take to report aisle.v1.Aisle SERVING (an in-process one opens its
# connection pool and probes Triton first; a few seconds usually).
SERVING_TIMEOUT_S = 60.0
# How often readiness is asked while waiting.
SERVING_POLL_S = 0.2
LOOPBACK = "127.0.0.1"


class GatewayUnavailable(RuntimeError):
    pass


@dataclass
class Served:
    stub: object  # aisle_pb2_grpc.AisleStub on a grpc.aio channel
    metadata: tuple[tuple[str, str], ...]
    # "in-process" or the address of the running gateway.
    where: str
    # The in-process server (None for a running gateway): its engine is reachable through it.
    server: object | None = None


async def _wait_serving(channel: grpc.aio.Channel, timeout_s: float) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service="aisle.v1.Aisle"), timeout=2)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.aio.AioRpcError as exc:
            last = exc.code().name
        await asyncio.sleep(SERVING_POLL_S)
    raise GatewayUnavailable(f"the gateway is not SERVING after {timeout_s:.0f} s (last: {last})")


@asynccontextmanager
async def served_gateway(settings: Settings, address: str | None = None) -> AsyncIterator[Served]:
    """A stub on the gateway at ``address``, else on one started here over ``settings``."""
    from gateway.protos.aisle.v1 import aisle_pb2_grpc

    metadata = (("x-api-key", settings.api_keys[0]),) if settings.api_keys else ()
    server = None
    quiet = logging.getLogger("gateway")
    level = quiet.level
    if address is None:
        from gateway.server import create_server

        # An in-process gateway logs a line per call and a warning per degraded answer into the
        # evaluation's output; the evaluation counts those itself. Errors still show.
        quiet.setLevel(logging.ERROR)
        server, port = await create_server(f"{LOOPBACK}:0", settings)
        target, where = f"{LOOPBACK}:{port}", "in-process"
    else:
        target, where = address, address
    channel = grpc.aio.insecure_channel(target)
    try:
        await _wait_serving(channel, SERVING_TIMEOUT_S)
        yield Served(aisle_pb2_grpc.AisleStub(channel), metadata, where, server)
    finally:
        await channel.close()
        if server is not None:
            await server.stop(1.0)
        quiet.setLevel(level)
