"""MMR diversity: plain score order at lambda 1, a near-duplicate passed over, and MMR over the
best few of a pool scaled by the pool's range picking as over the whole pool."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.fusion import mmr


def test_lambda_one_is_score_order():
    # Given scores and any embeddings
    scores = np.array([0.2, 0.9, 0.5, 0.7])
    # when MMR weighs relevance alone, then it is the score order
    assert mmr(scores, np.eye(4), 3, 1.0) == [1, 3, 2]


def test_a_near_duplicate_of_the_first_pick_gives_way():
    # Given the best item, a near-copy of it scored second, and a different item scored third
    scores = np.array([1.0, 0.95, 0.9, 0.0])
    embeddings = np.array([[1.0, 0.0], [0.99, 0.01], [0.0, 1.0], [0.5, 0.5]])
    # when MMR picks two with some weight on diversity
    picked = mmr(scores, embeddings, 2, 0.7)
    # then the different item comes second, not the copy
    assert picked == [0, 2]


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(12, 60), k=st.integers(1, 10),
       lam=st.sampled_from([0.5, 0.7, 0.9]), m=st.integers(10, 40))
def test_the_best_few_scaled_by_the_pool_s_range_pick_as_the_whole_pool(seed, n, k, lam, m):
    # Given a pool of random scores and embeddings
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=n)
    embeddings = rng.normal(size=(n, 8))
    whole = mmr(scores, embeddings, k, lam)
    top = np.argsort(-scores, kind="stable")[:m]
    # where every pick of MMR over the whole pool lies among the best m
    assume(set(whole) <= set(top.tolist()))
    # when MMR runs over the best m alone, scaled by the whole pool's range
    few = [int(top[i]) for i in mmr(scores[top], embeddings[top], k, lam, (scores.min(), scores.max()))]
    # then it picks the same, in the same order
    assert few == [int(i) for i in whole]
