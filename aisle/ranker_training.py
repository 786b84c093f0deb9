"""`aisle train ranker`: learn the ranker from Home Depot relevance judgements (Search) and
Scientific purchase histories (Recommend), on features computed by the serving pipeline itself.

Search examples: every judged query through ``Engine.search_pool`` on the stack's database
(the Home Depot catalog loaded and embedded); label = judged relevance (unjudged = 0).
Recommend examples: a scratch database holds each user's train history minus its last item;
``Engine.recommend_pool`` ranks candidates for the user; label = 1 for that last item. The
system is then evaluated where the next item is the `valid` one, so nothing trains on it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.features import FEATURE_NAMES, INDEX
from core.settings import Settings
from export.heads.splits import hashed_holdout

# LambdaMART settings chosen on the 20% of queries/users held out by hash (docs/ranking.md):
# more leaves or rounds did not improve held-out NDCG@10; fewer lost ~0.01.
PARAMS = {
    "objective": "lambdarank",
    "metric": "ndcg",
    "ndcg_eval_at": [10],
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 2,
}
ROUNDS = 300
# Candidates per example group that enter training (the pool is ranked by RRF first): the
# ranker only ever reorders pools of this size at serving time too.
POOL = 300
# Search labels: relevance 1..3 in thirds/quarters -> integer grades 0..8.
LABEL_SCALE = 4


@dataclass
class Examples:
    features: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)

    def add(self, group: str, kind: str, features: np.ndarray, labels: np.ndarray) -> None:
        self.features.append(features.astype(np.float32))
        self.labels.append(labels.astype(np.int32))
        self.groups.append(group)
        self.kinds.append(kind)

    def select(self, keep) -> Examples:
        out = Examples()
        for f, l, g, k in zip(self.features, self.labels, self.groups, self.kinds):
            if keep(g):
                out.add(g, k, f, l)
        return out

    def arrays(self):
        return (
            np.concatenate(self.features),
            np.concatenate(self.labels),
            [len(l) for l in self.labels],
        )


def holdout(group: str) -> bool:
    return hashed_holdout(group)


async def search_examples(engine, queries: dict[str, str], qrels: dict[str, dict[str, float]], say) -> Examples:
    from gateway.model import SearchQuery

    out = Examples()
    items = list(queries.items())
    for n, (qid, text) in enumerate(items):
        pool = await engine.search_pool(SearchQuery(text, page_size=100, time_left_s=30.0))
        if pool.facts is None or not pool.facts.ids:
            continue
        judged = qrels.get(qid, {})
        labels = np.array(
            [int(round(max(judged.get(e, 1.0) - 1.0, 0.0) * LABEL_SCALE)) for e in pool.facts.external_ids]
        )
        keep = np.argsort(-pool.features[:, INDEX["rrf"]], kind="stable")[:POOL]
        out.add(f"q:{qid}", "search", pool.features[keep], labels[keep])
        if n % 500 == 0:
            say(f"search examples: {n}/{len(items)}")
    return out


async def recommend_examples(engine, targets: dict[str, str], say) -> Examples:
    from gateway.model import RecommendQuery

    out = Examples()
    users = list(targets.items())
    for n, (user, target) in enumerate(users):
        pool = await engine.recommend_pool(RecommendQuery(user_id=user, k=20, time_left_s=30.0))
        if pool.facts is None or not pool.facts.ids:
            continue
        labels = np.array([1 if e == target else 0 for e in pool.facts.external_ids])
        keep = np.argsort(-pool.features[:, INDEX["rrf"]], kind="stable")[:POOL]
        out.add(f"u:{user}", "recommend", pool.features[keep], labels[keep])
        if n % 1000 == 0:
            say(f"recommend examples: {n}/{len(users)}")
    return out


def fit(train: Examples, seed: int = 0, rounds: int = ROUNDS):
    import lightgbm as lgb

    x, y, groups = train.arrays()
    params = dict(PARAMS, seed=seed, label_gain=list(range(0, 2 ** 5)))
    data = lgb.Dataset(x, y, group=groups, feature_name=list(FEATURE_NAMES), free_raw_data=False)
    return lgb.train(params, data, num_boost_round=rounds)


def ndcg_at(scores: np.ndarray, labels: np.ndarray, k: int = 10) -> float | None:
    order = np.argsort(-scores, kind="stable")[:k]
    gains = labels[order]
    dcg = float(np.sum(gains / np.log2(np.arange(2, len(gains) + 2))))
    ideal = np.sort(labels)[::-1][:k]
    idcg = float(np.sum(ideal / np.log2(np.arange(2, len(ideal) + 2))))
    return dcg / idcg if idcg > 0 else None


def evaluate(booster, examples: Examples) -> dict[str, dict[str, float]]:
    """Pool NDCG@10 of the ranker against the fused (RRF) order, per kind of example."""
    out: dict[str, dict[str, list[float]]] = {}
    for f, l, kind in zip(examples.features, examples.labels, examples.kinds):
        ranked = ndcg_at(booster.predict(f), l)
        fused = ndcg_at(f[:, INDEX["rrf"]], l)
        if ranked is None:
            continue
        out.setdefault(kind, {"ranker": [], "rrf": []})
        out[kind]["ranker"].append(ranked)
        out[kind]["rrf"].append(fused)
    return {k: {m: float(np.mean(v)) for m, v in d.items()} | {"groups": len(d["ranker"])} for k, d in out.items()}


def run_async(coro):
    return asyncio.run(coro)


async def _with_engine(settings: Settings, fn):
    from gateway.engine import Engine

    engine = await Engine.create(settings)
    try:
        return await fn(engine)
    finally:
        await engine.close()


def train(
    settings: Settings,
    queries_path: Path,
    qrels_path: Path,
    interactions_path: Path,
    items_path: Path,
    out_dir: Path,
    seed: int = 0,
    say=print,
    holdout_out: Path | None = None,
) -> dict:
    from aisle.evaluation.recommend import Interaction, read_interactions, targets_and_history
    from aisle.evaluation.scratch import load_history, refresh_all, scratch_database
    from aisle.evaluation.search import read_qrels, read_queries
    from export import ranker

    queries = read_queries(queries_path)
    qrels = read_qrels(qrels_path)
    queries = {q: t for q, t in queries.items() if q in qrels}
    say(f"search: {len(queries)} judged queries")
    examples = run_async(_with_engine(settings, lambda e: search_examples(e, queries, qrels, say)))

    # Recommend: each user's last train row is the target; the rows before it the history.
    rows = [r for r in read_interactions(interactions_path) if r.split == "train"]
    last = {}
    for r in rows:
        if r.user not in last or r.position > last[r.user].position:
            last[r.user] = r
    relabelled = [Interaction(r.user, r.item, r.position, "valid" if last[r.user] is r else "train") for r in rows]
    targets, history = targets_and_history(relabelled, relabelled, target_split="valid")
    say(f"recommend: {len(targets)} users, history before each one's last train item")
    with scratch_database(settings.database_url, prefix="aisle_train") as url:
        load_history(url, items_path, history)
        scratch = settings.model_copy(update={"database_url": url})
        refresh_all(scratch, say)
        rec = run_async(_with_engine(scratch, lambda e: recommend_examples(e, {u: t.item for u, t in targets.items()}, say)))
    for f, l, g, k in zip(rec.features, rec.labels, rec.groups, rec.kinds):
        examples.add(g, k, f, l)

    train_part = examples.select(lambda g: not holdout(g))
    held = examples.select(holdout)
    booster = fit(train_part, seed)
    metrics = {"holdout": evaluate(booster, held)}
    say(f"held-out pool NDCG@10: {metrics['holdout']}")
    if holdout_out is not None:
        # The ranker that never saw the held-out queries and users: for end-to-end evaluation
        # on them (`aisle eval search --queries <held-out>` with this one exported).
        ranker.save(booster, FEATURE_NAMES, holdout_out, metrics)
    final = fit(examples, seed)
    ranker.save(final, FEATURE_NAMES, out_dir, metrics)
    return metrics

