"""The server around the API: health, reflection, API keys, request ids and logs, metrics,
internal errors, and the client's retry configuration."""

from __future__ import annotations

import json
import time

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.client import RETRIED_METHODS, SERVICE_CONFIG
from gateway.protos.aisle.v1 import aisle_pb2 as pb
from tests.gateway.conftest import (
    create_database,
    eventually,
    gateway_settings,
    metric,
    rpc_error,
    scrape,
    start_gateway,
    unique,
)

# These tests serve the real data of ../shared/data (skipped without it).
pytestmark = pytest.mark.data


# --- Health and reflection ----------------------------------------------------------------------

def test_health_reports_the_process_and_the_service(gateway):
    with grpc.insecure_channel(gateway.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "aisle.v1.Aisle"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        err = rpc_error(stub.Check, health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert err.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_describes_the_api(gateway):
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(gateway.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"aisle.v1.Aisle", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
        pool = DescriptorPool(database)
        service = pool.FindServiceByName("aisle.v1.Aisle")
        assert {m.name for m in service.methods} == {
            "Search", "Recommend", "SimilarItems", "ClassifyProduct", "AnalyzeReviews", "TrackEvent"
        }
        search = pool.FindMessageTypeByName("aisle.v1.SearchRequest")
        assert {"query", "user_id", "filters", "page_size", "page_token", "explain"} <= set(search.fields_by_name)


# --- Request ids and logs ---------------------------------------------------------------------

def _call_with_metadata(address: str, request: pb.SearchRequest, metadata=()):
    from gateway.protos.aisle.v1 import aisle_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        response, call = aisle_pb2_grpc.AisleStub(channel).Search.with_call(request, metadata=metadata, timeout=30)
        return response, dict(call.trailing_metadata())


def test_request_ids_come_back_in_trailers_and_mark_every_log_line(gateway, gateway_logs):
    # Given a client that names its request
    mark = gateway_logs.mark()
    _, headers = _call_with_metadata(
        gateway.address, pb.SearchRequest(query="cordless drill", page_size=3), (("x-request-id", "trace-1234"),)
    )
    # then the server answers under that id
    assert headers["x-request-id"] == "trace-1234"
    lines = [line for line in gateway_logs.since(mark) if line["logger"].startswith("gateway")]
    mine = [line for line in lines if line["request_id"] == "trace-1234"]
    # and its access line is a JSON object with the method, status and duration
    access = [line for line in mine if line.get("rpc") == "Search"]
    assert len(access) == 1
    assert access[0]["code"] == "OK" and access[0]["duration_ms"] > 0
    # every gateway line logged while serving it carries the id
    assert all(line["request_id"] == "trace-1234" for line in lines if line.get("rpc") != "Check"), lines

    # A request without an id (or with one that could forge log lines) gets a fresh one
    for metadata in ((), (("x-request-id", 'bad id "x" {'),), (("x-request-id", "y" * 65),)):
        _, headers = _call_with_metadata(gateway.address, pb.SearchRequest(query="hammer", page_size=1), metadata)
        assert len(headers["x-request-id"]) == 32 and headers["x-request-id"] != "trace-1234"


@pytest.fixture(scope="module")
def broken_gateway(gateway_loop, postgres_server, catalog, triton_url):
    """A gateway over a database whose schema lost a table the search pipeline reads: every
    Search fails inside the engine with an error nobody planned for."""
    url = create_database(postgres_server, unique("broken").replace("-", "_"))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE kg_aliases")
    settings = gateway_settings(catalog, triton_url).model_copy(update={"database_url": url})
    gw = start_gateway(gateway_loop, settings)
    yield gw
    gw.stop()


def test_an_unexpected_failure_is_internal_without_a_traceback(broken_gateway, gateway_logs):
    mark = gateway_logs.mark()
    with broken_gateway.client() as client:
        err = rpc_error(client.search, "cordless drill", request_id="broken-1")
    # the caller gets INTERNAL and the request id to quote, nothing of the server's insides
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == "internal error (request id broken-1)"
    assert ("x-request-id", "broken-1") in tuple(err.trailing_metadata())
    # the log has the traceback, under the same request id
    def logged():
        lines = [line for line in gateway_logs.since(mark) if line["request_id"] == "broken-1"]
        errors = [line for line in lines if line["level"] == "ERROR" and "exc" in line]
        assert errors and "Traceback" in errors[0]["exc"] and "kg_aliases" in errors[0]["exc"]
        assert any(line.get("code") == "INTERNAL" for line in lines)

    eventually(logged)


# --- API keys -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keyed_gateway(gateway_loop, catalog, triton_url):
    settings = gateway_settings(catalog, triton_url).model_copy(update={"api_keys": ("key-one-1234", "key-two-5678")})
    gw = start_gateway(gateway_loop, settings)
    yield gw
    gw.stop()


def test_api_keys_are_required_when_configured(keyed_gateway, gateway_logs):
    mark = gateway_logs.mark()
    # Without a key, or with a wrong one, every Aisle method is UNAUTHENTICATED
    for api_key in (None, "key-one-123", "key-one-12345", ""):
        with keyed_gateway.client(api_key=api_key) as client:
            for call, args in ((client.search, ("drill",)), (client.track_event, ("u", "100001", "view")),
                               (client.classify_product, (["milk"],))):
                err = rpc_error(call, *args)
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (api_key, call.__name__)
    # with any configured key it answers
    with keyed_gateway.client(api_key="key-two-5678") as client:
        assert client.search("drill", page_size=2).items
    # health and reflection stay open (probes and grpcurl carry no key)
    with keyed_gateway.client() as client:
        assert client.health("") == "SERVING"
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(keyed_gateway.address) as channel:
        assert "aisle.v1.Aisle" in ProtoReflectionDescriptorDatabase(channel).get_services()
    # and no key, right or wrong, reaches the logs
    text = json.dumps(gateway_logs.since(mark))
    assert "key-one" not in text and "key-two" not in text


def test_without_api_keys_configured_no_key_is_needed(client):
    assert client.search("drill", page_size=1).items


# --- Metrics ------------------------------------------------------------------------------------

def test_metrics_count_calls_codes_stages_and_the_query_cache(gateway, client, catalog):
    before = scrape(gateway.metrics_port)
    query = unique("metrics drill")
    client.search(query, page_size=3)
    client.search(query, page_size=3)  # the same query again: its embedding is cached
    rpc_error(client.search, " ")
    client.recommend("metrics-user", k=3)
    eventually(lambda: check_metrics(gateway, before, catalog))


def check_metrics(gateway, before, catalog):
    after = scrape(gateway.metrics_port)

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("grpc_server_handled_total", grpc_method="Search", grpc_code="OK") == 2
    assert delta("grpc_server_handled_total", grpc_method="Search", grpc_code="INVALID_ARGUMENT") == 1
    assert delta("grpc_server_handled_total", grpc_method="Recommend", grpc_code="OK") == 1
    assert delta("grpc_server_handling_seconds_count", grpc_method="Search") == 3
    assert delta("grpc_server_handling_seconds_bucket", grpc_method="Search", le="+Inf") == 3
    # the pipeline's stages, from the engine's own timings
    assert delta("aisle_gateway_stage_seconds_count", rpc="Search", stage="retrieve") == 2
    assert delta("aisle_gateway_stage_seconds_count", rpc="Search", stage="embed") == 2
    # one miss (first time) and one hit (second time)
    assert delta("aisle_gateway_query_cache_misses_total") == 1
    assert delta("aisle_gateway_query_cache_hits_total") == 1
    # degraded answers are counted by RPC (the test repository may lack the ranker)
    degraded = delta("aisle_gateway_degraded_total", rpc="Search")
    assert degraded in (0, 2)
    # and the process collector the dashboard reads is there
    assert metric(after, "process_resident_memory_bytes") > 0
    # and what the gateway holds in memory: every item of the catalog, in the table and its graph
    # (summed over the process's engines, so at least the catalog)
    assert metric(after, "aisle_gateway_item_table_items", state="held") >= catalog.items
    assert metric(after, "aisle_gateway_item_table_items", state="graph") > 0


# --- Deadlines ----------------------------------------------------------------------------------

def test_a_short_deadline_is_answered_within_it(client):
    # Given a caller that can wait 2 s, when it searches a query never seen before
    t0 = time.monotonic()
    response = client.search(unique("deadline cordless drill"), page_size=5, timeout_s=2.0)
    elapsed = time.monotonic() - t0
    # then it gets an answer (degraded or not) before its deadline
    assert elapsed < 2.0
    assert response.items


# --- Client -------------------------------------------------------------------------------------

def test_the_client_retries_only_idempotent_reads_on_unavailable():
    [config] = SERVICE_CONFIG["methodConfig"]
    retried = {n["method"] for n in config["name"]}
    assert retried == set(RETRIED_METHODS) == {"Search", "Recommend", "SimilarItems", "ClassifyProduct", "AnalyzeReviews"}
    assert "TrackEvent" not in retried
    assert config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert config["retryPolicy"]["maxAttempts"] >= 2
