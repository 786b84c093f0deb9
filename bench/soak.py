"""Soak: the local stack under mixed traffic for N minutes while a full embedding refresh and
a profile refresh run, watching for failures, latency drift, memory growth and lost events.

    python bench/soak.py [--minutes 10] [--qps Q] [--items N] [--deadline 2] [--json]

The stack is `aisle up`'s (Postgres, Redis, Triton on model_repository/, worker, beat, gateway)
in a run folder of its own, stopped at the end. It serves the Home Depot catalog (all 54,667
products, or the first ``--items``) and the Scientific items with their purchase histories (the
users Recommend asks for), loaded but not embedded: the embedding and profile refreshes and a
knowledge-graph rebuild start with the traffic, so they run under it, as after a catalog import
in production (`aisle refresh all --celery`).

Traffic is open-loop at ``--qps`` (default: 70% of the highest Search QPS in the latest
bench/results/gateway-*.json): Search 70% (WANDS and Home Depot queries), Recommend 20% (users
with a history, and users this run tracked), TrackEvent 10%. Every TrackEvent goes to a user id
of its own (``soak-<run>-<n>``), so the events table says, per call, whether it was stored
once, twice or not at all.

Goals: no failed request (a degraded answer is not a failure: it says what it left out); p99
of the last minute within 20% of the first; resident memory of the serving processes within
10% from the end of the first (warm-up) minute to the end; every acknowledged TrackEvent stored
exactly once. Drift and growth need two minutes or more ("not measured" otherwise).
"""

from __future__ import annotations

import asyncio
import csv
import json
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import psycopg
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aisle import processes  # noqa: E402
from bench.common import DATA, RESULTS, machine, require, tree_cpu_s, tree_rss_mb, write_result  # noqa: E402

MIX = (("search", 0.7), ("recommend", 0.2), ("track", 0.1))
# Share of the gateway benchmark's best Search QPS the soak offers (the 70%).
QPS_SHARE = 0.7
# Requests allowed in flight before the client itself is the bottleneck; beyond it a request is
# counted as "skipped" rather than queued, so open-loop pacing stays honest.
MAX_IN_FLIGHT = 256
# Goals (the numbers).
MAX_P99_DRIFT = 0.20
MAX_MEMORY_GROWTH = 0.10
# Processes whose memory growth is a goal. Postgres is reported, not judged: its resident size
# grows as shared buffers are touched for the first time, which is caching, not a leak.
JUDGED_MEMORY = ("gateway", "worker", "tritonserver")
MEASURED_PROCESSES = ("gateway", "worker", "tritonserver", "postgres")
SEED = 0
# Statements slower than this are logged by the soak's Postgres (a search's queries take
# 1-20 ms when the machine is quiet).
SLOW_STATEMENT_MS = 250


# --- Workload --------------------------------------------------------------------------------

def read_queries() -> list[str]:
    with open(require(DATA / "homedepot" / "queries_dev.csv"), encoding="utf-8", newline="") as f:
        queries = [r["query"] for r in csv.DictReader(f)]
    with open(require(DATA / "wands" / "query.csv"), encoding="utf-8", newline="") as f:
        queries += [r["query"] for r in csv.DictReader(f, delimiter="\t")]
    random.Random(SEED).shuffle(queries)
    return queries


def default_qps() -> float | None:
    """70% of the best gateway Search QPS of the latest gateway benchmark, if there is one."""
    runs = sorted(RESULTS.glob("gateway-*.json"))
    if not runs:
        return None
    result = json.loads(runs[-1].read_text())
    best = max((row["gateway"]["qps"] for row in result.get("search", []) if row["gateway"].get("qps")), default=None)
    return best * QPS_SHARE if best else None


class Traffic:
    """Open-loop mixed traffic at a fixed rate, every call recorded as (start, rpc, code,
    latency, degraded)."""

    def __init__(self, address: str, qps: float, deadline_s: float, queries: list[str], users: list[str],
                 items: list[str], run_id: str):
        self.address, self.qps, self.deadline_s = address, qps, deadline_s
        self.queries, self.users, self.items, self.run_id = queries, users, items, run_id
        self.rng = random.Random(SEED)
        self.records: list[tuple[float, str, str, float, bool]] = []
        self.skipped = 0
        # Why answers were degraded (reason text without the bracketed error detail), with counts.
        self.degraded_reasons: dict[str, int] = {}
        self.tracked_ok: list[str] = []
        self.tracked_failed: list[str] = []
        self._events = 0
        self._in_flight = 0

    async def run(self, seconds: float) -> None:
        import grpc

        from gateway.protos.aisle.v1 import aisle_pb2 as pb
        from gateway.protos.aisle.v1 import aisle_pb2_grpc

        self.t0 = time.monotonic()
        pending: set[asyncio.Task] = set()
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = aisle_pb2_grpc.AisleStub(channel)
            n = 0
            while True:
                due = self.t0 + n / self.qps
                if due - self.t0 >= seconds:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                n += 1
                if self._in_flight >= MAX_IN_FLIGHT:
                    self.skipped += 1
                    continue
                task = asyncio.create_task(self._one(stub, pb, grpc))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)

    async def _one(self, stub, pb, grpc) -> None:
        rpc = self.rng.choices([m for m, _ in MIX], [w for _, w in MIX])[0]
        self._in_flight += 1
        t = time.monotonic()
        degraded, user = False, None
        try:
            if rpc == "search":
                reply = await stub.Search(pb.SearchRequest(query=self.rng.choice(self.queries), page_size=10),
                                          timeout=self.deadline_s)
                degraded = self._degraded(reply)
            elif rpc == "recommend":
                pool = self.tracked_ok if self.tracked_ok and self.rng.random() < 0.5 else self.users
                reply = await stub.Recommend(pb.RecommendRequest(user_id=self.rng.choice(pool), k=10),
                                             timeout=self.deadline_s)
                degraded = self._degraded(reply)
            else:
                self._events += 1
                user = f"soak-{self.run_id}-{self._events}"
                await stub.TrackEvent(pb.TrackEventRequest(user_id=user, item_id=self.rng.choice(self.items),
                                                           type=pb.EVENT_TYPE_VIEW), timeout=self.deadline_s)
                self.tracked_ok.append(user)
            code = "OK"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            if user is not None:
                self.tracked_failed.append(user)
        finally:
            self._in_flight -= 1
        self.records.append((t - self.t0, rpc, code, time.monotonic() - t, degraded))

    def _degraded(self, reply) -> bool:
        for reason in filter(None, (r.split("(")[0].strip() for r in reply.degraded_reason.split(";"))):
            self.degraded_reasons[reason] = self.degraded_reasons.get(reason, 0) + 1
        return reply.degraded


# --- Watching the stack ----------------------------------------------------------------------

def rss_by_process(pids: dict[str, int]) -> dict[str, float | None]:
    """Resident MB of each process with its children (Triton's stubs, Celery's pool, Postgres
    backends)."""
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = round(tree_rss_mb(pid), 1)
        except psutil.NoSuchProcess:
            out[name] = None
    return out


def cpu_by_process(pids: dict[str, int]) -> dict[str, float | None]:
    """CPU seconds used so far by each process with its children."""
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = tree_cpu_s(pid)
        except psutil.NoSuchProcess:
            out[name] = None
    return out


def refresh_progress(url: str) -> dict:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT DISTINCT ON (job) job, total, done, finished_at IS NOT NULL FROM job_runs "
            "WHERE job IN ('embeddings', 'profiles') ORDER BY job, id DESC"
        ).fetchall()
    return {job: {"done": done, "total": total, "finished": finished} for job, total, done, finished in rows}


async def watch(seconds: float, pids: dict[str, int], url: str, say) -> list[dict]:
    """One sample per minute (and one at the very end): memory, cores used since the last
    sample (who took the machine when calls ran late) and refresh progress."""
    samples, t0 = [], time.monotonic()
    minute, cpu, at = 0, cpu_by_process(pids), t0
    while True:
        await asyncio.sleep(min(60.0, max(0.0, t0 + seconds - time.monotonic())))
        minute += 1
        now_cpu, now = cpu_by_process(pids), time.monotonic()
        cores = {name: round((now_cpu[name] - cpu[name]) / (now - at), 2) if now_cpu[name] is not None
                 and cpu[name] is not None else None for name in pids}
        cpu, at = now_cpu, now
        sample = {"minute": minute, "t_s": round(now - t0, 1), "rss_mb": rss_by_process(pids), "cores": cores,
                  "refresh": await asyncio.to_thread(refresh_progress, url)}
        samples.append(sample)
        say(f"minute {minute}: rss {sample['rss_mb']} cores {cores} refresh {sample['refresh']}")
        if time.monotonic() - t0 >= seconds - 1:
            return samples


# --- Results -----------------------------------------------------------------------------------

def per_minute(records, minutes: int) -> list[dict]:
    out = []
    for m in range(minutes):
        rows = [r for r in records if m * 60 <= r[0] < (m + 1) * 60]
        ok = [r[3] * 1000 for r in rows if r[2] == "OK"]
        out.append({
            "minute": m + 1,
            "sent": len(rows),
            "answered": len(ok),
            "failed": len(rows) - len(ok),
            "degraded": sum(r[4] for r in rows),
            "p50_ms": float(np.percentile(ok, 50)) if ok else None,
            "p99_ms": float(np.percentile(ok, 99)) if ok else None,
            **{f"{rpc}_p99_ms": (float(np.percentile(v, 99)) if (v := [r[3] * 1000 for r in rows if r[1] == rpc
                                                                         and r[2] == "OK"]) else None)
               for rpc, _ in MIX},
        })
    return out


def events_stored(url: str, run_id: str) -> dict[str, int]:
    """Rows in events per soak user of this run (the user id is the marker)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT u.external_id, count(e.id) FROM users u LEFT JOIN events e ON e.user_id = u.id "
            "WHERE u.external_id LIKE %s GROUP BY u.external_id",
            (f"soak-{run_id}-%",),
        ).fetchall()
    return dict(rows)


def check_goals(minutes: list[dict], samples: list[dict], failed: int, tracked_ok: list[str],
                stored: dict[str, int]) -> dict:
    goals: dict[str, dict] = {"no_failed_requests": {"goal": "== 0", "value": failed, "pass": failed == 0}}
    first, last = minutes[0]["p99_ms"], minutes[-1]["p99_ms"]
    if len(minutes) >= 2 and first and last:
        drift = (last - first) / first
        goals["p99_drift_first_to_last_minute"] = {"goal": f"<= {MAX_P99_DRIFT}", "value": round(drift, 3),
                                                   "pass": drift <= MAX_P99_DRIFT}
    else:
        goals["p99_drift_first_to_last_minute"] = {"goal": f"<= {MAX_P99_DRIFT}", "value": None, "pass": None,
                                                   "note": "not measured: needs two minutes"}
    # Warm-up is the first minute: growth is from its end to the last sample.
    if len(samples) >= 2:
        for name in JUDGED_MEMORY:
            start, end = samples[0]["rss_mb"].get(name), samples[-1]["rss_mb"].get(name)
            growth = (end - start) / start if start and end else None
            goals[f"memory_growth_{name}"] = {"goal": f"<= {MAX_MEMORY_GROWTH}", "value": growth and round(growth, 3),
                                              "pass": growth is not None and growth <= MAX_MEMORY_GROWTH}
    else:
        goals["memory_growth"] = {"goal": f"<= {MAX_MEMORY_GROWTH}", "value": None, "pass": None,
                                  "note": "not measured: needs two minutes"}
    lost = [u for u in tracked_ok if stored.get(u, 0) == 0]
    twice = [u for u, n in stored.items() if n > 1]
    goals["track_events_stored_once"] = {"goal": "lost == 0 and duplicated == 0", "acknowledged": len(tracked_ok),
                                         "lost": len(lost), "duplicated": len(twice),
                                         "pass": not lost and not twice}
    return goals


# --- Main ----------------------------------------------------------------------------------------

def main(
    minutes: int = typer.Option(10, min=1, help="Minutes of traffic."),
    qps: float = typer.Option(None, min=0.1, help="Requests per second (default: 70% of the latest gateway benchmark's best Search QPS)."),
    items: int = typer.Option(None, min=1, help="Only the first N Home Depot products (default: all 54,667)."),
    deadline: float = typer.Option(2.0, min=0.1, help="Deadline of each call, seconds."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    processes.interrupt_on_sigterm()
    from aisle import stack
    from core.settings import load_settings
    from workers.app import create_app
    from workers.loading import load

    products = DATA / "homedepot" / "products.csv"
    for path in (products, DATA / "homedepot" / "queries_dev.csv", DATA / "wands" / "query.csv",
                 DATA / "scientific" / "items.csv", DATA / "scientific" / "interactions.csv"):
        require(path)
    if qps is None:
        qps = default_qps()
        if qps is None:
            sys.exit("no bench/results/gateway-*.json to take 70% of its best QPS from: run bench/gateway.py or pass --qps")

    def say(message: str) -> None:
        print(message, file=sys.stderr if as_json else sys.stdout, flush=True)

    run_id = uuid.uuid4().hex[:8]
    result: dict = {"machine": machine(), "minutes": minutes, "qps": qps, "deadline_s": deadline, "mix": dict(MIX),
                    "run_id": run_id}
    with tempfile.TemporaryDirectory(prefix="aisle-soak-") as tmp:
        tmp = Path(tmp)
        # A stack of its own: only what this run started, and none of the environment's addresses.
        settings = load_settings(run_dir=tmp / "run", database_url=None, redis_url=None, triton_url=None,
                                 api_keys=())
        state = stack.up(settings, say=say)
        try:
            filled = stack.stack_settings(settings)
            url = filled.database_url
            with psycopg.connect(url, autocommit=True) as conn:
                # Slow statements go to the Postgres log kept with the results, to tell which
                # query a late call waited on.
                conn.execute(f"ALTER SYSTEM SET log_min_duration_statement = {SLOW_STATEMENT_MS}")
                # ... and what else can hold the machine or a lock: checkpoints, autovacuum, waits.
                for setting in ("log_checkpoints = on", f"log_autovacuum_min_duration = {SLOW_STATEMENT_MS}",
                                "log_lock_waits = on"):
                    conn.execute(f"ALTER SYSTEM SET {setting}")
                conn.execute("SELECT pg_reload_conf()")
            t = time.perf_counter()
            if items:
                subset = tmp / "products.csv"
                with open(products, encoding="utf-8", newline="") as f, open(subset, "w", encoding="utf-8", newline="") as out:
                    for i, line in enumerate(f):
                        if i > items:
                            break
                        out.write(line)
                products = subset
            for kind, path in (("homedepot", products), ("scientific-items", DATA / "scientific" / "items.csv"),
                               ("scientific-interactions", DATA / "scientific" / "interactions.csv")):
                load(kind, path, url)
            result["load_seconds"] = round(time.perf_counter() - t, 1)
            with psycopg.connect(url) as conn:
                result["catalog_items"] = conn.execute("SELECT count(*) FROM items").fetchone()[0]
                users = [r[0] for r in conn.execute("SELECT external_id FROM users ORDER BY id LIMIT 5000")]
                item_ids = [r[0] for r in conn.execute("SELECT external_id FROM items ORDER BY id")]
            say(f"loaded {result['catalog_items']} items, {len(users)} users in {result['load_seconds']} s; "
                f"{minutes} min at {qps:.1f} qps")

            # The refreshes start with the traffic (beat keeps ticking them, as in production).
            app = create_app(filled)
            app.send_task("aisle.tick", args=("embeddings",), queue="triton")
            app.send_task("aisle.tick", args=("profiles",), queue="db")
            # ... and the knowledge graph, as `aisle refresh all` does after an import. Left to
            # beat's first 5-minute tick, the graph appeared mid-run and every later search
            # did more work (graph candidates; the gateway's CPU doubled from minute 6), which
            # the first-to-last-minute drift then measured as degradation (+25 % in one run).
            app.send_task("aisle.rebuild_graph", args=(True,), queue="db")
            pids = {name: state[name].pid for name in MEASURED_PROCESSES if name in state}
            traffic = Traffic(state["gateway"].address, qps, deadline, read_queries(), users, item_ids, run_id)

            async def soak():
                return await asyncio.gather(traffic.run(minutes * 60), watch(minutes * 60, pids, url, say))

            _, samples = asyncio.run(soak())
            stored = events_stored(url, run_id)
        finally:
            stack.down(settings, say=say)
            logs = RESULTS / f"soak-{time.strftime('%Y%m%d-%H%M%S')}-logs"
            shutil.copytree(tmp / "run" / "logs", logs, dirs_exist_ok=True)
            say(f"logs kept in {logs}")

    records = traffic.records
    by_status: dict[str, dict[str, int]] = {}
    for _, rpc, code, _, _ in records:
        by_status.setdefault(rpc, {}).setdefault(code, 0)
        by_status[rpc][code] += 1
    failed = sum(1 for r in records if r[2] != "OK")
    minutes_table = per_minute(records, minutes)
    result.update(
        sent=len(records) + traffic.skipped,
        answered=len(records) - failed,
        failed=failed,
        skipped_client_saturated=traffic.skipped,
        degraded=sum(r[4] for r in records),
        degraded_reasons=traffic.degraded_reasons,
        by_status=by_status,
        per_minute=minutes_table,
        samples=samples,
        events={"acknowledged": len(traffic.tracked_ok), "failed": len(traffic.tracked_failed),
                "rows": sum(stored.values())},
    )
    result["goals"] = check_goals(minutes_table, samples, failed, traffic.tracked_ok, stored)
    path = write_result("soak", result)
    if as_json:
        print(json.dumps(result))
        return
    print(f"soak {minutes} min at {qps:.1f} qps on {result['catalog_items']} items, "
          f"{result['machine']['cpus']} CPUs: sent {result['sent']}, answered {result['answered']}, "
          f"failed {failed}, degraded {result['degraded']}, skipped {traffic.skipped}")
    print(f"  degraded because: {traffic.degraded_reasons}")
    for rpc, codes in by_status.items():
        print(f"  {rpc:<9} " + ", ".join(f"{code} {n}" for code, n in sorted(codes.items())))
    print(f"{'min':>3} {'sent':>6} {'ok':>6} {'fail':>5} {'degr':>5} {'p50 ms':>8} {'p99 ms':>8}  rss MB / refresh")
    for row, sample in zip(minutes_table, samples):
        p50 = f"{row['p50_ms']:.1f}" if row["p50_ms"] is not None else "-"
        p99 = f"{row['p99_ms']:.1f}" if row["p99_ms"] is not None else "-"
        print(f"{row['minute']:>3} {row['sent']:>6} {row['answered']:>6} {row['failed']:>5} {row['degraded']:>5} "
              f"{p50:>8} {p99:>8}  {sample['rss_mb']}  {sample['refresh']}")
    for name, goal in result["goals"].items():
        verdict = "n/a" if goal["pass"] is None else ("PASS" if goal["pass"] else "FAIL")
        value = goal["value"] if "value" in goal else {k: goal[k] for k in ("acknowledged", "lost", "duplicated")}
        print(f"  {verdict:<4} {name}: {value} (goal {goal['goal']}) {goal.get('note', '')}")
    print(f"wrote {path}")


if __name__ == "__main__":
    typer.run(main)
