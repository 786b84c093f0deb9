"""`aisle serve` SIGTERMed under Search load, as Kubernetes stops a pod: the calls it had
accepted finish (answered, not cut off) within the grace period, new connections are refused
cleanly with UNAVAILABLE, and the process exits 0."""

from __future__ import annotations

import os
import signal
import time
import urllib.request

import grpc
import pytest

from aisle import processes
from gateway.client import AisleClient
from tests.chaos.load import Load, summary
from tests.gateway.conftest import wait_serving

pytestmark = [pytest.mark.slow, pytest.mark.data]

GRACE_S = 5.0
# Enough concurrent callers on two cores that calls queue up in the gateway: some are always
# mid-pipeline when the signal lands. A call lasts about TASKS / throughput; with 12 callers and
# the faster pipeline of 2026-11-29 the slowest call took 94 ms, shorter than ACCEPT_RACE_S, so
# none was both accepted and still running at the signal.
TASKS = 48
DEADLINE_S = 10.0
# A call sent this close to the signal may reach a server that already stopped accepting:
# UNAVAILABLE is then the right answer. Calls sent earlier were accepted and must be answered.
ACCEPT_RACE_S = 0.1
# Interpreter exit and the engine's pool close come on top of the grace period.
EXIT_SLACK_S = 5.0
# Scheduling slack on a loaded 2-core machine for "ended within the grace period".
END_SLACK_S = 1.0
# A refusal is immediate; this allows for the loaded machine, and is far below any deadline.
REFUSE_S = 2.0
WARM_S = 3.0


def test_given_search_load_when_the_gateway_gets_sigterm_then_accepted_calls_finish_and_new_ones_are_refused(
    chaos_catalog, triton_url, tmp_path, chaos_queries, chaos_record
):
    # Given `aisle serve` with a 5 s grace period, under Search load
    port, metrics_port = processes.free_port(), processes.free_port()
    address = f"{processes.LOOPBACK}:{port}"
    env = dict(os.environ, AISLE_DATABASE_URL=chaos_catalog, AISLE_TRITON_URL=triton_url,
               AISLE_RUN_DIR=str(tmp_path / "run"), AISLE_API_KEYS="")
    argv = processes.aisle_command("serve", "--address", address, "--metrics-port", str(metrics_port),
                                   "--grace", str(GRACE_S))

    def metrics_up() -> bool:
        with urllib.request.urlopen(f"http://{processes.LOOPBACK}:{metrics_port}/metrics", timeout=2) as r:
            return r.status == 200

    server = processes.ServerProcess("gateway", argv, tmp_path / "gateway.log", metrics_up, env=env).start(timeout=60)
    load = None
    try:
        wait_serving(address, timeout=60)
        load = Load(address, chaos_queries, tasks=TASKS, deadline_s=DEADLINE_S, unique_queries=False).start()
        time.sleep(WARM_S)
        # When it gets SIGTERM
        t_term = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)
        # then a new connection made during the grace period (half a second in) is refused at
        # once, cleanly
        time.sleep(0.5)
        with AisleClient(address, timeout_s=3) as fresh:
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as refused:
                fresh.search("cordless drill")
            refused_in = time.monotonic() - t0
        server.popen.wait(timeout=GRACE_S + EXIT_SLACK_S + 10)
        exited_in = time.monotonic() - t_term
        # and after the exit too
        with AisleClient(address, timeout_s=3) as late, pytest.raises(grpc.RpcError) as after_exit:
            late.search("cordless drill")
    finally:
        calls = load.stop() if load is not None else []
        server.stop(grace=5)
    in_flight = [c for c in calls if c.started < t_term < c.ended]
    chaos_record.update(summary(calls), in_flight_at_sigterm=len(in_flight), exit_s=round(exited_in, 2),
                        grace_s=GRACE_S,
                        cancelled_details=sorted({c.reason for c in calls if c.code == grpc.StatusCode.CANCELLED}))

    log = (tmp_path / "gateway.log").read_text(errors="replace")[-3000:]
    assert server.popen.returncode == 0, log
    assert exited_in <= GRACE_S + EXIT_SLACK_S, f"exit took {exited_in:.1f}s; {log}"
    # Every call the server had accepted was answered, none cut off or failed
    accepted = [c for c in calls if c.started < t_term - ACCEPT_RACE_S]
    assert all(c.code == grpc.StatusCode.OK for c in accepted), summary(accepted)
    # some were in the middle of their pipeline when the signal came (else this proves nothing)
    assert any(c.started < t_term - ACCEPT_RACE_S < t_term < c.ended for c in calls), summary(in_flight)
    # and they all ended within the grace period
    assert all(c.ended <= t_term + GRACE_S + END_SLACK_S for c in calls if c.started < t_term), summary(calls)
    # calls made after the signal on the load's open connections were answered or refused at
    # once: UNAVAILABLE, or CANCELLED for a call that reached grpc's core after the drain
    # (gateway/drain.py), as the server shut down (the core cancels those, grpc/grpc#41785)
    after = [c for c in calls if c.started >= t_term]
    codes = {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert {c.code for c in after} <= codes, summary(after)
    assert all(c.elapsed < REFUSE_S for c in after if c.code != grpc.StatusCode.OK), summary(after)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
    assert refused_in < REFUSE_S, f"a new connection took {refused_in:.1f}s to be refused"
    assert after_exit.value.code() == grpc.StatusCode.UNAVAILABLE, after_exit.value
