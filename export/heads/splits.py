"""Held-out splits. Both are seeded and depend only on the labels/groups, never on row order quirks."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, train_test_split


def stratified_holdout(labels: Sequence[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/held-out row indices with every label in the same proportion on both sides.

    Labels with a single example cannot be stratified; they stay in training.
    """
    labels_arr = np.asarray(labels)
    values, counts = np.unique(labels_arr, return_counts=True)
    rare = np.isin(labels_arr, values[counts < 2])
    rows = np.flatnonzero(~rare)
    train, held = train_test_split(rows, test_size=fraction, random_state=seed, stratify=labels_arr[rows])
    return np.sort(np.concatenate([train, np.flatnonzero(rare)])), np.sort(held)


def group_holdout(groups: Sequence[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/held-out row indices with no group (e.g. product ``asin``) on both sides."""
    groups_arr = np.asarray(groups)
    train, held = next(
        GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed).split(groups_arr, groups=groups_arr)
    )
    return np.sort(train), np.sort(held)


# Share of judged queries and users held out by hash: the ranker's and the query encoder's
# common split, so each is judged on queries neither saw.
SHARED_HOLDOUT = 0.2


def hashed_holdout(group: str, fraction: float = SHARED_HOLDOUT) -> bool:
    """Whether ``group`` (e.g. "q:<query_id>") is held out: a fixed hash, so every model trained
    on the same judgements (the query encoder, the ranker) holds out the same groups."""
    return int(hashlib.sha1(group.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction
