"""`aisle eval search`: the system's Search against BM25-only, dense-only and their fusion, on
a queries file and a qrels file in the Home Depot format."""

from __future__ import annotations

import asyncio
import csv
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import psycopg
from psycopg import sql

from aisle.evaluation.metrics import search_metrics
from core.features import RRF_K
from gateway.lexical_index import LexicalIndex
from gateway.retrieval import LEXICAL_DOCS

# Depth of every run: Recall@100 needs 100; the fusion baseline fuses two lists this deep.
DEPTH = 100
FUSION_DEPTH = 1000
# Deadline of each Search the evaluation sends (seconds): generous, so quality is measured
# without the pipeline cutting stages short on a busy machine.
CALL_TIMEOUT_S = 30.0


class EvalInputError(ValueError):
    pass


def read_queries(path: Path) -> dict[str, str]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"query_id", "query"} <= set(reader.fieldnames):
            raise EvalInputError(f"{path}: expected columns query_id, query")
        return {r["query_id"]: r["query"] for r in reader if r["query"].strip()}


def read_qrels(path: Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"query_id", "product_uid", "relevance"} <= set(reader.fieldnames):
            raise EvalInputError(f"{path}: expected columns query_id, product_uid, relevance")
        for line, r in enumerate(reader, start=2):
            try:
                out.setdefault(r["query_id"], {})[r["product_uid"]] = float(r["relevance"])
            except ValueError:
                raise EvalInputError(f"{path}:{line}: relevance {r['relevance']!r} is not a number") from None
    return out


@dataclass
class LexicalBaseline:
    """BM25 over the catalog's Postgres lexemes: the system's own lexical retriever
    (gateway/lexical_index.py), on its own, by external id."""

    index: LexicalIndex
    external: dict[int, str]

    @classmethod
    def build(cls, conn: psycopg.Connection) -> LexicalBaseline:
        docs = conn.execute(sql.SQL(LEXICAL_DOCS).format(where=sql.SQL("")), binary=True).fetchall()
        external = dict(conn.execute("SELECT id, external_id FROM items").fetchall())
        return cls(LexicalIndex.build(docs), external)

    def search(self, lexemes: list[str], k: int) -> list[str]:
        return [self.external[i] for i, _ in self.index.search(lexemes, k)]


@dataclass
class DenseIndex:
    """Exact cosine search over every item embedding of the active version."""

    ids: list[str]
    vectors: np.ndarray

    @classmethod
    def build(cls, conn: psycopg.Connection, version: str) -> DenseIndex:
        rows = conn.execute(
            "SELECT i.external_id, e.embedding FROM item_embeddings e JOIN items i ON i.id = e.item_id "
            "WHERE e.model_version = %s ORDER BY i.id",
            (version,),
        ).fetchall()
        return cls([r[0] for r in rows], np.stack([r[1] for r in rows]).astype(np.float32))

    def search(self, vector: np.ndarray, k: int) -> list[str]:
        scores = self.vectors @ vector
        if len(scores) <= k:
            top = np.arange(len(scores))
        else:
            top = np.argpartition(-scores, k)[:k]
        return [self.ids[i] for i in top[np.argsort(-scores[top], kind="stable")]]


def fuse(a: list[str], b: list[str], k: int = RRF_K) -> list[str]:
    scores: dict[str, float] = {}
    for ranked in (a, b):
        for pos, d in enumerate(ranked, start=1):
            scores[d] = scores.get(d, 0.0) + 1.0 / (k + pos)
    return [d for d, _ in sorted(scores.items(), key=lambda kv: -kv[1])]


def query_lexemes(conn: psycopg.Connection, queries: dict[str, str]) -> dict[str, list[str]]:
    ids, texts = list(queries), list(queries.values())
    rows = conn.execute(
        "SELECT q.id, tsvector_to_array(to_tsvector('english', q.text)) FROM unnest(%s::text[], %s::text[]) AS q(id, text)",
        (ids, texts),
    ).fetchall()
    return {r[0]: list(r[1] or []) for r in rows}


def baseline_runs(conn, triton, queries: dict[str, str], version: str, triton_model: str) -> dict[str, dict[str, list[str]]]:
    lexical = LexicalBaseline.build(conn)
    dense = DenseIndex.build(conn, version)
    lexemes = query_lexemes(conn, queries)
    ids = list(queries)
    vectors = triton.embed([queries[q] for q in ids], model=triton_model)
    bm25, dense_run, fused = {}, {}, {}
    for q, vec in zip(ids, vectors):
        lex = lexical.search(lexemes[q], FUSION_DEPTH)
        den = dense.search(vec, FUSION_DEPTH)
        bm25[q], dense_run[q] = lex[:DEPTH], den[:DEPTH]
        fused[q] = fuse(lex, den)[:DEPTH]
    return {"bm25": bm25, "dense": dense_run, "rrf": fused}


async def system_run(
    search: Callable[[str], Awaitable[tuple[list[str], str]]], queries: dict[str, str], concurrency: int = 8
) -> tuple[dict[str, list[str]], dict]:
    """Run every query through ``search`` (the gateway) with bounded concurrency.

    ``search`` returns the ranked ids and the degraded reason ("" when not degraded); a query
    whose call fails counts as an error and ranks nothing."""
    run: dict[str, list[str]] = {}
    latencies: list[float] = []
    pending = list(queries.items())
    reasons: Counter[str] = Counter()
    errors: Counter[str] = Counter()

    async def worker():
        while pending:
            qid, text = pending.pop()
            t = time.perf_counter()
            try:
                ids, reason = await search(text)
            except grpc.aio.AioRpcError as exc:
                errors[f"{exc.code().name}: {exc.details()}"] += 1
                ids, reason = [], ""
            latencies.append(time.perf_counter() - t)
            if reason:
                reasons[reason] += 1
            run[qid] = ids

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return run, {
        "p50_ms": float(np.percentile(latencies, 50) * 1000) if latencies else None,
        "degraded": sum(reasons.values()),
        "degraded_reasons": dict(reasons.most_common(3)),
        "errors": sum(errors.values()),
        "error_reasons": dict(errors.most_common(3)),
    }


SEARCH_METRICS = ("ndcg@10", "ndcg@10_judged", "recall@100")
# Goals of the gateway issue: NDCG@10 (full catalog) >= 1.15x the RRF baseline; Recall@100 >= 0.85.
GOAL_NDCG_VS_FUSION = 1.15
GOAL_RECALL_100 = 0.85


def ratios(out: dict, names: list[str], baselines: list[str], metrics: tuple[str, ...]) -> dict:
    """Each run's value of each metric over the best baseline's value of that metric."""
    best = {m: max(out[b][m] for b in baselines) for m in metrics}
    return {n: {m: (out[n][m] / best[m] if best[m] else None) for m in metrics} for n in names}


def report(system: dict[str, list[str]], baselines: dict[str, dict[str, list[str]]], qrels) -> dict:
    qrels = {q: d for q, d in qrels.items() if q in system}
    out = {"system": search_metrics(qrels, system)}
    for name, run in baselines.items():
        out[name] = search_metrics(qrels, run)
    best = max(baselines, key=lambda n: out[n]["ndcg@10"])
    out["best_baseline"] = best
    out["ratios_vs_best_baseline"] = {
        m: (out["system"][m] / out[best][m] if out[best][m] else None) for m in SEARCH_METRICS
    }
    # Per metric, against whichever baseline is best at that metric (what the tables print).
    out["ratio_to_best_baseline"] = ratios(out, ["system", *baselines], list(baselines), SEARCH_METRICS)
    out["ratio_vs_fusion_ndcg@10"] = out["system"]["ndcg@10"] / out["rrf"]["ndcg@10"] if out["rrf"]["ndcg@10"] else None
    out["goals"] = {
        "ndcg@10_vs_rrf": {"goal": GOAL_NDCG_VS_FUSION, "value": out["ratio_vs_fusion_ndcg@10"],
                           "pass": (out["ratio_vs_fusion_ndcg@10"] or 0) >= GOAL_NDCG_VS_FUSION},
        "recall@100": {"goal": GOAL_RECALL_100, "value": out["system"]["recall@100"],
                       "pass": out["system"]["recall@100"] >= GOAL_RECALL_100},
    }
    return out


# --- The whole evaluation ------------------------------------------------------------------

def load_judged(queries_path: Path, qrels_path: Path, limit: int | None = None) -> tuple[dict[str, str], dict]:
    """The queries that have judgements (only they enter a metric), the first ``limit`` of them."""
    queries = read_queries(queries_path)
    qrels = read_qrels(qrels_path)
    if not queries:
        raise EvalInputError(f"{queries_path}: no queries")
    judged = {q: t for q, t in queries.items() if q in qrels}
    if not judged:
        raise EvalInputError(f"no query of {queries_path} has judgements in {qrels_path} (query_id must match)")
    if limit is not None:
        judged = dict(list(judged.items())[:limit])
    return judged, {q: qrels[q] for q in judged}


def evaluate_search(
    settings,
    queries: dict[str, str],
    qrels: dict[str, dict[str, float]],
    gateway_address: str | None = None,
    concurrency: int = 8,
    say=lambda m: None,
) -> dict:
    """The system through the gateway (at ``gateway_address``, else in-process over
    ``settings``) and the three baselines over the same catalog, scored on ``qrels``."""
    from core import embeddings
    from core.db import connect
    from core.triton import TritonClient

    with connect(settings.database_url) as conn:
        catalog = conn.execute("SELECT count(*) FROM items").fetchone()[0]
        if not catalog:
            raise EvalInputError("the catalog is empty: load it first (`aisle load homedepot products.csv`)")
        model = embeddings.active(conn)
        embedded = conn.execute(
            "SELECT count(*) FROM item_embeddings WHERE model_version = %s", (model.version,)
        ).fetchone()[0]
        if not embedded:
            raise EvalInputError("no item is embedded: run `aisle refresh all` first")
        judged_ids = sorted({d for docs in qrels.values() for d in docs})
        present = conn.execute(
            "SELECT count(*) FROM items WHERE external_id = ANY(%s)", (judged_ids,)
        ).fetchone()[0]
        if not present:
            raise EvalInputError("no judged product is in the catalog: is the right catalog loaded?")
        say(f"catalog: {catalog} items, {embedded} embedded; {present}/{len(judged_ids)} judged products in it")
        t = time.perf_counter()
        triton = TritonClient(settings.triton_url, settings.triton_timeout_s)
        try:
            baselines = baseline_runs(conn, triton, queries, model.version, model.triton_model)
        finally:
            triton.close()
        say(f"baselines: {len(queries)} queries in {time.perf_counter() - t:.1f} s")

    t = time.perf_counter()
    system, stats = asyncio.run(_through_gateway(settings, queries, gateway_address, concurrency))
    stats["seconds"] = time.perf_counter() - t
    say(f"system ({stats['gateway']}): {len(queries)} queries in {stats['seconds']:.1f} s")
    if stats["errors"] == len(queries):
        raise GatewayCallError(f"every Search failed: {stats['error_reasons']}")
    out = report(system, baselines, qrels)
    out["catalog_items"] = catalog
    out["judged_products_in_catalog"] = present
    out["judged_products"] = len(judged_ids)
    out["system_calls"] = stats
    return out


class GatewayCallError(RuntimeError):
    pass


async def _through_gateway(settings, queries: dict[str, str], address: str | None, concurrency: int):
    from aisle.evaluation.served import served_gateway
    from gateway.protos.aisle.v1 import aisle_pb2 as pb

    async with served_gateway(settings, address) as gw:
        async def search(text: str) -> tuple[list[str], str]:
            # DEPTH results on one page (the API's page limit is 100, Recall@100's depth).
            reply = await gw.stub.Search(pb.SearchRequest(query=text, page_size=DEPTH), timeout=CALL_TIMEOUT_S,
                                         metadata=gw.metadata)
            return [item.id for item in reply.items], (reply.degraded_reason or "degraded") if reply.degraded else ""

        run, stats = await system_run(search, queries, concurrency)
    stats["gateway"] = gw.where
    return run, stats

