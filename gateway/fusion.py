"""Plain ranking functions: fusion of retriever lists and diversity re-ranking."""

from __future__ import annotations

import numpy as np

from core.features import RRF_K


def rank_positions(lists: dict[str, list[int]], ids: list[int]) -> dict[str, np.ndarray]:
    """Per retriever, the 1-based rank of each id in ``ids`` (0 when absent)."""
    index = {item_id: k for k, item_id in enumerate(ids)}
    out = {}
    for name, ranked in lists.items():
        # A Python list: numpy's per-element access costs ~10× a list's in this loop.
        r = [0] * len(ids)
        for pos, item_id in enumerate(ranked, start=1):
            k = index.get(item_id)
            if k is not None and r[k] == 0:
                r[k] = pos
        out[name] = np.array(r, dtype=np.float32)
    return out


def reciprocal_rank_fusion(lists: dict[str, list[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Ids ordered by sum of 1/(k + rank) over the lists (ties by first appearance)."""
    scores: dict[int, float] = {}
    for ranked in lists.values():
        for pos, item_id in enumerate(ranked, start=1):
            scores[item_id] = scores.get(item_id, 0.0) + 1.0 / (k + pos)
    return sorted(scores.items(), key=lambda kv: -kv[1])


def mmr(scores: np.ndarray, embeddings: np.ndarray, k: int, lam: float) -> list[int]:
    """Maximal marginal relevance: pick ``k`` indices trading score against similarity to what
    is already picked (``lam`` = 1 is plain score order)."""
    n = len(scores)
    if n == 0 or k <= 0:
        return []
    if lam >= 1.0:
        return list(np.argsort(-scores, kind="stable")[:k])
    # Scores to [0, 1] so the trade-off does not depend on the ranker's scale.
    span = float(scores.max() - scores.min())
    rel = (scores - scores.min()) / span if span > 0 else np.zeros(n)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = embeddings / np.where(norms > 0, norms, 1)
    picked: list[int] = []
    max_sim = np.zeros(n)
    available = np.ones(n, dtype=bool)
    for _ in range(min(k, n)):
        value = lam * rel - (1 - lam) * max_sim
        value[~available] = -np.inf
        best = int(np.argmax(value))
        picked.append(best)
        available[best] = False
        max_sim = np.maximum(max_sim, unit @ unit[best])
    return picked
