"""Prometheus metrics of the refresh jobs, read from Postgres at scrape time (so every worker
process and replica reports the same truth, without multiprocess counters)."""

from __future__ import annotations

import logging

import psycopg
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from core.db import DatabaseError, connect
from workers import dispatch
from workers.jobs.base import Deps

log = logging.getLogger(__name__)


class FreshnessCollector(Collector):
    def __init__(self, settings):
        self.settings = settings

    def collect(self):
        pending = GaugeMetricFamily("aisle_job_pending_rows", "Rows waiting for the job", labels=["job"])
        lag = GaugeMetricFamily("aisle_job_lag_seconds", "Age of the oldest unprocessed change", labels=["job"])
        last = GaugeMetricFamily(
            "aisle_job_last_run_finished_timestamp_seconds", "When the last run finished", labels=["job"]
        )
        rate = GaugeMetricFamily("aisle_job_last_run_rows_per_second", "Throughput of the last run", labels=["job"])
        try:
            with connect(self.settings.database_url, autocommit=True) as conn:
                rows = dispatch.freshness(Deps(conn, self.settings))
        except (DatabaseError, psycopg.Error, OSError) as exc:
            # A schema a migration has not reached yet, say: the scrape goes on without them.
            log.warning("metrics: cannot read job freshness: %s", exc)
            return
        for f in rows:
            pending.add_metric([f.job], f.pending)
            lag.add_metric([f.job], f.lag_s or 0.0)
            if f.last_run and f.last_run.finished_at:
                last.add_metric([f.job], f.last_run.finished_at.timestamp())
            if f.last_run and f.last_run.rate is not None:
                rate.add_metric([f.job], f.last_run.rate)
        yield from (pending, lag, last, rate)


def serve(settings, port: int, address: str = "0.0.0.0") -> None:
    from prometheus_client import REGISTRY, start_http_server

    REGISTRY.register(FreshnessCollector(settings))
    start_http_server(port, addr=address)
