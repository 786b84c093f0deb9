"""The gateway's gRPC server: the Aisle service, the standard health service and reflection on
one grpc.aio server, behind interceptors for the stop's drain (gateway/drain.py), request ids
and logs, metrics, the per-client rate limit, API keys and malformed requests (outermost first), with the message-size and
concurrent-stream limits of the settings and, when configured, TLS or mTLS on its port.

    server, port = await create_server("0.0.0.0:50051", settings)
    ...
    await server.stop(grace=20)

Health (grpc.health.v1): service "" is SERVING while the process serves (the liveness and
startup probes ask it); "aisle.v1.Aisle" turns SERVING once the engine is ready (Postgres has
an active embedding model and Triton answers) and stays so (Search answers, degraded, when
Triton later fails). Both turn NOT_SERVING as soon as a stop begins, so load balancers drain the
replica while in-flight calls finish within the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from core import logs
from core.settings import Settings, get_settings
from gateway import metrics
from gateway.auth import ApiKeyInterceptor, ApiKeys, service_of
from gateway.drain import ShutdownDrain
from gateway.guards import DecodeInterceptor, RateLimiter, RateLimitInterceptor
from gateway.pagination import PageTokens
from gateway.protos.aisle.v1 import aisle_pb2, aisle_pb2_grpc
from gateway.service import AisleService

log = logging.getLogger(__name__)

SERVICE_NAME = aisle_pb2.DESCRIPTOR.services_by_name["Aisle"].full_name
REQUEST_ID_HEADER = "x-request-id"
# How often readiness is probed until the engine is first ready.
READY_POLL_S = 0.5
# How long one readiness probe may take.
READY_TIMEOUT_S = 5.0
# How often a gateway still waiting for the engine says so.
NOT_READY_NOTE_S = 30.0
# How long a stop waits for the engine's connections to close.
ENGINE_CLOSE_S = 5.0


class RequestLogInterceptor(grpc.aio.ServerInterceptor):
    """Gives every call a request id (the client's ``x-request-id`` when plausible), returns it
    in the response trailers, puts it on every log line of the call, and logs one line per call
    with its method, status and duration. Metadata (API keys included) is never logged."""

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        service = service_of(details.method)
        method = details.method.rsplit("/", 1)[-1]
        # Health probes arrive every few seconds per replica: their lines would drown the rest.
        quiet = service == "grpc.health.v1.Health"
        client_id = next((v for k, v in details.invocation_metadata or () if k == REQUEST_ID_HEADER), None)

        def around(behavior):
            async def logged(request, context):
                request_id = logs.new_request_id(client_id if isinstance(client_id, str) else None)
                with logs.request_scope(request_id):
                    t0 = time.perf_counter()
                    exc: BaseException | None = None
                    try:
                        # In the trailers, not the headers: a call that fails before sending
                        # headers answers trailers-only, which the client may retry.
                        context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
                        return await behavior(request, context)
                    except BaseException as e:  # noqa: BLE001 - observed and re-raised
                        exc = e
                        raise
                    finally:
                        code = metrics.final_code(context, exc)
                        if not quiet or code != grpc.StatusCode.OK:
                            level = logging.ERROR if code in _SERVER_FAULTS else logging.INFO
                            log.log(
                                level,
                                "%s %s",
                                details.method,
                                code.name,
                                extra={
                                    "rpc": method,
                                    "grpc_service": service,
                                    "code": code.name,
                                    "duration_ms": round((time.perf_counter() - t0) * 1000, 2),
                                },
                            )

            return logged

        return metrics.wrap_unary_unary(await continuation(details), around)


_SERVER_FAULTS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})


class GatewayServer:
    """A started gateway: the grpc.aio server and what it owns."""

    def __init__(self, server: grpc.aio.Server, port: int, engine, owns_engine: bool, health, service: AisleService,
                 drain: ShutdownDrain):
        self.server = server
        self.drain = drain
        self.port = port
        self.engine = engine
        self.health = health
        self.service = service
        self._owns_engine = owns_engine
        self._metrics_httpd = None
        self.metrics_port: int | None = None
        self._readiness: asyncio.Task | None = None
        self._stopping = False
        self._stopped = asyncio.Event()

    async def _watch_readiness(self) -> None:
        """Probe the engine until it is first ready, then say SERVING."""
        t0 = last_note = time.monotonic()
        while True:
            try:
                # Bounded: a Triton that accepts connections but never answers would hold the
                # probe (and SERVING) forever.
                ready = await asyncio.wait_for(self.engine.ready(), READY_TIMEOUT_S)
            except asyncio.TimeoutError:
                ready = False
            except Exception as exc:  # noqa: BLE001 - not ready, whatever the probe raised
                log.warning("engine readiness probe failed: %s", exc)
                ready = False
            if ready:
                await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
                log.info("engine ready: %s SERVING", SERVICE_NAME)
                return
            if time.monotonic() - last_note >= NOT_READY_NOTE_S:
                last_note = time.monotonic()
                log.warning(
                    "engine not ready after %.0f s: waiting for Postgres (an active embedding model) and Triton",
                    last_note - t0,
                )
            await asyncio.sleep(READY_POLL_S)

    async def stop(self, grace: float | None = 20.0) -> None:
        """NOT_SERVING at once; take the calls gRPC's core still holds (gateway/drain.py);
        then let every taken call finish for up to ``grace`` seconds in all while new
        connections and calls are refused; then release the engine and the metrics endpoint."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        try:
            await self.health.enter_graceful_shutdown()
            if self._readiness is not None:
                self._readiness.cancel()
            await self.drain.stop_server(self.server, grace)
            if self._owns_engine:
                try:
                    await asyncio.wait_for(self.engine.close(), ENGINE_CLOSE_S)
                except Exception as exc:  # noqa: BLE001 - stopping anyway
                    log.warning("engine did not close cleanly: %s", exc)
            if self._metrics_httpd is not None:
                await asyncio.to_thread(self._metrics_httpd.shutdown)
                self._metrics_httpd.server_close()
        finally:
            self.drain.open()
            self._stopped.set()

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


async def create_server(
    address: str,
    settings: Settings | None = None,
    engine=None,
    *,
    metrics_port: int | None = None,
    metrics_address: str = "0.0.0.0",
    page_token_key: bytes | None = None,
) -> tuple[GatewayServer, int]:
    """Build, bind and start the gateway on ``address`` (host:port; port 0 picks a free one).

    ``engine`` defaults to a new :class:`gateway.engine.Engine` on ``settings`` (closed by
    ``stop``); one passed in stays the caller's. ``metrics_port`` serves Prometheus metrics over
    HTTP (0: a free port; None: not served). Returns the server and the bound gRPC port.
    """
    settings = settings or get_settings()
    owns_engine = engine is None
    if engine is None:
        from gateway.engine import Engine

        engine = await Engine.create(settings)
    try:
        keys = ApiKeys(settings.api_keys)
        drain = ShutdownDrain()
        interceptors = [drain, RequestLogInterceptor(), metrics.MetricsInterceptor()]
        if settings.rate_limit_qps > 0:
            limiter = RateLimiter(settings.rate_limit_qps, settings.rate_limit_bucket)
            interceptors.append(RateLimitInterceptor(limiter, keys))
        # Keys before decoding: nothing of an unauthenticated caller is parsed.
        interceptors += [ApiKeyInterceptor(keys), DecodeInterceptor()]
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
                ("grpc.so_reuseport", 0),
            ],
        )
        service = AisleService(engine, PageTokens(page_token_key) if page_token_key else PageTokens())
        aisle_pb2_grpc.add_AisleServicer_to_server(service, server)
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection.enable_server_reflection((SERVICE_NAME, health_name, reflection.SERVICE_NAME), server)
        credentials = server_credentials(settings)
        try:
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise OSError(f"cannot bind the gateway to {address}: {exc}") from None
        if port == 0:
            raise OSError(f"cannot bind the gateway to {address}")
        await server.start()
    except BaseException:
        if owns_engine:
            await engine.close()
        raise
    gateway = GatewayServer(server, port, engine, owns_engine, health, service, drain)
    if metrics_port is not None:
        try:
            gateway._metrics_httpd, gateway.metrics_port = metrics.serve(metrics_port, metrics_address)
        except BaseException:
            await gateway.stop(0)
            raise
    gateway._readiness = asyncio.create_task(gateway._watch_readiness(), name="gateway-readiness")
    log.info(
        "gateway serving on port %d (%s, api keys %s, rate limit %s%s)",
        port,
        "mTLS" if settings.tls_client_ca else "TLS" if settings.tls_cert else "plaintext",
        "required" if keys.enabled else "off",
        f"{settings.rate_limit_qps:g}/s per client" if settings.rate_limit_qps > 0 else "off",
        f", metrics on port {gateway.metrics_port}" if gateway.metrics_port is not None else "",
    )
    return gateway, port


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials of the gateway's port from AISLE_TLS_CERT/KEY (None: plaintext); with
    AISLE_TLS_CLIENT_CA, a client must present a certificate that CA signed (mTLS), else its
    handshake fails before any call."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


async def serve(
    address: str,
    settings: Settings | None = None,
    *,
    metrics_port: int | None = None,
    grace_s: float = 20.0,
    stop_signals: tuple[int, ...] | None = None,
) -> None:
    """Run the gateway until SIGTERM or SIGINT, then stop gracefully: health NOT_SERVING at
    once, in-flight calls get ``grace_s`` seconds (Kubernetes' 30 s termination grace, less the
    preStop sleep, leaves about 25)."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = stop_signals if stop_signals is not None else (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    gateway, _port = await create_server(address, settings, metrics_port=metrics_port)
    stopped_by_itself = asyncio.create_task(gateway.wait_for_termination())
    signalled = asyncio.create_task(stop.wait())
    await asyncio.wait({stopped_by_itself, signalled}, return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping: NOT_SERVING, in-flight calls get up to %.0f s", grace_s)
    t0 = time.monotonic()
    await gateway.stop(grace_s)
    for task in (stopped_by_itself, signalled):
        task.cancel()
    log.info("stopped in %.1f s", time.monotonic() - t0)
