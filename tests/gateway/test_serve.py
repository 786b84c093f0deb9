"""`aisle serve` as Kubernetes runs it: flags, JSON logs with request ids, metrics, and SIGTERM
-> NOT_SERVING -> a graceful stop."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aisle import processes
from gateway.client import AisleClient
from tests.gateway.conftest import metric, scrape, wait_serving

# These tests serve the real data of ../shared/data (skipped without it).
pytestmark = pytest.mark.data


def test_aisle_serve_logs_json_and_stops_gracefully_on_sigterm(catalog, triton_url, tmp_path):
    port, metrics_port = processes.free_port(), processes.free_port()
    env = dict(os.environ)
    env.update(
        AISLE_DATABASE_URL=catalog.url,
        AISLE_TRITON_URL=triton_url,
        AISLE_RUN_DIR=str(tmp_path / "run"),
        AISLE_LOG_FORMAT="json",
        AISLE_API_KEYS="",
    )
    argv = processes.aisle_command(
        "serve", "--address", f"{processes.LOOPBACK}:{port}", "--metrics-port", str(metrics_port), "--grace", "3"
    )
    address = f"{processes.LOOPBACK}:{port}"
    log_path = tmp_path / "gateway.log"

    def metrics_up() -> bool:
        with urllib.request.urlopen(f"http://{processes.LOOPBACK}:{metrics_port}/metrics", timeout=2) as r:
            return r.status == 200

    # Given `aisle serve` started with the chart's flags
    server = processes.ServerProcess("gateway", argv, log_path, metrics_up, env=env).start(timeout=60)
    try:
        wait_serving(address, "aisle.v1.Aisle", timeout=60)
        # it answers, and logs JSON lines carrying the request id
        with AisleClient(address, timeout_s=30) as client:
            assert client.search("cordless drill", page_size=3, request_id="serve-req-1").items
        assert metric(scrape(metrics_port), "grpc_server_handled_total", grpc_method="Search", grpc_code="OK") == 1

        # While a client watches its health (a call in flight)
        channel = grpc.insecure_channel(address)
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="aisle.v1.Aisle"), timeout=30
        )
        statuses = []
        first = next(watch)
        statuses.append(first.status)

        def follow():
            try:
                for update in watch:
                    statuses.append(update.status)
            except grpc.RpcError:
                pass

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        # when Kubernetes sends SIGTERM
        t0 = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)
        # then health turns NOT_SERVING at once, and the process exits within its grace
        server.popen.wait(timeout=25)
        elapsed = time.monotonic() - t0
        reader.join(5)
        channel.close()
        assert statuses[0] == health_pb2.HealthCheckResponse.SERVING
        assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses[1:], statuses
        assert server.popen.returncode == 0, log_path.read_text()[-2000:]
        # the watch in flight held the stop for the grace period (3 s), not longer
        assert 2.5 <= elapsed < 15, elapsed
    finally:
        server.stop(grace=5)

    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert lines, log_path.read_text()[-2000:]
    served = [line for line in lines if line.get("request_id") == "serve-req-1"]
    assert any(line.get("rpc") == "Search" and line.get("code") == "OK" for line in served)
    assert any("stopping" in line["message"] for line in lines)


def test_aisle_up_starts_the_gateway_and_waits_for_it_to_serve(catalog, triton_url, tmp_path):
    from aisle import stack
    from core.settings import load_settings

    settings = load_settings(database_url=catalog.url, triton_url=triton_url, run_dir=tmp_path / "run", api_keys=())
    # Given the starter `aisle up` runs for the gateway
    server, address = stack.SERVICES["gateway"](settings, tmp_path / "logs")
    # when it is started, it is ready only once aisle.v1.Aisle is SERVING
    server.start(timeout=60)
    try:
        with AisleClient(address, timeout_s=30) as client:
            assert client.health("aisle.v1.Aisle") == "SERVING"
            assert client.search("cordless drill", page_size=2).items
        # and the address recorded for the CLI (AISLE_GATEWAY_ADDRESS) is its gRPC host:port
        assert address.startswith(f"{processes.LOOPBACK}:")
    finally:
        server.stop(grace=10)
    assert server.popen.returncode == 0


def test_aisle_up_refuses_a_gateway_without_triton(catalog, tmp_path):
    from aisle import stack
    from core.settings import load_settings

    settings = load_settings(database_url=catalog.url, triton_url=None, run_dir=tmp_path / "run")
    try:
        stack.SERVICES["gateway"](settings, tmp_path / "logs")
    except stack.StackError as exc:
        assert "Triton" in str(exc)
    else:
        raise AssertionError("the gateway starter accepted settings without a Triton URL")
