"""API keys on every RPC: with keys configured, each method of aisle.v1.Aisle refuses a missing
or wrong key before reading the request; health and reflection stay open (the documented
decision: probes and grpcurl carry no key, and reflection only describes the public proto); and
no key, right or wrong, reaches the logs or the metrics."""

from __future__ import annotations

import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.protos.aisle.v1 import aisle_pb2 as pb
from tests.gateway.conftest import eventually, metric, rpc_error, scrape, side_gateway

# These tests serve the real data of ../shared/data (skipped without it).
pytestmark = pytest.mark.data

KEYS = ("auth-key-one-5b0e7d21", "auth-key-two-c94af3e8")
# Wrong keys a caller might try: near misses, other cases, padding, the two keys joined.
# (gRPC clients refuse to send control characters in metadata, so those need no test here.)
WRONG_KEYS = (None, "", "auth-key-one-5b0e7d2", "auth-key-one-5b0e7d211", "AUTH-KEY-ONE-5B0E7D21",
              " auth-key-one-5b0e7d21", "auth-key-one-5b0e7d21 ", ",".join(KEYS))

# One request per RPC, valid as far as the gateway's own checks go.
REQUESTS = {
    "Search": pb.SearchRequest(query="cordless drill", page_size=2),
    "Recommend": pb.RecommendRequest(user_id="auth-user", k=2),
    "SimilarItems": pb.SimilarItemsRequest(item_id="auth-no-such-item", k=2),
    "ClassifyProduct": pb.ClassifyProductRequest(texts=["organic whole milk"]),
    "AnalyzeReviews": pb.AnalyzeReviewsRequest(texts=["works great"]),
    "TrackEvent": pb.TrackEventRequest(user_id="auth-user", item_id="auth-no-such-item", type=pb.EVENT_TYPE_VIEW),
}


def test_every_rpc_of_the_service_is_covered_here():
    # A new RPC fails this test until it is added to REQUESTS, and so to the checks below.
    assert set(REQUESTS) == {m.name for m in pb.DESCRIPTOR.services_by_name["Aisle"].methods}


@pytest.fixture(scope="module")
def keyed(gateway_loop, gateway, catalog, triton_url):
    gw = side_gateway(gateway_loop, gateway, catalog, triton_url, api_keys=KEYS)
    yield gw
    gw.stop()


def call(channel: grpc.Channel, method: str, request, api_key: str | None):
    stub = channel.unary_unary(
        f"/aisle.v1.Aisle/{method}", request_serializer=lambda m: m.SerializeToString(), response_deserializer=bytes
    )
    metadata = () if api_key is None else (("x-api-key", api_key),)
    return stub(request, metadata=metadata, timeout=30)


@pytest.mark.parametrize("method", REQUESTS)
def test_every_rpc_refuses_a_missing_or_wrong_key(keyed, method):
    with grpc.insecure_channel(keyed.address) as channel:
        # Given a gateway with keys, when a caller presents none or a wrong one
        for api_key in WRONG_KEYS:
            err = rpc_error(call, channel, method, REQUESTS[method], api_key)
            # then the call is UNAUTHENTICATED, and the answer does not echo what was presented
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (method, api_key, err.details())
            assert err.details() in ("missing x-api-key metadata", "invalid x-api-key")
        # with a configured key the call gets through to the service (which answers as it would
        # without keys: NOT_FOUND for the unknown item, UNAVAILABLE for a model not exported)
        for api_key in KEYS:
            try:
                call(channel, method, REQUESTS[method], api_key)
            except grpc.RpcError as exc:
                assert exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE), (method, exc.details())


def test_an_unauthenticated_request_is_never_parsed(keyed):
    # Given bytes that are no request at all, without a key
    with grpc.insecure_channel(keyed.address) as channel:
        err = rpc_error(channel.unary_unary("/aisle.v1.Aisle/Search"), b"\xff\xff\xff\xff", timeout=30)
        # then the answer is UNAUTHENTICATED, not INVALID_ARGUMENT: the bytes were never read
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        # and an unknown method stays UNIMPLEMENTED, key or not
        err = rpc_error(channel.unary_unary("/aisle.v1.Aisle/DropTables"), b"", timeout=30)
        assert err.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_and_reflection_stay_open(keyed):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(keyed.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "aisle.v1.Aisle"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        # reflection describes the public API (what protos/aisle/v1/aisle.proto already says)
        assert "aisle.v1.Aisle" in ProtoReflectionDescriptorDatabase(channel).get_services()


class EverythingLogged(logging.Handler):
    """Every record of every logger, at DEBUG, with its arguments and exception text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(f"{record.name} {record.getMessage()} {record.__dict__!r}")


def test_keys_never_reach_logs_or_metrics(keyed, gateway_logs):
    # Given everything logged at DEBUG by every logger while callers use right and wrong keys
    handler = EverythingLogged()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    mark = gateway_logs.mark()
    wrong = "auth-key-wrong-0d9b4c17"
    try:
        with grpc.insecure_channel(keyed.address) as channel:
            for method, request in REQUESTS.items():
                for api_key in (*KEYS, wrong):
                    try:
                        call(channel, method, request, api_key)
                    except grpc.RpcError:
                        pass
        # (the calls were logged: the capture works)
        eventually(lambda: _access_lines(gateway_logs.since(mark), 3 * len(REQUESTS)))
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    logged = "\n".join(handler.texts) + "\n" + "\n".join(map(str, gateway_logs.since(mark)))
    # then no key is in any log line
    for secret in (*KEYS, wrong):
        assert secret not in logged
    # nor in the metrics the gateway serves, which did count the calls
    text = _metrics_text(keyed.metrics_port)
    for secret in (*KEYS, wrong):
        assert secret not in text
    assert metric(scrape(keyed.metrics_port), "grpc_server_handled_total", grpc_code="UNAUTHENTICATED") >= len(REQUESTS)


def _access_lines(lines: list[dict], n: int) -> None:
    assert len([line for line in lines if line.get("grpc_service") == "aisle.v1.Aisle"]) >= n


def _metrics_text(port: int) -> str:
    import urllib.request

    from aisle import processes

    with urllib.request.urlopen(f"http://{processes.LOOPBACK}:{port}/metrics", timeout=5) as r:
        return r.read().decode()
