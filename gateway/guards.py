"""What the gateway puts between hostile clients and the servicer, besides API keys (auth.py):

- :class:`DecodeInterceptor`: a request that is not a valid protobuf message of its method
  (truncated, invalid UTF-8 in a string, garbage) answers INVALID_ARGUMENT. gRPC itself would
  answer UNKNOWN with the parser's exception in the message.
- :class:`RateLimitInterceptor`: a token bucket per client (its API key; its IP address
  without keys) answering RESOURCE_EXHAUSTED once the client is over its rate, while other
  clients go on being served. Health checks are never limited: a throttled liveness probe
  would restart the replica.

The message-size and concurrent-stream limits are the server's own options (server.py).
"""

from __future__ import annotations

import inspect
import math
import time
import urllib.parse
from collections.abc import Awaitable, Callable

import grpc
from cachetools import LRUCache
from google.protobuf.message import DecodeError

from gateway.auth import ApiKeys, presented_key, service_of

# Services a rate limit never applies to (probes every few seconds per replica).
UNLIMITED_SERVICES = frozenset({"grpc.health.v1.Health"})
# Clients whose buckets are remembered: a bucket is about 200 bytes, so 50,000 cost ~10 MB.
# The least recently seen client is forgotten first, and a forgotten client starts again with
# a full bucket, which only a client idle while 50,000 others called can gain from.
MAX_TRACKED_CLIENTS = 50_000

Guard = Callable[[grpc.aio.ServicerContext], Awaitable[None]]


class TokenBucket:
    """``rate`` tokens per second up to ``capacity``; a call takes one."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, capacity: float, now: float):
        self.tokens = capacity
        self.stamp = now

    def take(self, rate: float, capacity: float, now: float) -> float:
        """0.0 when a token was taken, else the seconds until one will be there."""
        self.tokens = min(capacity, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate


class RateLimiter:
    """Token buckets by client name. Used from the server's event loop only (no lock)."""

    def __init__(
        self,
        qps: float,
        burst: int,
        *,
        max_clients: int = MAX_TRACKED_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ):
        if qps <= 0 or burst < 1:
            raise ValueError(f"a rate limit needs qps > 0 and burst >= 1, not {qps} and {burst}")
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._buckets: LRUCache = LRUCache(maxsize=max_clients)

    def acquire(self, client: str) -> float:
        """0.0 when ``client`` may call now, else the seconds until it may."""
        now = self._clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = TokenBucket(self.burst, now)
        return bucket.take(self.qps, self.burst, now)

    def __len__(self) -> int:
        return len(self._buckets)


def peer_host(peer: str | None) -> str:
    """The client's address without its port: ``ipv4:10.0.0.7:51234`` -> ``10.0.0.7``,
    ``ipv6:[::1]:51234`` (or its percent-encoded form) -> ``::1``; anything else as it is.
    A client reconnecting from a new port is still the same client."""
    peer = urllib.parse.unquote(peer or "")
    scheme, _, rest = peer.partition(":")
    if scheme in ("ipv4", "ipv6") and rest:
        host = rest.rsplit(":", 1)[0] if rest.count(":") == 1 or rest.startswith("[") else rest
        return host.strip("[]")
    return peer


def guarded(handler: grpc.RpcMethodHandler, guard: Guard) -> grpc.RpcMethodHandler:
    """``handler`` with ``guard(context)`` awaited before its behaviour (any of the four
    shapes); a guard that aborts ends the call there."""
    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None or handler.stream_unary is not None:
        behavior = handler.unary_unary or handler.stream_unary

        async def unary(request, context):
            await guard(context)
            return await behavior(request, context)

        make = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
        return make(unary, **kw)
    behavior = handler.unary_stream or handler.stream_stream

    async def streaming(request, context):
        await guard(context)
        result = behavior(request, context)
        if inspect.isasyncgen(result):
            async for response in result:
                yield response
        else:
            await result  # a behaviour that writes with context.write

    make = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
    return make(streaming, **kw)


class RateLimitInterceptor(grpc.aio.ServerInterceptor):
    """RESOURCE_EXHAUSTED for a client over its rate. A client is the API key it presented
    when that key is valid (several processes sharing a key share its rate), else its IP
    address: callers with wrong keys cannot mint fresh buckets, and unauthenticated floods are
    limited too (they sit before the API-key check)."""

    def __init__(self, limiter: RateLimiter, keys: ApiKeys):
        self.limiter = limiter
        self.keys = keys

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or service_of(details.method) in UNLIMITED_SERVICES:
            return handler
        # Buckets are named by the key's position among the configured keys, never by the key.
        index = self.keys.index_of(presented_key(details.invocation_metadata)) if self.keys.enabled else None
        limiter = self.limiter

        async def guard(context: grpc.aio.ServicerContext) -> None:
            client = f"key#{index}" if index is not None else f"peer:{peer_host(context.peer())}"
            wait = limiter.acquire(client)
            if wait > 0:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"rate limit of {limiter.qps:g} calls/s (burst {limiter.burst}) exceeded; "
                    f"retry in {math.ceil(wait * 1000) / 1000:g} s",
                )

        return guarded(handler, guard)


class _Malformed:
    """What a request that failed to parse becomes (the behaviour answers INVALID_ARGUMENT)."""

    __slots__ = ("error",)

    def __init__(self, error: str):
        self.error = error


def _lenient(deserialize: Callable[[bytes], object]) -> Callable[[bytes], object]:
    def parse(data: bytes):
        try:
            return deserialize(data)
        except (DecodeError, UnicodeDecodeError, ValueError) as exc:
            return _Malformed(type(exc).__name__)

    return parse


class DecodeInterceptor(grpc.aio.ServerInterceptor):
    """INVALID_ARGUMENT for a unary request that is not a valid message of its type. Innermost,
    so that an unauthenticated caller's bytes are never parsed (auth.py answers first)."""

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        behavior = handler.unary_unary
        message = f"the request is not a valid message of {details.method.lstrip('/')}"

        async def checked(request, context):
            if isinstance(request, _Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{message} ({request.error})")
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            checked,
            request_deserializer=_lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
