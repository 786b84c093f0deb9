"""Ranking and classification metrics (ranx for ranking, the standard definitions of
../shared/data/README.md)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# ranx takes integer relevance; gains (relevance - 1, in thirds and quarters of a point) are
# scaled by 12 to integers, which leaves NDCG unchanged (a ratio of gains).
GAIN_SCALE = 12


def search_metrics(
    qrels: Mapping[str, Mapping[str, float]], run: Mapping[str, list[str]], relevant_at: float = 2.5
) -> dict[str, float]:
    """NDCG@10 over the full catalog (unjudged = 0) and over the judged pool only, with gain =
    relevance - 1; Recall@100 of products with relevance >= ``relevant_at``.

    A query enters a metric only if it has something to find for it (a positive gain for NDCG,
    a product at or above ``relevant_at`` for recall)."""
    from ranx import Qrels, Run, evaluate

    gains = {
        q: {d: int(round((r - 1) * GAIN_SCALE)) for d, r in docs.items() if r > 1}
        for q, docs in qrels.items()
    }
    gains = {q: d for q, d in gains.items() if d and q in run}
    relevant = {q: {d: 1 for d, r in docs.items() if r >= relevant_at} for q, docs in qrels.items()}
    relevant = {q: d for q, d in relevant.items() if d and q in run}

    def as_run(ranked: Mapping[str, list[str]], queries) -> Run:
        return Run({q: {d: float(len(ranked[q]) - i) for i, d in enumerate(ranked[q])} or {"__none__": 0.0} for q in queries})

    judged_only = {q: [d for d in run[q] if d in qrels[q]] for q in gains}
    out = {
        "ndcg@10": float(evaluate(Qrels(gains), as_run(run, gains), "ndcg@10")),
        "ndcg@10_judged": float(evaluate(Qrels(gains), as_run(judged_only, gains), "ndcg@10")),
        "recall@100": float(evaluate(Qrels(relevant), as_run(run, relevant), "recall@100")),
        "queries": len(run),
        "queries_ndcg": len(gains),
        "queries_recall": len(relevant),
    }
    return out


def next_item_metrics(targets: Mapping[str, str], run: Mapping[str, list[str]]) -> dict[str, float]:
    """Recall@10/20 and NDCG@10/20 of one held-out next item per user (full ranking, history
    already excluded by the system under test)."""
    out: dict[str, float] = {}
    users = list(targets)
    for k in (10, 20):
        hits, gains = [], []
        for u in users:
            ranked = run.get(u, [])[:k]
            if targets[u] in ranked:
                pos = ranked.index(targets[u])
                hits.append(1.0)
                gains.append(1.0 / np.log2(pos + 2))
            else:
                hits.append(0.0)
                gains.append(0.0)
        out[f"recall@{k}"] = float(np.mean(hits)) if users else 0.0
        out[f"ndcg@{k}"] = float(np.mean(gains)) if users else 0.0
    out["users"] = len(users)
    return out


def classification_metrics(gold: list[str], predicted: list[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_f1": float(f1_score(gold, predicted, average="macro", zero_division=0)),
        "n": len(gold),
    }
