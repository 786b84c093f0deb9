"""`aisle eval recommend`: next-item recommendation on a leave-one-out split (the Scientific
format), through the system against popularity, co-occurrence and co-occurrence blended with
text-embedding similarity.

The system must see exactly each user's history before the held-out item, so the evaluation
builds a scratch database (on the stack's Postgres), loads the items and the history, runs the
refresh jobs, and asks a gateway on that database for every user's recommendations.
"""

from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aisle.evaluation.metrics import next_item_metrics

# Co-occurrence window and recent items of the baselines: the same as the system's graph job
# (workers/jobs/graph.py) and gateway (gateway/engine.py), so baselines see what the system sees.
WINDOW = 3
RECENT = 10
K = 20
BLEND_WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class EvalInputError(ValueError):
    pass


@dataclass(frozen=True)
class Interaction:
    user: str
    item: str
    position: int
    split: str


def read_interactions(path: Path) -> list[Interaction]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        need = {"reviewer_id", "position", "asin"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise EvalInputError(f"{path}: expected columns reviewer_id, position, asin (and loo_split)")
        rows = []
        for line, r in enumerate(reader, start=2):
            try:
                rows.append(Interaction(r["reviewer_id"], r["asin"], int(r["position"]), r.get("loo_split") or ""))
            except ValueError:
                raise EvalInputError(f"{path}:{line}: position {r['position']!r} is not an integer") from None
    return rows


def targets_and_history(
    interactions: list[Interaction], test: list[Interaction], target_split: str | None = None
) -> tuple[dict[str, Interaction], dict[str, list[Interaction]]]:
    """Each test user's held-out item, and every user's history before it.

    The target split is ``test`` when the test file has such rows, else ``valid``, else each
    user's last row. History is every row of the interactions file before the user's target
    (for users without a target: all their rows that are not of the target split)."""
    splits = {r.split for r in test}
    split = target_split or ("test" if "test" in splits else "valid" if "valid" in splits else None)
    targets: dict[str, Interaction] = {}
    for r in test:
        if split is None or r.split == split:
            if r.user not in targets or r.position > targets[r.user].position:
                targets[r.user] = r
    history: dict[str, list[Interaction]] = defaultdict(list)
    for r in interactions:
        t = targets.get(r.user)
        if (t is not None and r.position < t.position) or (t is None and r.split != split):
            history[r.user].append(r)
    for rows in history.values():
        rows.sort(key=lambda r: r.position)
    return targets, dict(history)


# --- Baselines -----------------------------------------------------------------------------

def cooccurrence(history: dict[str, list[Interaction]]) -> dict[str, Counter]:
    """Symmetric co-occurrence within WINDOW positions, weighted 1/gap."""
    co: dict[str, Counter] = defaultdict(Counter)
    for rows in history.values():
        items = [r.item for r in rows]
        for i, a in enumerate(items):
            for j in range(i + 1, min(i + 1 + WINDOW, len(items))):
                b = items[j]
                if a != b:
                    w = 1.0 / (j - i)
                    co[a][b] += w
                    co[b][a] += w
    return co


def popularity_run(history, users) -> dict[str, list[str]]:
    counts = Counter(r.item for rows in history.values() for r in rows)
    ranked = [i for i, _ in counts.most_common()]
    out = {}
    for u in users:
        seen = {r.item for r in history.get(u, [])}
        out[u] = [i for i in ranked if i not in seen][:K]
    return out


def _recent(rows: list[Interaction]) -> list[str]:
    out: list[str] = []
    for r in reversed(rows):
        if r.item not in out:
            out.append(r.item)
        if len(out) >= RECENT:
            break
    return out


def blend_run(history, users, co, embeddings: dict[str, np.ndarray], weight: float, popular: list[str]) -> dict[str, list[str]]:
    """Co-occurrence from the recent items (recency-weighted), plus ``weight`` x cosine of the
    candidate to the user's last item; popularity fills what both leave empty."""
    ids = list(embeddings)
    index = {i: k for k, i in enumerate(ids)}
    matrix = np.stack([embeddings[i] for i in ids]) if ids else np.zeros((0, 1))
    pop_rank = {i: k for k, i in enumerate(popular)}
    out = {}
    for u in users:
        rows = history.get(u, [])
        seen = {r.item for r in rows}
        recent = _recent(rows)
        scores = np.zeros(len(ids))
        for pos, item in enumerate(recent):
            for other, w in co.get(item, {}).items():
                if other in index:
                    scores[index[other]] += w / (1 + pos)
        if scores.max(initial=0) > 0:
            scores /= scores.max()
        if weight and recent and recent[0] in index:
            scores += weight * (matrix @ matrix[index[recent[0]]])
        # Popularity breaks ties (and fills users with no signal) without outweighing either.
        scores += np.array([1e-6 / (1 + pop_rank.get(i, len(popular))) for i in ids])
        order = np.argsort(-scores, kind="stable")
        out[u] = [ids[k] for k in order if ids[k] not in seen][:K]
    return out


def tune_blend(interactions, co_builder, embeddings, popular) -> tuple[float, dict[float, float]]:
    """The blend weight that maximises NDCG@10 on the `valid` rows (history = rows before them)."""
    valid_targets, valid_history = targets_and_history(interactions, interactions, target_split="valid")
    if not valid_targets:
        return 0.0, {}
    co = co_builder(valid_history)
    users = list(valid_targets)
    truth = {u: valid_targets[u].item for u in users}
    scores = {}
    for w in BLEND_WEIGHTS:
        run = blend_run(valid_history, users, co, embeddings, w, popular)
        scores[w] = next_item_metrics(truth, run)["ndcg@10"]
    best = max(scores, key=lambda w: (scores[w], -w))
    return best, scores


def write_history_csv(history: dict[str, list[Interaction]], path: Path, item_index: dict[str, int]) -> None:
    """History in the Scientific interactions format, for the loader's adapter."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_idx", "reviewer_id", "position", "item_idx", "asin", "loo_split"])
        for u, (user, rows) in enumerate(history.items()):
            for r in rows:
                w.writerow([u, user, r.position, item_index.get(r.item, -1), r.item, "train"])


def dcg_at(ranked: list[str], target: str, k: int) -> float:
    return 1.0 / math.log2(ranked.index(target) + 2) if target in ranked[:k] else 0.0
