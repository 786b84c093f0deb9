"""Resource abuse: oversize messages, many streams on one connection, calls beyond a client's
rate and bytes that are no message at all hit the configured limits, and other clients stay
served. The gateways here share the session gateway's engine (real Postgres and Triton) and
differ only in their limits."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.protos.aisle.v1 import aisle_pb2 as pb
from gateway.protos.aisle.v1 import aisle_pb2_grpc
from tests.gateway.conftest import eventually, metric, rpc_error, scrape, side_gateway

# These tests serve the real data of ../shared/data (skipped without it).
pytestmark = pytest.mark.data

# Each channel its own TCP connection: channels with the same target and options otherwise
# share one subchannel, and with it one HTTP/2 connection.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


def served(address: str, metadata=()) -> pb.SearchResponse:
    with grpc.insecure_channel(address, options=OWN_CONNECTION) as channel:
        return aisle_pb2_grpc.AisleStub(channel).Search(
            pb.SearchRequest(query="cordless drill", page_size=2), metadata=metadata, timeout=30
        )


# --- Message size -------------------------------------------------------------------------------

def test_an_oversize_message_is_resource_exhausted_and_the_client_stays_served(gateway, client):
    # Given the default limit of 8 MiB, when a client sends a ClassifyProduct of 9 MiB
    huge = pb.ClassifyProductRequest(texts=["a" * (1 << 20)] * 9)
    err = rpc_error(client.stub.ClassifyProduct, huge, timeout=30)
    # then the call is refused before it is parsed
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert "larger than max" in err.details()
    # and the same client (same connection) and another one go on being served
    assert client.search("cordless drill", page_size=2).items
    assert served(gateway.address).items


def test_the_message_limit_is_a_setting(gateway_loop, gateway, catalog, triton_url):
    # Given a gateway configured for 256 KiB messages
    gw = side_gateway(gateway_loop, gateway, catalog, triton_url, max_message_bytes=256 * 1024)
    try:
        with gw.client(timeout_s=30) as c:
            # a request of 300 KiB is refused unread
            err = rpc_error(c.classify_product, ["b" * 300 * 1024])
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
            # one of 200 KiB is read, and then refused by the API's own limit on a text
            err = rpc_error(c.classify_product, ["b" * 200 * 1024])
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "texts[0] is 204800 characters; the limit is 32768" in err.details()
    finally:
        gw.stop()


# --- Concurrent streams ---------------------------------------------------------------------------

def test_streams_beyond_the_limit_wait_while_other_connections_are_served(gateway_loop, gateway, catalog, triton_url):
    # Given a gateway allowing 4 concurrent streams per connection
    gw = side_gateway(gateway_loop, gateway, catalog, triton_url, max_concurrent_streams=4)
    hog = grpc.insecure_channel(gw.address, options=OWN_CONNECTION)
    watches = []
    try:
        # when one client holds 4 streams open on its connection (health watches never end)
        health = health_pb2_grpc.HealthStub(hog)
        for _ in range(4):
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            watches.append(watch)
        # then its next call on that connection does not start before its deadline
        t0 = time.monotonic()
        err = rpc_error(aisle_pb2_grpc.AisleStub(hog).Search, pb.SearchRequest(query="drill", page_size=1), timeout=1.5)
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()
        assert time.monotonic() - t0 >= 1.4
        # while a client on another connection is served at once
        t0 = time.monotonic()
        assert served(gw.address).items
        assert time.monotonic() - t0 < 10
        # and once one of the 4 streams ends, the hog's calls go through again
        watches.pop().cancel()
        assert aisle_pb2_grpc.AisleStub(hog).Search(pb.SearchRequest(query="drill", page_size=1), timeout=30).items
    finally:
        for watch in watches:
            watch.cancel()
        hog.close()
        gw.stop()


# --- Rate limit -----------------------------------------------------------------------------------

KEY_A, KEY_B = "rate-key-a-7f3c9e", "rate-key-b-21d0aa"


@pytest.fixture(scope="module")
def limited_gateway(gateway_loop, gateway, catalog, triton_url):
    # One call every 5 s after a burst of 3: slow enough that a loaded machine cannot refill a
    # bucket between the calls of a test.
    gw = side_gateway(
        gateway_loop, gateway, catalog, triton_url, api_keys=(KEY_A, KEY_B), rate_limit_qps=0.2, rate_limit_burst=3
    )
    yield gw
    gw.stop()


def test_a_key_over_its_rate_is_resource_exhausted_while_another_key_is_served(limited_gateway):
    before = scrape(limited_gateway.metrics_port)
    with limited_gateway.client(api_key=KEY_A, timeout_s=30) as a, limited_gateway.client(api_key=KEY_B, timeout_s=30) as b:
        # Given key A spent its burst of 3 calls (valid or not, every call counts)
        assert a.search("cordless drill", page_size=1).items
        assert rpc_error(a.search, " ").code() == grpc.StatusCode.INVALID_ARGUMENT
        assert a.recommend("rate-user", k=1) is not None
        # when it calls again, then it is told to slow down and for how long
        err = rpc_error(a.search, "cordless drill", page_size=1)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "rate limit of 0.2 calls/s (burst 3) exceeded; retry in" in err.details()
        # whatever it calls: the bucket is the key's, not the method's
        assert rpc_error(a.track_event, "u", "100001", "view").code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # while key B is served
        assert b.search("cordless drill", page_size=1).items
        # and health checks are never limited (probes would restart the replica)
        assert all(a.health("") == "SERVING" for _ in range(10))
        # once a token has refilled (5 s), key A is served again (refused calls took none)
        def served_again():
            try:
                assert a.search("cordless drill", page_size=1).items
            except grpc.RpcError as exc:
                raise AssertionError(exc.details()) from None

        eventually(served_again, timeout=10)

    def counted():
        after = scrape(limited_gateway.metrics_port)
        exhausted = metric(after, "grpc_server_handled_total", grpc_code="RESOURCE_EXHAUSTED") - metric(
            before, "grpc_server_handled_total", grpc_code="RESOURCE_EXHAUSTED"
        )
        assert exhausted >= 2

    eventually(counted)


def test_callers_without_a_valid_key_share_their_address_bucket(limited_gateway):
    # Given callers from one address with wrong keys: each call is UNAUTHENTICATED ...
    codes = []
    for i in range(6):
        # ... each on a new connection with a new wrong key, so neither mints a fresh bucket
        with grpc.insecure_channel(limited_gateway.address, options=OWN_CONNECTION) as channel:
            try:
                aisle_pb2_grpc.AisleStub(channel).Search(
                    pb.SearchRequest(query="drill"), metadata=(("x-api-key", f"guess-{i}"),), timeout=30
                )
            except grpc.RpcError as exc:
                codes.append(exc.code())
    # then after the burst of the address they are limited too
    assert codes[:3] == [grpc.StatusCode.UNAUTHENTICATED] * 3
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[3:]
    # and a valid key from the same address is still served
    assert served(limited_gateway.address, metadata=(("x-api-key", KEY_B),)).items


def test_without_keys_a_client_is_its_address_whatever_its_connection(gateway_loop, gateway, catalog, triton_url):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    def reflect() -> set[str]:
        with grpc.insecure_channel(gw.address, options=OWN_CONNECTION) as channel:
            return set(ProtoReflectionDescriptorDatabase(channel).get_services())

    # Given a rate limit of a burst of 3 and no API keys
    gw = side_gateway(gateway_loop, gateway, catalog, triton_url, rate_limit_qps=0.2, rate_limit_burst=3)
    try:
        # a reflection stream takes a token like any call
        assert "aisle.v1.Aisle" in reflect()
        codes = []
        for _ in range(4):
            # when a client reconnects for every call (a new port each time)
            try:
                served(gw.address)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
        # then it is still limited as one client
        assert codes == [grpc.StatusCode.OK] * 2 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
        # streams included
        with pytest.raises(grpc.RpcError) as err:
            reflect()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        gw.stop()


# --- Bytes that are no message ----------------------------------------------------------------------

METHODS = ("Search", "Recommend", "SimilarItems", "ClassifyProduct", "AnalyzeReviews", "TrackEvent")
NOT_MESSAGES = {
    "garbage": b"\xff\xff\xff\xff",
    "truncated length": b"\x0a\x05ab",
    "invalid UTF-8 in a string": b"\x0a\x02\xc3\x28",
    "overlong varint": b"\x18" + b"\xff" * 11,
}


@pytest.mark.parametrize("payload", NOT_MESSAGES.values(), ids=NOT_MESSAGES.keys())
def test_bytes_that_are_no_message_are_invalid_argument(gateway, gateway_logs, payload):
    mark = gateway_logs.mark()
    with grpc.insecure_channel(gateway.address) as channel:
        for method in METHODS:
            # Given raw bytes sent as a request of every method
            call = channel.unary_unary(f"/aisle.v1.Aisle/{method}")
            err = rpc_error(call, payload, timeout=30)
            # then each answers INVALID_ARGUMENT naming the message, not UNKNOWN with the parser's error
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, err.code(), err.details())
            assert f"not a valid message of aisle.v1.Aisle/{method}" in err.details()
    # A known field number with another wire type parses, as an unknown field: refused as such
    with grpc.insecure_channel(gateway.address) as channel:
        err = rpc_error(channel.unary_unary("/aisle.v1.Aisle/Search"), b"\x0d\x00\x00\x00\x00", timeout=30)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown fields #1" in err.details()
    # and nothing was logged as a server fault
    assert not [line for line in gateway_logs.since(mark) if line["level"] == "ERROR"]
