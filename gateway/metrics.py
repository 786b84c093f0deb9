"""Prometheus metrics of the gateway, served over HTTP on the metrics port (`/metrics`).

gRPC calls, under the names go-grpc-prometheus made standard (the Grafana dashboard in
helm/aisle/dashboards reads them):

    grpc_server_started_total{grpc_service, grpc_method}
    grpc_server_handled_total{grpc_service, grpc_method, grpc_code}
    grpc_server_handling_seconds{grpc_service, grpc_method}        (histogram)

and the pipelines':

    aisle_gateway_stage_seconds{rpc, stage}                       (histogram, from Ranked.stage_ms)
    aisle_gateway_query_cache_hits_total, aisle_gateway_query_cache_misses_total
    aisle_gateway_degraded_total{rpc}                             (answers with degraded=true)
    aisle_gateway_recommend_cache_total{result}                   (hit/miss of plain Recommends)

and, read at each scrape, what the engines hold in memory (gateway/item_table.py):

    aisle_gateway_item_table_items{state}                          (held, stale, moved, graph)

The metrics live in prometheus_client's default registry (with the process collector's CPU and
memory, which the dashboard also reads); several servers in one process share them.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Awaitable, Callable

import grpc
from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from gateway.auth import service_of

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", ["grpc_service", "grpc_method"])
HANDLED = Counter(
    "grpc_server_handled_total", "RPCs completed on the server, by status code.", ["grpc_service", "grpc_method", "grpc_code"]
)
HANDLING = Histogram(
    "grpc_server_handling_seconds", "Time from the start of an RPC to its status.", ["grpc_service", "grpc_method"],
    buckets=LATENCY_BUCKETS,
)
STAGE = Histogram(
    "aisle_gateway_stage_seconds", "Time per pipeline stage of Search, Recommend and SimilarItems.", ["rpc", "stage"],
    buckets=STAGE_BUCKETS,
)
CACHE_HITS = Counter("aisle_gateway_query_cache_hits_total", "Search query embeddings found in the query cache.")
CACHE_MISSES = Counter("aisle_gateway_query_cache_misses_total", "Search query embeddings the encoder had to compute.")
DEGRADED = Counter("aisle_gateway_degraded_total", "Answers given with degraded=true.", ["rpc"])
RECOMMEND_CACHE = Counter(
    "aisle_gateway_recommend_cache_total", "Plain Recommends answered from the recommendation cache (hit) or not.", ["result"]
)


def code_name(code: grpc.StatusCode | None) -> str:
    return (code or grpc.StatusCode.OK).name


def final_code(context: grpc.aio.ServicerContext, exc: BaseException | None) -> grpc.StatusCode:
    """The status an RPC ends with, seen from an interceptor around its behaviour."""
    if isinstance(exc, asyncio.CancelledError):
        left = context.time_remaining()
        return grpc.StatusCode.DEADLINE_EXCEEDED if left is not None and left <= 0 else grpc.StatusCode.CANCELLED
    code = context.code()
    if code is not None and not isinstance(code, grpc.StatusCode):
        # grpc.aio reports the code as cygrpc's integer on some versions.
        code = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    if code is not None:
        return code
    if exc is not None and not isinstance(exc, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.OK


Behavior = Callable[[object, grpc.aio.ServicerContext], Awaitable[object]]


def wrap_unary_unary(handler: grpc.RpcMethodHandler | None, around: Callable[[Behavior], Behavior]):
    """``handler`` with its unary-unary behaviour wrapped by ``around`` (other shapes as they are)."""
    if handler is None or handler.unary_unary is None:
        return handler
    return grpc.unary_unary_rpc_method_handler(
        around(handler.unary_unary),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every unary RPC (the health Check included; the streaming health Watch
    and reflection are left out)."""

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        service = service_of(details.method)
        method = details.method.rsplit("/", 1)[-1]

        def around(behavior: Behavior) -> Behavior:
            async def observed(request, context):
                STARTED.labels(service, method).inc()
                t0 = time.perf_counter()
                exc: BaseException | None = None
                try:
                    return await behavior(request, context)
                except BaseException as e:  # noqa: BLE001 - observed and re-raised
                    exc = e
                    raise
                finally:
                    HANDLING.labels(service, method).observe(time.perf_counter() - t0)
                    HANDLED.labels(service, method, code_name(final_code(context, exc))).inc()

            return observed

        return wrap_unary_unary(await continuation(details), around)


def observe_ranked(rpc: str, ranked) -> None:
    """Stage timings and degradation of a Search/Recommend/SimilarItems answer."""
    for stage, ms in ranked.stage_ms.items():
        STAGE.labels(rpc, stage).observe(ms / 1000.0)
    if ranked.degraded:
        DEGRADED.labels(rpc).inc()
    if ranked.cache_hit is not None:
        RECOMMEND_CACHE.labels("hit" if ranked.cache_hit else "miss").inc()


class HeldItems:
    """The item tables of the process's engines, read at each scrape: how many items they hold,
    how many were added since their load (read from Postgres until the next full read), how many
    were re-embedded since the nearest-neighbour graph was built (scored exactly), and how many
    the graph holds. Stale or moved items growing toward their limits say a full read is due."""

    STATES = ("held", "stale", "moved", "graph")

    def __init__(self):
        self._engines: weakref.WeakSet = weakref.WeakSet()

    def watch(self, engine) -> None:
        self._engines.add(engine)

    def collect(self):
        family = GaugeMetricFamily(
            "aisle_gateway_item_table_items", "Items in the gateway's memory, by state.", labels=["state"]
        )
        totals = dict.fromkeys(self.STATES, 0)
        for engine in list(self._engines):
            for state, count in (engine.held_items() or {}).items():
                totals[state] += count
        for state, count in totals.items():
            family.add_metric([state], count)
        yield family


HELD_ITEMS = HeldItems()
REGISTRY.register(HELD_ITEMS)


class CacheCounters:
    """Mirrors an engine's query-cache hit/miss counts into the Prometheus counters (by delta,
    so several engines in one process add up)."""

    def __init__(self, cache):
        self.cache = cache
        self._lock = threading.Lock()
        self._hits = cache.hits
        self._misses = cache.misses

    def sync(self) -> None:
        with self._lock:
            hits, misses = self.cache.hits, self.cache.misses
            if hits > self._hits:
                CACHE_HITS.inc(hits - self._hits)
            if misses > self._misses:
                CACHE_MISSES.inc(misses - self._misses)
            self._hits, self._misses = hits, misses


def serve(port: int, address: str = "0.0.0.0"):
    """Serve /metrics on ``address:port`` from a daemon thread; returns the HTTP server
    (``shutdown()`` stops it) and its bound port (``port`` 0 picks a free one)."""
    httpd, _thread = start_http_server(port, addr=address)
    return httpd, httpd.server_address[1]
