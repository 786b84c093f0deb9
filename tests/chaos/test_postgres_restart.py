"""Postgres restarted under Search load: no call outlives its deadline while it is away, and
the gateway's connection pool recovers on its own (no gateway restart) once it is back."""

from __future__ import annotations

import time

import grpc
import pytest

from aisle import processes
from core.settings import load_settings
from tests.chaos.conftest import build_catalog
from tests.chaos.load import Load, summary
from tests.gateway.conftest import start_gateway

pytestmark = [pytest.mark.slow, pytest.mark.data]

DEADLINE_S = 2.0
# The client notices its deadline on a loaded 2-core machine a little late: scheduling slack.
DEADLINE_SLACK_S = 0.5
# How soon after Postgres answers again every call must succeed: the pool drops each broken
# connection on its first failed use and opens new ones in the background.
RECOVERY_S = 10.0
# Load before the fault, Postgres down time, and load kept up after recovery to show it holds.
WARM_S, DOWN_S, AFTER_S = 3.0, 3.0, 3.0


def test_given_search_load_when_postgres_restarts_then_no_call_hangs_and_the_pool_recovers(
    triton_url, chaos_loop, chaos_queries, tmp_path, chaos_record
):
    from core.db import prepare
    from core.embeddings import DEFAULT_VERSION

    # Given a gateway on a Postgres of this test's own (with the small catalog), under load
    port = processes.free_port()
    data, log = tmp_path / "pg", tmp_path / "pg.log"
    pg = processes.postgres(data, port, log).start(timeout=60)
    url = processes.postgres_url(port)
    prepare(url, DEFAULT_VERSION)
    build_catalog(url, triton_url, tmp_path)
    gw = start_gateway(chaos_loop, load_settings(database_url=url, triton_url=triton_url, api_keys=()))
    # Repeated queries: the embedding cache takes Triton out of the picture, the database is the subject.
    load = Load(gw.address, chaos_queries[:50], tasks=4, deadline_s=DEADLINE_S, unique_queries=False).start()
    try:
        time.sleep(WARM_S)
        # When Postgres stops (fast shutdown: every session is terminated) and starts again
        t_stop = time.monotonic()
        pg.stop()
        time.sleep(DOWN_S)
        pg = processes.postgres(data, port, log).start(timeout=60)
        t_back = time.monotonic()
        time.sleep(RECOVERY_S + AFTER_S)
    finally:
        calls = load.stop()
        stats = gw.server.engine.pool.get_stats()
        gw.stop()
        pg.stop()
    ok_after = [c for c in calls if c.started >= t_back and c.code == grpc.StatusCode.OK]
    recovered_s = min((c.ended for c in ok_after), default=float("inf")) - t_back
    chaos_record.update(summary(calls), postgres_down_s=round(t_back - t_stop, 1), recovery_s=round(recovered_s, 2))

    # Then no call outlived its deadline
    late = [c for c in calls if c.elapsed > c.deadline_s + DEADLINE_SLACK_S]
    assert not late, f"{len(late)} calls outlived their deadline: {late[:3]}; {summary(calls)}"
    # and none failed with anything but UNAVAILABLE, which clients retry (never INTERNAL, never
    # a traceback, never the caller's own deadline: the pool wait is bounded by the call's budget)
    failed = [c for c in calls if c.code != grpc.StatusCode.OK]
    assert {c.code for c in failed} <= {grpc.StatusCode.UNAVAILABLE}, summary(failed)
    assert all("Traceback" not in c.reason for c in failed)
    assert all(c.ended >= t_stop and c.started < t_back + RECOVERY_S for c in failed), summary(failed)
    # before the stop every call was answered
    assert all(c.code == grpc.StatusCode.OK for c in calls if c.ended < t_stop), summary(calls)
    # and from RECOVERY_S after Postgres is back, every call is answered again by the same pool
    settled = [c for c in calls if c.started >= t_back + RECOVERY_S]
    assert settled, "no calls after recovery"
    assert all(c.code == grpc.StatusCode.OK for c in settled), summary(settled)
    # with no caller left waiting for a connection
    assert stats.get("requests_waiting", 0) == 0, stats
