"""API keys: with ``AISLE_API_KEYS`` set, every call of the Aisle service must carry one of
them in the ``x-api-key`` metadata, else it answers UNAUTHENTICATED.

The standard health service and server reflection stay open (Kubernetes probes and grpcurl
carry no key). Keys are compared in constant time (:func:`hmac.compare_digest`, against every
configured key, so the time says nothing about which key nearly matched) and never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

import grpc

API_KEY_HEADER = "x-api-key"
# Services answered without a key.
OPEN_SERVICES = frozenset({
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
})


def service_of(method: str) -> str:
    """``/aisle.v1.Aisle/Search`` -> ``aisle.v1.Aisle``."""
    return method.lstrip("/").split("/", 1)[0]


class ApiKeys:
    def __init__(self, keys: Iterable[str]):
        self._keys = tuple(k.encode("utf-8") for k in keys if k)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def accepts(self, presented: str | bytes | None) -> bool:
        return self.index_of(presented) is not None

    def index_of(self, presented: str | bytes | None) -> int | None:
        """Position of ``presented`` among the configured keys (None: not one of them): a name
        for the key that is not the key, for the rate limiter's buckets."""
        if presented is None:
            return None
        given = presented.encode("utf-8") if isinstance(presented, str) else presented
        found = None
        for i, key in enumerate(self._keys):
            # Every key is compared, whatever matched: the time says nothing about which.
            if hmac.compare_digest(given, key):
                found = i
        return found


def presented_key(metadata) -> str | bytes | None:
    for key, value in metadata or ():
        if key == API_KEY_HEADER:
            return value
    return None


def _reject_unary(message: str):
    async def reject(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return reject


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: ApiKeys):
        self.keys = keys

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        if not self.keys.enabled or service_of(details.method) in OPEN_SERVICES:
            return await continuation(details)
        presented = presented_key(details.invocation_metadata)
        if self.keys.accepts(presented):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:
            # An unknown method: let gRPC answer UNIMPLEMENTED as it would anyway.
            return None
        message = f"missing {API_KEY_HEADER} metadata" if presented is None else f"invalid {API_KEY_HEADER}"
        # Every Aisle method is unary-unary; any other shape is refused the same way. The request
        # stays undeserialised bytes: nothing of an unauthenticated caller is parsed.
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _reject_unary(message),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _reject_unary(message),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _reject_unary(message),
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            _reject_unary(message),
            response_serializer=handler.response_serializer,
        )
