"""The guards in front of the servicer, on their own: the token buckets of the rate limit, how a
client is named, and the wrapping of every handler shape (no server needed)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from gateway.auth import ApiKeys
from gateway.guards import RateLimiter, guarded, peer_host


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_client_gets_its_burst_then_its_rate():
    # Given 2 calls/s with a burst of 3
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    # when a client calls 4 times at once, then the first 3 pass and the 4th waits half a second
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)
    # another client has a bucket of its own
    assert limiter.acquire("b") == 0.0
    # a refused call takes nothing: after 0.5 s exactly one more call passes
    clock.now += 0.5
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0
    # an idle client refills up to its burst, never beyond
    clock.now += 60
    assert [limiter.acquire("a") for _ in range(4)][:3] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") > 0


def test_the_buckets_kept_are_bounded():
    # Given a limiter that tracks at most 100 clients, when 10,000 distinct clients call
    limiter = RateLimiter(1.0, 1, max_clients=100, clock=Clock())
    for i in range(10_000):
        limiter.acquire(f"peer:10.0.{i // 256}.{i % 256}")
    # then memory stays bounded by the cap
    assert len(limiter) == 100


@pytest.mark.parametrize("qps, burst", [(0, 1), (-1, 1), (1, 0)])
def test_a_limiter_without_a_rate_is_refused(qps, burst):
    with pytest.raises(ValueError):
        RateLimiter(qps, burst)


@pytest.mark.parametrize(
    "peer, host",
    [
        ("ipv4:10.0.0.7:51234", "10.0.0.7"),
        ("ipv6:[::1]:51234", "::1"),
        ("ipv6:%5B2001:db8::1%5D:443", "2001:db8::1"),
        ("unix:/tmp/sock", "unix:/tmp/sock"),
        ("", ""),
        (None, ""),
    ],
)
def test_a_peer_is_its_address_without_the_port(peer, host):
    # A client reconnecting from another port stays the same client
    assert peer_host(peer) == host


def test_keys_are_named_by_position_never_by_value():
    keys = ApiKeys(["alpha-key", "beta-key"])
    assert keys.index_of("beta-key") == 1 and keys.index_of(b"alpha-key") == 0
    assert keys.index_of("beta-ke") is None and keys.index_of(None) is None and keys.index_of("") is None
    assert keys.accepts("alpha-key") and not keys.accepts("ALPHA-KEY")


class Context:
    def __init__(self) -> None:
        self.aborted: tuple | None = None

    async def abort(self, code, message):
        self.aborted = (code, message)
        raise grpc.aio.AbortError()


@pytest.mark.parametrize("shape", ["unary_unary", "unary_stream", "stream_unary", "stream_stream"])
def test_a_guard_runs_before_every_handler_shape(shape):
    # Given a handler of each shape and a guard that refuses the second call
    calls = []

    async def unary(request, context):
        calls.append(request)
        return "answer"

    async def streaming(request, context):
        calls.append(request)
        yield "one"
        yield "two"

    behavior = streaming if shape.endswith("_stream") else unary
    handler = getattr(grpc, f"{shape}_rpc_method_handler")(behavior, request_deserializer=bytes, response_serializer=str.encode)
    seen = []

    async def guard(context):
        seen.append(context)
        if len(seen) > 1:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down")

    wrapped = guarded(handler, guard)
    # the wrapped handler keeps its shape and (de)serialisers
    assert getattr(wrapped, shape) is not None
    assert wrapped.request_deserializer is bytes and wrapped.response_serializer is str.encode

    async def call(context):
        result = getattr(wrapped, shape)("request", context)
        if shape.endswith("_stream"):
            return [r async for r in result]
        return await result

    assert asyncio.run(call(Context())) in ("answer", ["one", "two"])
    refused = Context()
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(call(refused))
    # the refused call never reached the behaviour
    assert refused.aborted[0] == grpc.StatusCode.RESOURCE_EXHAUSTED and calls == ["request"]
