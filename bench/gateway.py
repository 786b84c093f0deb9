"""Gateway latency and throughput: Search and Recommend through gRPC against a direct
in-process call of the same pipelines (``gateway.engine.Engine``), at several concurrencies.

    python bench/gateway.py [--json] [--reuse] [--items N] [--requests N] [--concurrency 1,4,16,64]

What it serves:
- the Home Depot catalog (all 54,667 products, or the first ``--items``), loaded and refreshed
  (embeddings, profiles, knowledge graph);
- for Recommend, the Scientific items and the real purchase histories on them (the `train` and
  `valid` rows, 8,442 users): Home Depot has no events, and histories a real user made are a
  more honest load than invented ones. Profiles and the co-occurrence graph are refreshed
  before measuring, as in steady state; the requests go to users drawn (seeded) among those with
  a history, each user at most once per run.

Where: with ``--reuse`` (or AISLE_DATABASE_URL/AISLE_TRITON_URL set) the running stack's
Postgres and Triton, where whatever of the above is missing is loaded (the loaders are
idempotent, refreshes incremental); otherwise a Postgres and a Triton of the benchmark's own,
started and stopped here as bench/refresh.py does. Either way the gateway under test is a fresh
`aisle serve` process of its own (a stack's gateway may already hold a warm query cache), so the
client (this process) and the server do not share an interpreter.

Workload: real queries, WANDS (480) and Home Depot (5,902) interleaved, deduplicated as the query
cache normalises them. Cache cold: every request of a run is a query no earlier request to that
target asked (each concurrency level takes its own slice), so each Search pays for its query
embedding; the measured cache hit rate is printed with each run. Closed loop: ``c`` clients
each send their next request when the previous one answers; QPS = answered / wall time.

Time per stage: the gateway's Prometheus histogram ``aisle_gateway_stage_seconds`` (sum per
stage over the run, scraped from its metrics port before and after) over
``grpc_server_handling_seconds`` (servicer included); "other" is the remainder: validation,
the lexicon/spelling step, protobuf. For the in-process baseline the pipeline's own stage
timings (``Ranked.stage_ms``) over the wall time of each call.

CPU per call: for each gateway run, the CPU time (user and system apart) of Postgres with its
backends, Triton with its Python stubs and the gateway process, over the calls answered. On
2 cores 100 QPS leaves 20 ms for all three; system time is where spinning threads show.

On 2 cores the benchmark's own CPU competes with the servers': ``bench cpu`` is this process's
CPU time over the run's wall time: for the gateway rows the client alone (protobuf, grpc.aio),
for the in-process rows the pipeline and its callers. A run's latencies count answered calls
only; ``err`` counts the others (mostly DEADLINE_EXCEEDED past the 1 s deadline), ``degr`` the
answers given with degraded=true (the reason is printed under the table).

Recommend twice: ``recommend`` is the pipeline (the recommendation cache off in the gateway and
the engine measured), ``recommend_cached`` what a user whose cached list is fresh gets (a second
gateway and engine with the cache on; each slice's users are asked once, unmeasured, first, as
the workers' warm-up would have). ``cache`` is then the recommendation cache's hit rate.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import os
import random
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import grpc
import psutil
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aisle import processes  # noqa: E402
from bench.common import DATA, latency_stats, machine, require, write_result  # noqa: E402

# Goals of the gateway issue, on this 2-core machine, query cache cold.
GOALS = {
    "search_p99_ms_at_c4": 60.0,
    "search_qps_at_c16": 100.0,
    "recommend_p99_ms_at_c4": 40.0,
    "recommend_cached_p99_ms_at_c4": 40.0,
}
# What --rpc takes (the module's docstring says how the two Recommends differ).
RPCS = ("search", "recommend", "recommend_cached")
# Deadline a client gives each call (seconds): the engine splits it among its stages, as it does
# for production callers. Late answers count as errors (DEADLINE_EXCEEDED), not as latencies cut short.
DEADLINE_S = 1.0
# Requests sent before measuring (connection pools, the lexicon and spelling index, Triton's
# first batches); their queries are not reused in the measured runs.
WARMUP = 20
# Results asked for: the API defaults (a first page of Search, ten recommendations).
PAGE_SIZE = 10
K = 10
SEED = 0
# Seconds a fresh gateway process may take to report SERVING.
GATEWAY_START_S = 120


# --- Workload --------------------------------------------------------------------------------

def read_queries() -> list[str]:
    """WANDS and Home Depot queries interleaved (one of each in turn while both last), each
    distinct text once, the way the query cache keys them."""
    with open(require(DATA / "wands" / "query.csv"), encoding="utf-8", newline="") as f:
        wands = [r["query"] for r in csv.DictReader(f, delimiter="\t")]
    with open(require(DATA / "homedepot" / "queries_dev.csv"), encoding="utf-8", newline="") as f:
        homedepot = [r["query"] for r in csv.DictReader(f)]
    rng = random.Random(SEED)
    rng.shuffle(wands)
    rng.shuffle(homedepot)
    # WANDS is 1/13 of the queries: spread evenly through the list so every slice has its share.
    step = max(1, len(homedepot) // max(1, len(wands)))
    mixed: list[str] = []
    w = iter(wands)
    for n, q in enumerate(homedepot):
        if n % step == 0:
            mixed.extend(x for x in [next(w, None)] if x is not None)
        mixed.append(q)
    mixed.extend(w)
    seen: set[str] = set()
    out = []
    for q in mixed:
        key = " ".join(q.lower().split())
        if key and key not in seen:
            seen.add(key)
            out.append(q)
    return out


def slices(pool: list, levels: list[int], requests: int) -> tuple[list, list[list], int]:
    """Warm-up items, then one distinct slice per concurrency level (fewer requests per level
    when the pool is short: reusing a query would warm the cache)."""
    warm, rest = pool[:WARMUP], pool[WARMUP:]
    per_level = min(requests, len(rest) // len(levels))
    return warm, [rest[i * per_level:(i + 1) * per_level] for i in range(len(levels))], per_level


# --- Data ------------------------------------------------------------------------------------

def homedepot_subset(n: int | None, folder: Path) -> Path:
    source = require(DATA / "homedepot" / "products.csv")
    if n is None:
        return source
    out = folder / f"products-{n}.csv"
    with open(source, encoding="utf-8", newline="") as f, open(out, "w", encoding="utf-8", newline="") as o:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(o, reader.fieldnames)
        writer.writeheader()
        for i, row in enumerate(reader):
            if i >= n:
                break
            writer.writerow(row)
    return out


def prepare_catalog(url: str, triton_url: str, items: int | None, folder: Path, say) -> dict:
    """Load what is missing and refresh: Home Depot products, Scientific items and histories."""
    from aisle.evaluation.scratch import refresh_all
    from core.settings import load_settings
    from workers.loading import load

    out = {}
    t = time.perf_counter()
    report = load("homedepot", homedepot_subset(items, folder), url)
    say(f"homedepot: {report.summary()}")
    report = load("scientific-items", require(DATA / "scientific" / "items.csv"), url)
    say(f"scientific items: {report.summary()}")
    # train and valid rows: every history the dev data has (each user's last item is held out).
    report = load("scientific-interactions", require(DATA / "scientific" / "interactions.csv"), url, splits="train,valid")
    say(f"scientific interactions: {report.summary()}")
    out["load_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    refresh_all(load_settings(database_url=url, triton_url=triton_url), say)
    out["refresh_seconds"] = time.perf_counter() - t
    import psycopg

    with psycopg.connect(url) as conn:
        out["items"] = conn.execute("SELECT count(*) FROM items").fetchone()[0]
        out["homedepot_items"] = conn.execute("SELECT count(*) FROM items WHERE external_id ~ '^[0-9]+$'").fetchone()[0]
        out["users_with_events"] = conn.execute("SELECT count(DISTINCT user_id) FROM events").fetchone()[0]
    return out


def recommend_users(url: str, n: int) -> list[str]:
    """Users with a purchase history, in a seeded random order."""
    import psycopg

    with psycopg.connect(url) as conn:
        users = [r[0] for r in conn.execute(
            "SELECT u.external_id FROM users u WHERE EXISTS (SELECT 1 FROM events e WHERE e.user_id = u.id) "
            "ORDER BY u.external_id"
        )]
    random.Random(SEED).shuffle(users)
    return users[:n]


# --- Measuring -------------------------------------------------------------------------------

async def closed_loop(call, payloads: list, concurrency: int) -> dict:
    """``concurrency`` clients sending ``payloads`` one after another; ``call`` returns the
    answer's degraded reason ("" when not degraded) and stage timings (or None)."""
    pending = list(reversed(payloads))
    latencies: list[float] = []
    errors: dict[str, int] = {}
    degraded: dict[str, int] = {}
    stages: dict[str, float] = {}
    me = psutil.Process()

    async def client():
        while pending:
            payload = pending.pop()
            t = time.perf_counter()
            try:
                reason, stage_ms = await call(payload)
            except Exception as exc:  # noqa: BLE001 - counted and reported by kind
                key = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
                errors[key] = errors.get(key, 0) + 1
                continue
            latencies.append(time.perf_counter() - t)
            if reason:
                degraded[reason] = degraded.get(reason, 0) + 1
            for stage, ms in (stage_ms or {}).items():
                stages[stage] = stages.get(stage, 0.0) + ms / 1000

    cpu0, t0 = sum(me.cpu_times()[:2]), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    out = {
        "concurrency": concurrency,
        "requests": len(payloads),
        "answered": len(latencies),
        "errors": errors,
        "degraded": sum(degraded.values()),
        "degraded_reasons": dict(sorted(degraded.items(), key=lambda kv: -kv[1])[:3]),
        "seconds": wall,
        "qps": len(latencies) / wall if wall else 0.0,
        "bench_cpu_share": (sum(me.cpu_times()[:2]) - cpu0) / wall if wall else 0.0,
        **(latency_stats(latencies) if latencies else {"p50_ms": None, "p95_ms": None, "p99_ms": None}),
    }
    if stages:
        busy = sum(latencies)
        out["stage_share"] = _shares(stages, busy)
    return out


class CpuMeter:
    """CPU time of process groups over a run, per answered call: each group a root process and
    its descendants (Postgres' backends, Triton's Python stubs), those started or ended during
    the run included (one that ends during the run counts whole). System time is reported
    apart: spinning threads show there (docs/api.md)."""

    def __init__(self, roots: dict[str, int | None]):
        self.roots = {name: pid for name, pid in roots.items() if pid}
        self.before: dict[str, dict[int, tuple[float, float]]] = {}

    def _times(self) -> dict[str, dict[int, tuple[float, float]]]:
        out = {}
        for name, pid in self.roots.items():
            try:
                root = psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            out[name] = {}
            for p in procs:
                try:
                    # Descendants that exited and were waited for count in children_*.
                    t = p.cpu_times()
                    out[name][p.pid] = (t.user + t.children_user, t.system + t.children_system)
                except psutil.NoSuchProcess:
                    pass
        return out

    def start(self) -> None:
        self.before = self._times()

    def stop(self, calls: int) -> dict[str, dict[str, float]]:
        out = {}
        for name, now in self._times().items():
            was = self.before.get(name, {})
            user = sum(u - was.get(pid, (0.0, 0.0))[0] for pid, (u, _) in now.items())
            system = sum(s_ - was.get(pid, (0.0, 0.0))[1] for pid, (_, s_) in now.items())
            out[name] = {"user_ms": 1000 * user / max(1, calls), "system_ms": 1000 * system / max(1, calls)}
        return out


def listening_pid(port: int) -> int | None:
    """The process listening on a loopback TCP port (Postgres, Triton), if this user can see it."""
    try:
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return c.pid
    except psutil.AccessDenied:
        return None
    return None


def _shares(stage_seconds: dict[str, float], total_seconds: float) -> dict[str, float]:
    if total_seconds <= 0:
        return {}
    shares = {k: v / total_seconds for k, v in sorted(stage_seconds.items(), key=lambda kv: -kv[1])}
    shares["other"] = max(0.0, 1.0 - sum(shares.values()))
    return shares


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{processes.LOOPBACK}:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def gateway_stages(before: dict, after: dict, rpc: str) -> dict:
    """Per-stage share of the RPC's handling time between two scrapes, and the query cache's
    hit rate."""
    def delta(name: str, **labels) -> float:
        want = set(labels.items())
        return sum(v - before.get(k, 0.0) for k, v in after.items() if k[0] == name and want <= set(k[1]))

    handling = delta("grpc_server_handling_seconds_sum", grpc_method=rpc)
    stage_names = {dict(k[1])["stage"] for k in after if k[0] == "aisle_gateway_stage_seconds_sum" and dict(k[1]).get("rpc") == rpc}
    stages = {s: delta("aisle_gateway_stage_seconds_sum", rpc=rpc, stage=s) for s in stage_names}
    if rpc == "Recommend":
        hits = delta("aisle_gateway_recommend_cache_total", result="hit")
        misses = delta("aisle_gateway_recommend_cache_total", result="miss")
    else:
        hits = delta("aisle_gateway_query_cache_hits_total")
        misses = delta("aisle_gateway_query_cache_misses_total")
    return {
        "stage_share": _shares({k: v for k, v in stages.items() if v > 0}, handling),
        "server_mean_ms": 1000 * handling / max(1.0, delta("grpc_server_handling_seconds_count", grpc_method=rpc)),
        "cache_hit_rate": hits / (hits + misses) if hits + misses else None,
    }


async def measure(settings, gateway_address: str, metrics_port: int, queries: list[str], users: list[str],
                  levels: list[int], requests: int, rpcs: list[str], say, meter: CpuMeter) -> dict:
    from gateway.engine import Engine
    from gateway.model import RecommendQuery, SearchQuery
    from gateway.protos.aisle.v1 import aisle_pb2 as pb
    from gateway.protos.aisle.v1 import aisle_pb2_grpc

    channel = grpc.aio.insecure_channel(gateway_address)
    stub = aisle_pb2_grpc.AisleStub(channel)
    metadata = (("x-api-key", settings.api_keys[0]),) if settings.api_keys else ()
    engine = await Engine.create(settings)
    # Loaded as the gateway is once it says SERVING (lexicon, graph, item table), so neither
    # side's first measured calls pay for a load.
    if not await engine.ready():
        raise SystemExit("the in-process engine is not ready (Postgres or Triton)")

    async def gw_search(q):
        r = await stub.Search(pb.SearchRequest(query=q, page_size=PAGE_SIZE), timeout=DEADLINE_S, metadata=metadata)
        return (r.degraded_reason or "degraded") if r.degraded else "", None

    async def gw_recommend(u):
        r = await stub.Recommend(pb.RecommendRequest(user_id=u, k=K), timeout=DEADLINE_S, metadata=metadata)
        return (r.degraded_reason or "degraded") if r.degraded else "", None

    async def engine_search(q):
        r = await engine.search(SearchQuery(q, page_size=PAGE_SIZE, time_left_s=DEADLINE_S))
        return (r.degraded_reason or "degraded") if r.degraded else "", r.stage_ms

    async def engine_recommend(u):
        r = await engine.recommend(RecommendQuery(user_id=u, k=K, time_left_s=DEADLINE_S))
        return (r.degraded_reason or "degraded") if r.degraded else "", r.stage_ms

    calls = {"search": (gw_search, engine_search, queries, "Search"),
             "recommend": (gw_recommend, engine_recommend, users, "Recommend")}
    calls["recommend_cached"] = calls["recommend"]
    out: dict = {}
    try:
        for rpc in rpcs:
            gw_call, engine_call, pool, method = calls[rpc]
            warm, parts, per_level = slices(pool, levels, requests)
            if per_level < requests:
                say(f"{rpc}: {per_level} requests per level (distinct {'queries' if rpc == 'search' else 'users'} run short)")
            # Warm both targets on the same few items (not reused below).
            await closed_loop(gw_call, warm, 4)
            await closed_loop(engine_call, warm, 4)
            out[rpc] = []
            for level, part in zip(levels, parts):
                if rpc == "recommend_cached":
                    # The workers' warm-up, for this slice's users (not measured).
                    await closed_loop(gw_call, part, 4)
                before = scrape(metrics_port)
                meter.start()
                gw = await closed_loop(gw_call, part, level)
                gw["cpu_per_call"] = meter.stop(gw["answered"])
                gw.update(gateway_stages(before, scrape(metrics_port), method))
                # The same slice again, but for the engine's own (so far cold) cache.
                engine.cache.clear()
                hits, misses = engine.cache.hits, engine.cache.misses
                base = await closed_loop(engine_call, part, level)
                looked_up = engine.cache.hits - hits + engine.cache.misses - misses
                base["cache_hit_rate"] = (engine.cache.hits - hits) / looked_up if looked_up else None
                row = {"concurrency": level, "gateway": gw, "in_process": base, "ratios": _ratios(gw, base)}
                out[rpc].append(row)
                say(_row_line(rpc, row))
    finally:
        await engine.close()
        await channel.close()
    return out


def _ratios(gw: dict, base: dict) -> dict:
    def r(a, b):
        return a / b if a is not None and b else None

    return {
        "qps_gateway_over_in_process": r(gw["qps"], base["qps"]),
        "p50_gateway_over_in_process": r(gw["p50_ms"], base["p50_ms"]),
        "p99_gateway_over_in_process": r(gw["p99_ms"], base["p99_ms"]),
    }


def _fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def _row_line(rpc: str, row: dict) -> str:
    g, b = row["gateway"], row["in_process"]
    return (f"{rpc:<16} c={row['concurrency']:<3} gateway {_fmt(g['qps']):>6} qps  p50 {_fmt(g['p50_ms']):>6}  "
            f"p95 {_fmt(g['p95_ms']):>6}  p99 {_fmt(g['p99_ms']):>6} ms | in-process {_fmt(b['qps']):>6} qps  "
            f"p50 {_fmt(b['p50_ms']):>6}  p99 {_fmt(b['p99_ms']):>6} ms | qps ratio {_fmt(row['ratios']['qps_gateway_over_in_process'], '.2f')}")


def goals(result: dict) -> dict:
    def at(rpc: str, level: int):
        return next((r["gateway"] for r in result.get(rpc, []) if r["concurrency"] == level), None)

    out = {}
    checks = (("search_p99_ms_at_c4", "search", 4, "p99_ms", "<="),
              ("search_qps_at_c16", "search", 16, "qps", ">="),
              ("recommend_p99_ms_at_c4", "recommend", 4, "p99_ms", "<="),
              ("recommend_cached_p99_ms_at_c4", "recommend_cached", 4, "p99_ms", "<="))
    for name, rpc, level, key, op in checks:
        run = at(rpc, level)
        value = run[key] if run else None
        # A run with failed calls does not pass: its percentiles leave the failures out.
        ok = value is not None and not run["errors"] and (value <= GOALS[name] if op == "<=" else value >= GOALS[name])
        out[name] = {"goal": f"{op} {GOALS[name]}", "value": value, "pass": ok}
    return out


# --- Servers ---------------------------------------------------------------------------------

def start_gateway(settings, folder: Path, name: str = "gateway"):
    """A fresh `aisle serve` on free ports over ``settings``' database and Triton (and its
    recommendation cache TTL), logging to ``folder/<name>.log``."""
    from aisle.stack import _grpc_serving

    port, metrics_port = processes.free_port(), processes.free_port()
    env = dict(os.environ, AISLE_DATABASE_URL=settings.database_url, AISLE_TRITON_URL=settings.triton_url,
               AISLE_RUN_DIR=str(folder), AISLE_LOG_FORMAT="json",
               AISLE_RECOMMEND_CACHE_TTL_S=str(settings.recommend_cache_ttl_s))
    env.pop("AISLE_GATEWAY_ADDRESS", None)
    server = processes.ServerProcess(
        "gateway",
        processes.aisle_command("serve", "--address", f"{processes.LOOPBACK}:{port}", "--metrics-port", str(metrics_port),
                                "--grace", "1"),
        folder / f"{name}.log", _grpc_serving(port, "aisle.v1.Aisle"), env=env,
    ).start(GATEWAY_START_S)
    return server, f"{processes.LOOPBACK}:{port}", metrics_port


def main(
    reuse: bool = typer.Option(False, help="Use the running local stack's Postgres and Triton (`aisle up`)."),
    items: int = typer.Option(None, min=1, help="Only the first N Home Depot products (default: all 54,667)."),
    requests: int = typer.Option(1000, min=1, help="Requests per concurrency level, per RPC and target."),
    concurrency: str = typer.Option("1,4,16,64", help="Comma-separated concurrency levels."),
    rpc: str = typer.Option("search,recommend,recommend_cached",
                            help="Which RPCs to measure: search, recommend (the pipeline), recommend_cached."),
    model_repository: Path = typer.Option(None, help="Exported repository for the benchmark's own Triton (default: model_repository/)."),
    work_dir: Path = typer.Option(None, help="Keep the servers' data and logs (gateway.log, triton.log) here (default: a temporary folder)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    processes.interrupt_on_sigterm()
    from core.db import prepare
    from core.embeddings import DEFAULT_VERSION
    from core.settings import get_settings

    try:
        levels = [int(c) for c in concurrency.split(",") if c.strip()]
        rpcs = [r.strip() for r in rpc.split(",") if r.strip()]
        assert levels and all(c > 0 for c in levels) and rpcs and set(rpcs) <= set(RPCS)
    except (ValueError, AssertionError):
        sys.exit(f"--concurrency takes positive integers (1,4,16,64); --rpc some of {', '.join(RPCS)}")
    for path in (DATA / "homedepot" / "products.csv", DATA / "homedepot" / "queries_dev.csv", DATA / "wands" / "query.csv",
                 DATA / "scientific" / "items.csv", DATA / "scientific" / "interactions.csv"):
        require(path)

    # Every degraded answer of the in-process engine logs a warning: the table counts them.
    logging.getLogger("gateway").setLevel(logging.ERROR)

    def say(message: str) -> None:
        print(message, file=sys.stderr if as_json else sys.stdout, flush=True)

    base = get_settings()
    result: dict = {"machine": machine(), "levels": levels, "requests_per_level": requests, "deadline_s": DEADLINE_S,
                    "page_size": PAGE_SIZE, "k": K,
                    # What the gateway holds in memory (AISLE_GATEWAY_ITEM_TABLE, AISLE_GATEWAY_VECTOR_INDEX):
                    # runs compared across these settings say which they measured.
                    "gateway_item_table": base.gateway_item_table, "gateway_vector_index": base.gateway_vector_index}
    queries = read_queries()
    with ExitStack() as stack:
        if work_dir is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aisle-bench-gw-")))
        else:
            tmp = work_dir
            tmp.mkdir(parents=True, exist_ok=True)
        if reuse or (base.database_url and base.triton_url):
            from aisle.stack import stack_settings

            settings = stack_settings(base)
            if not settings.database_url or not settings.triton_url:
                sys.exit("--reuse: no running stack (`aisle up`) and no AISLE_DATABASE_URL/AISLE_TRITON_URL")
            result["servers"] = "reused"
        else:
            repository = model_repository or base.model_repository
            # Only the configs are committed: the graphs come from `aisle export`.
            if not (repository / "encoder" / "1" / "model.onnx").exists():
                sys.exit(f"{repository} is not exported: run `aisle export` (or `make export`) first")
            pg_port, ports = processes.free_port(), processes.TritonPorts.free()
            pg = processes.postgres(tmp / "pg", pg_port, tmp / "pg.log").start(60)
            stack.callback(pg.stop)
            triton = processes.triton(repository, ports, tmp / "triton.log").start(300)
            stack.callback(triton.stop)
            url = processes.postgres_url(pg_port)
            prepare(url, DEFAULT_VERSION)
            settings = base.model_copy(update={"database_url": url, "triton_url": f"{processes.LOOPBACK}:{ports.grpc}",
                                               "gateway_address": None})
            result["servers"] = "own"
        say(f"servers: {result['servers']}; loading and refreshing the catalog")
        result["catalog"] = prepare_catalog(settings.database_url, settings.triton_url, items, tmp, say)
        users = recommend_users(settings.database_url, WARMUP + requests * len(levels))
        result["workload"] = {"distinct_queries": len(queries), "recommend_users": len(users),
                              "query_sources": "WANDS query.csv + Home Depot queries_dev.csv, interleaved"}
        import psycopg

        # Search and the pipeline's Recommend on a gateway (and engine) with the recommendation
        # cache off; the cached Recommend on one with it on.
        passes = (([r for r in rpcs if r != "recommend_cached"], "gateway", 0.0),
                  ([r for r in rpcs if r == "recommend_cached"], "gateway-cached", settings.recommend_cache_ttl_s))
        for pass_rpcs, name, ttl in passes:
            if not pass_rpcs:
                continue
            pass_settings = settings.model_copy(update={"recommend_cache_ttl_s": ttl})
            gateway, address, metrics_port = start_gateway(pass_settings, tmp, name)
            say(f"{name} {address} (metrics :{metrics_port}); measuring {', '.join(pass_rpcs)} at c={levels}")
            meter = CpuMeter({
                "postgres": listening_pid(int(psycopg.conninfo.conninfo_to_dict(settings.database_url).get("port") or 5432)),
                "triton": listening_pid(int(settings.triton_url.rsplit(":", 1)[1])),
                "gateway": gateway.popen.pid,
            })
            try:
                result.update(asyncio.run(measure(pass_settings, address, metrics_port, queries, users, levels, requests,
                                                  pass_rpcs, say, meter)))
            finally:
                gateway.stop()
        result["machine"]["load_avg_1m_after"] = psutil.getloadavg()[0]
    result["goals"] = goals(result)
    path = write_result("gateway", result)
    if as_json:
        print(json.dumps(result))
        return
    print_table(result)
    print(f"wrote {path}")


def print_table(result: dict) -> None:
    c = result["catalog"]
    print(f"\n{c['items']} items ({c['homedepot_items']} Home Depot), {c['users_with_events']} users with histories; "
          f"{result['machine']['cpus']} CPUs, load {result['machine']['load_avg_1m']:.1f} -> "
          f"{result['machine']['load_avg_1m_after']:.1f}; deadline {result['deadline_s']} s, query cache cold")
    header = (f"{'rpc':<16} {'c':>3} {'target':<10} {'qps':>7} {'p50':>7} {'p95':>7} {'p99':>7} {'err':>4} {'degr':>5} "
              f"{'cache':>6} {'bench cpu':>9}  stages (share of time)")
    print(header)
    for rpc in RPCS:
        for row in result.get(rpc, []):
            for target in ("gateway", "in_process"):
                r = row[target]
                stages = ", ".join(f"{k} {v:.0%}" for k, v in r.get("stage_share", {}).items())
                hit = r.get("cache_hit_rate")
                print(f"{rpc:<16} {row['concurrency']:>3} {target:<10} {_fmt(r['qps']):>7} {_fmt(r['p50_ms']):>7} "
                      f"{_fmt(r['p95_ms']):>7} {_fmt(r['p99_ms']):>7} {sum(r['errors'].values()):>4} {r['degraded']:>5} "
                      f"{_fmt(hit, '.0%') if hit is not None else '-':>6} {r['bench_cpu_share']:>9.0%}  {stages}")
            ratios = row["ratios"]
            print(f"{'':<16} {'':>3} {'ratio':<10} {_fmt(ratios['qps_gateway_over_in_process'], '.2f'):>7} "
                  f"{_fmt(ratios['p50_gateway_over_in_process'], '.2f'):>7} {'':>7} "
                  f"{_fmt(ratios['p99_gateway_over_in_process'], '.2f'):>7}  (gateway / in-process)")
    cpu = [(rpc, row["concurrency"], row["gateway"].get("cpu_per_call", {}))
           for rpc in RPCS for row in result.get(rpc, [])]
    if any(c for _, _, c in cpu):
        print("CPU per gateway call, ms (user + system): "
              + "; ".join(f"{rpc} c={level} " + ", ".join(f"{k} {v['user_ms']:.1f}+{v['system_ms']:.1f}" for k, v in c.items())
                          for rpc, level, c in cpu))
    reasons = {r: n for rpc in RPCS for row in result.get(rpc, [])
               for t in ("gateway", "in_process") for r, n in row[t]["degraded_reasons"].items()}
    if reasons:
        print("degraded because: " + "; ".join(sorted(reasons, key=lambda k: -reasons[k])[:2]))
    for name, g in result["goals"].items():
        verdict = "not measured" if g["value"] is None else "PASS" if g["pass"] else "FAIL"
        print(f"goal {name} {g['goal']}: {_fmt(g['value'])} {verdict}")


if __name__ == "__main__":
    typer.run(main)
