"""`aisle db …`, `aisle load`, `aisle refresh …`: the catalog store and its refresh jobs."""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from aisle.errors import EXIT_PARTIAL, fail, say
from aisle.stack import stack_settings
from core.settings import Settings, get_settings

db_app = typer.Typer(no_args_is_help=True, help="The Postgres schema and embedding model versions.")


def _settings(need_triton: bool = False) -> Settings:
    settings = stack_settings(get_settings())
    if not settings.database_url:
        fail("no database: set AISLE_DATABASE_URL or start the local stack with `aisle up`")
    if need_triton and not settings.triton_url:
        fail("no Triton: set AISLE_TRITON_URL or start the local stack with `aisle up`")
    return settings


def _connect(settings: Settings):
    from core.db import DatabaseError, connect

    try:
        return connect(settings.database_url, autocommit=True)
    except DatabaseError as exc:
        fail(str(exc))


@db_app.command("migrate")
def migrate() -> None:
    """Apply pending schema migrations (idempotent) and register the default embedding model."""
    from core.db import DatabaseError, prepare

    settings = _settings()
    try:
        ran = prepare(settings.database_url, settings.embedding_model)
    except DatabaseError as exc:
        fail(str(exc))
    say("applied " + ", ".join(ran) if ran else "schema is up to date")


@db_app.command("embedding-models")
def embedding_models(as_json: bool = typer.Option(False, "--json")) -> None:
    """List embedding model versions and their status."""
    from core import embeddings

    with _connect(_settings()) as conn:
        models = embeddings.listing(conn)
    if as_json:
        print(json.dumps([m.__dict__ for m in models]))
        return
    for m in models:
        say(f"{m.version}\t{m.status}\ttriton model {m.triton_model}\tdim {m.dim}")


@db_app.command("add-embedding-model")
def add_embedding_model(
    version: str, triton_model: str = typer.Option(..., help="Triton model that embeds text for it."),
    dim: int = typer.Option(384, min=1),
) -> None:
    """Register a new embedding version; workers fill it beside the active one."""
    from core import embeddings

    with _connect(_settings()) as conn:
        model = embeddings.register(conn, version, triton_model, dim)
    say(f"{model.version}: {model.status}")


@db_app.command("activate-embedding-model")
def activate_embedding_model(version: str) -> None:
    """Switch readers to VERSION atomically (activate the previous one again to roll back)."""
    from core import embeddings

    with _connect(_settings()) as conn:
        try:
            embeddings.activate(conn, version)
        except LookupError as exc:
            fail(str(exc))
    say(f"{version} is active")


class JobName(str, Enum):
    embeddings = "embeddings"
    enrichment = "enrichment"
    sentiment = "sentiment"
    profiles = "profiles"
    graph = "graph"
    recommendations = "recommendations"
    all = "all"


# Order of `aisle refresh all`: profiles need embeddings; the graph needs items and events; the
# cached recommendations need all of them (and a gateway, which computes them).
ALL_ORDER = ("embeddings", "enrichment", "sentiment", "profiles", "graph", "recommendations")


def refresh(
    job: JobName = typer.Argument(..., help="Which job, or all of them in dependency order."),
    celery: bool = typer.Option(False, help="Hand the run to the Celery workers and follow it, instead of working here."),
    timeout: float = typer.Option(3600, help="With --celery, or while the workers warm recommendations: give up waiting after this many seconds."),
) -> None:
    """Work a refresh job's backlog to the end, with a progress bar (the same code the workers run)."""
    names = ALL_ORDER if job == JobName.all else (job.value,)
    settings = _settings(need_triton=any(n in ("embeddings", "enrichment", "sentiment") for n in names))
    for name in names:
        if name == "recommendations":
            _warm_recommendations(settings, required=job != JobName.all, timeout=timeout)
        elif celery:
            _refresh_celery(settings, name, timeout)
        else:
            _refresh_inline(settings, name)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.0f} rows/s"), TimeElapsedColumn(),
    )


def _refresh_inline(settings: Settings, name: str) -> None:
    from core.db import DatabaseError
    from core.triton import TritonError
    from workers import dispatch, resources
    from workers.jobs import BATCH_JOBS

    try:
        if name == "graph":
            deps = resources.deps(need_triton=False, settings=settings)
            run = dispatch.rebuild_graph(deps)
            say(f"graph: rebuilt in {(run.finished_at - run.started_at).total_seconds():.1f}s")
            return
        job = BATCH_JOBS[name]
        deps = resources.deps(need_triton=job.queue == "triton", settings=settings)
        with _progress() as bar:
            task = bar.add_task(name, total=None, rate=0.0)

            def update(p) -> None:
                elapsed = max(time.monotonic() - p.started, 1e-9)
                bar.update(task, completed=p.done, total=max(p.total, p.done), rate=p.done / elapsed)

            run = dispatch.run_inline(deps, job, update)
        rate = f", {run.rate:.0f} rows/s" if run and run.rate else ""
        say(f"{name}: {run.done if run else 0} rows{rate}")
    except (DatabaseError, TritonError) as exc:
        fail(f"{name}: {exc}")


def _warm_recommendations(settings: Settings, required: bool, timeout: float) -> None:
    """Ask the gateway for every user whose cached recommendations are missing or stale (the
    same warm-up the workers run in batches), with a progress bar. While the workers' warm-up
    holds the lock, follow it instead."""
    import grpc

    from core.db import DatabaseError
    from workers.jobs import recommendations

    ttl = settings.recommend_cache_ttl_s
    if ttl <= 0 or not settings.gateway_address:
        why = "the cache is off (AISLE_RECOMMEND_CACHE_TTL_S=0)" if ttl <= 0 else (
            "no gateway: set AISLE_GATEWAY_ADDRESS or start the local stack with `aisle up`"
        )
        if required:
            fail(f"recommendations: {why}")
        say(f"recommendations: skipped, {why}")
        return
    deadline = time.monotonic() + timeout
    asked = failed = stored = 0
    try:
        with _connect(settings) as conn, recommendations.gateway_client(settings) as client, _progress() as bar:
            total = recommendations.stale_count(conn, warmable=True)
            task = bar.add_task("recommendations", total=total, rate=0.0)
            started = time.monotonic()
            while True:
                result = recommendations.warm(conn, settings, client.recommend)
                if result.busy:
                    left = recommendations.stale_count(conn, warmable=True)
                    bar.update(task, completed=max(0, total - left),
                               rate=max(0, total - left) / max(time.monotonic() - started, 1e-9))
                    if not left:
                        break
                    if time.monotonic() > deadline:
                        fail(f"recommendations: {left} users still stale after {timeout:.0f}s", code=EXIT_PARTIAL)
                    time.sleep(1.0)
                    continue
                asked, failed, stored = asked + result.asked, failed + result.failed, stored + result.stored
                done = max(0, total - recommendations.stale_count(conn, warmable=True))
                bar.update(task, completed=done, rate=done / max(time.monotonic() - started, 1e-9))
                # A batch that stored nothing (every answer failed or came back degraded) would
                # ask the same users again at once: stop and report.
                if result.asked < recommendations.WARM_BATCH or not result.stored:
                    break
            waiting = recommendations.stale_count(conn) - recommendations.stale_count(conn, warmable=True)
    except (DatabaseError, grpc.RpcError) as exc:
        fail(f"recommendations: {exc}")
    if stored < asked:
        fail(f"recommendations: {asked - stored} of {asked} users have no fresh list ({failed} calls failed, "
             "the others came back degraded; the gateway's log says why)", code=EXIT_PARTIAL)
    if waiting:
        # Not a failure: their lists are made as soon as the refresh has embedded their items
        # (or rebuilt the graph, or built the index, a first time), by the workers' warm-up or
        # their own next call.
        say(f"recommendations: up to date ({stored} users warmed here); {waiting} users wait for the "
            "graph's first rebuild, the embeddings' index or their items' embeddings")
        return
    say(f"recommendations: up to date ({stored} users warmed here)")


# How often `refresh --celery` asks the workers again for a finished run's after-run work: the
# full catalog's index takes ~10 s to build alone and over a minute beside a refresh, so this
# only matters when the worker that finished the run died before building it.
SETTLE_RETICK_S = 30.0


def _refresh_celery(settings: Settings, name: str, timeout: float) -> None:
    """Trigger the job's tick on the workers, then follow its run until the backlog is empty."""
    from workers import runs
    from workers.jobs import BATCH_JOBS, GRAPH
    from workers.tasks import rebuild_graph, tick

    job = BATCH_JOBS.get(name, GRAPH)
    conn = _connect(settings)
    rebuild_graph.delay(True) if name == "graph" else tick.delay(name)
    deadline = time.monotonic() + timeout
    with _progress() as bar:
        task = bar.add_task(f"{name} (celery)", total=None, rate=0.0)
        while time.monotonic() < deadline:
            time.sleep(0.5)
            with conn.transaction():
                run = runs.open_run(conn, name)
                pending = job.backlog(conn).pending if run is None else None
            if run is not None:
                bar.update(task, completed=run.done, total=max(run.total, run.done), rate=run.rate or 0.0)
            elif pending == 0:
                break
        else:
            fail(f"{name}: still running after {timeout:.0f}s (see `aisle status`)", code=EXIT_PARTIAL)
        settled = getattr(job, "settled", None)
        if settled is not None and not settled(conn):
            # The worker that finished the run does the after-run work (the embeddings' index);
            # a tick with nothing pending does it too, should that worker have died meanwhile.
            bar.update(task, description=f"{name} (celery): after the run")
            last_tick = time.monotonic()
            while not settled(conn):
                if time.monotonic() > deadline:
                    fail(f"{name}: the run finished but its after-run work (the embeddings' index) was not done "
                         f"after {timeout:.0f}s (see the workers' log)", code=EXIT_PARTIAL)
                if time.monotonic() - last_tick > SETTLE_RETICK_S:
                    tick.delay(name)
                    last_tick = time.monotonic()
                time.sleep(0.5)
    with conn.transaction():
        last = runs.last_run(conn, name)
    say(f"{name}: up to date" + (f" (last run {last.done} rows, {last.rate or 0:.0f} rows/s)" if last else ""))


class LoadKind(str, Enum):
    items = "items"
    events = "events"
    reviews = "reviews"
    homedepot = "homedepot"
    scientific_items = "scientific-items"
    scientific_interactions = "scientific-interactions"
    instacart = "instacart"
    sentiment = "sentiment"


def load(
    kind: LoadKind = typer.Argument(..., help="A standard format (items, events, reviews; see docs/data-format.md) or a dataset adapter."),
    path: Path = typer.Argument(..., help="CSV or JSONL file."),
    splits: str = typer.Option(None, help="scientific-interactions only: loo_split values to load, e.g. train,valid."),
    show_errors: int = typer.Option(20, help="How many rejected rows to list."),
) -> None:
    """Upsert a file into the catalog by external id (loading twice changes nothing).

    Malformed rows are reported with file and line and skipped; the rest loads. Exit status 1
    when rows were rejected, 2 when the file cannot be loaded at all."""
    from core.db import DatabaseError
    from workers.loading import LoadError, rich_progress
    from workers.loading import load as load_file

    settings = _settings()
    from aisle.errors import console

    try:
        with rich_progress(kind.value, console=console) as hook:
            report = load_file(kind.value, path, settings.database_url, hook, splits=splits)
    except (LoadError, DatabaseError) as exc:
        fail(str(exc))
    for error in report.errors[:show_errors]:
        say(f"rejected {error}")
    if report.rejected > show_errors:
        say(f"… and {report.rejected - show_errors} more rejected rows")
    say(report.summary())
    if report.rejected:
        raise typer.Exit(EXIT_PARTIAL)
