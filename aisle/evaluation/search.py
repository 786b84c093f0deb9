"""`aisle eval search`: the system's Search against BM25-only, dense-only and their fusion, on
a queries file and a qrels file in the Home Depot format."""

from __future__ import annotations

import asyncio
import csv
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
import scipy.sparse as sp

from aisle.evaluation.metrics import search_metrics
from core.features import BM25_B, BM25_K1, RRF_K

# Depth of every run: Recall@100 needs 100; the fusion baseline fuses two lists this deep.
DEPTH = 100
FUSION_DEPTH = 1000


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
class LexicalIndex:
    """BM25 over the catalog's Postgres lexemes (English Snowball stems, stop words removed):
    the same analysis the system's full-text retriever uses, scored the standard way."""

    ids: list[str]
    vocab: dict[str, int]
    weights: sp.csc_matrix  # [docs, terms] BM25 term weights

    @classmethod
    def build(cls, conn: psycopg.Connection) -> LexicalIndex:
        rows = conn.execute(
            "SELECT i.external_id, t.lexeme, coalesce(array_length(t.positions, 1), 1) "
            "FROM items i, unnest(i.search_tsv) AS t ORDER BY i.id"
        ).fetchall()
        doc_index: dict[str, int] = {}
        vocab: dict[str, int] = {}
        r, c, v = [], [], []
        for ext, lexeme, tf in rows:
            r.append(doc_index.setdefault(ext, len(doc_index)))
            c.append(vocab.setdefault(lexeme, len(vocab)))
            v.append(tf)
        tf = sp.csr_matrix((np.asarray(v, np.float32), (r, c)), shape=(len(doc_index), len(vocab)))
        lengths = np.asarray(tf.sum(axis=1)).ravel()
        df = np.bincount(tf.indices, minlength=len(vocab))
        idf = np.log(1 + (len(doc_index) - df + 0.5) / (df + 0.5)).astype(np.float32)
        norm = BM25_K1 * (1 - BM25_B + BM25_B * lengths / lengths.mean())
        tf = tf.tocoo()
        w = idf[tf.col] * tf.data * (BM25_K1 + 1) / (tf.data + norm[tf.row])
        weights = sp.csc_matrix((w, (tf.row, tf.col)), shape=tf.shape)
        return cls(list(doc_index), vocab, weights)

    def search(self, lexemes: list[str], k: int) -> list[str]:
        cols = [self.vocab[t] for t in set(lexemes) if t in self.vocab]
        if not cols:
            return []
        scores = np.asarray(self.weights[:, cols].sum(axis=1)).ravel()
        top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [self.ids[i] for i in top if scores[i] > 0]


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
    lexical = LexicalIndex.build(conn)
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
    search: Callable[[str], Awaitable[list[str]]], queries: dict[str, str], concurrency: int = 8
) -> tuple[dict[str, list[str]], dict]:
    """Run every query through ``search`` (the gateway) with bounded concurrency."""
    run: dict[str, list[str]] = {}
    latencies: list[float] = []
    pending = list(queries.items())
    degraded = 0

    async def worker():
        nonlocal degraded
        while pending:
            qid, text = pending.pop()
            t = time.perf_counter()
            result = await search(text)
            latencies.append(time.perf_counter() - t)
            ids, was_degraded = result
            degraded += bool(was_degraded)
            run[qid] = ids

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return run, {"p50_ms": float(np.percentile(latencies, 50) * 1000), "degraded": degraded}


def report(system: dict[str, list[str]], baselines: dict[str, dict[str, list[str]]], qrels) -> dict:
    qrels = {q: d for q, d in qrels.items() if q in system}
    out = {"system": search_metrics(qrels, system)}
    for name, run in baselines.items():
        out[name] = search_metrics(qrels, run)
    best = max(baselines, key=lambda n: out[n]["ndcg@10"])
    out["best_baseline"] = best
    out["ratios_vs_best_baseline"] = {
        m: (out["system"][m] / out[best][m] if out[best][m] else None) for m in ("ndcg@10", "ndcg@10_judged", "recall@100")
    }
    out["ratio_vs_fusion_ndcg@10"] = out["system"]["ndcg@10"] / out["rrf"]["ndcg@10"] if out["rrf"]["ndcg@10"] else None
    return out
