"""The evaluation's pure parts: baselines, splits, scratch-database URLs (no servers)."""

from __future__ import annotations

import numpy as np

from aisle.evaluation.recommend import (
    Interaction,
    blend_run,
    cooccurrence,
    popularity_run,
    targets_and_history,
)
from aisle.evaluation.scratch import with_database
from aisle.evaluation.search import DenseIndex, LexicalBaseline, fuse
from gateway.lexical_index import LexicalIndex


def rows(user: str, items: str, last_split: str = "valid") -> list[Interaction]:
    return [Interaction(user, item, pos, last_split if pos == len(items) - 1 else "train") for pos, item in enumerate(items)]


def test_targets_are_the_valid_rows_and_history_what_came_before():
    data = rows("u1", "abcd") + rows("u2", "bce")
    targets, history = targets_and_history(data, data)
    assert {u: t.item for u, t in targets.items()} == {"u1": "d", "u2": "e"}
    assert [r.item for r in history["u1"]] == ["a", "b", "c"]


def test_blend_excludes_history_and_follows_cooccurrence_then_similarity():
    history = {"u1": rows("u1", "ab")[:2], "u2": rows("u2", "bcx")[:3], "u3": rows("u3", "bc")[:2]}
    co = cooccurrence(history)
    vectors = {i: np.eye(4, dtype=np.float32)[k % 4] for k, i in enumerate("abcxyz")}
    popular = ["b", "c", "a", "x"]
    run = blend_run(history, ["u1"], co, vectors, 0.0, popular)["u1"]
    # u1 bought a then b: c co-occurs with b (twice), x with b once at gap 2; nothing bought again.
    assert run[0] == "c" and "a" not in run and "b" not in run
    assert len(run) == len(vectors) - 2
    assert popularity_run(history, ["u1"])["u1"][0] == "c"
    # With a large weight, the item whose vector equals the last item's wins (z: 5 % 4 = 1, as b).
    assert blend_run(history, ["u1"], co, vectors, 100.0, popular)["u1"][0] == "z"


def test_dense_index_smaller_than_the_depth():
    index = DenseIndex(["a", "b", "c"], np.eye(3, dtype=np.float32))
    assert index.search(np.array([0, 1, 0], dtype=np.float32), 1000)[0] == "b"


def test_fusion_rewards_agreement():
    assert fuse(["a", "b"], ["b", "c"])[0] == "b"


def test_lexical_baseline_is_empty_for_unknown_terms():
    baseline = LexicalBaseline(LexicalIndex.build([(7, ["drill"], [1]), (8, ["hammer"], [1])]), {7: "a", 8: "b"})
    assert baseline.search(["saw"], 10) == [] and baseline.search(["drill"], 10) == ["a"]


def test_scratch_database_url_stays_a_url():
    assert with_database("postgresql://postgres@127.0.0.1:5432/postgres?sslmode=disable", "aisle_x") == (
        "postgresql://postgres@127.0.0.1:5432/aisle_x?sslmode=disable"
    )
