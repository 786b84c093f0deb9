"""User profiles: a time-decayed, event-type-weighted sum of item embeddings plus category
affinities, folded in incrementally. Plain functions: the profile worker folds events past a
watermark, and the gateway folds the newest events on read for read-your-writes."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from core.catalog import category_key

# Categories kept per profile: the affinity feature reads the user's strongest few; 64 covers
# every Scientific user's whole history (max 50 distinct categories).
MAX_AFFINITIES = 64


@dataclass
class Profile:
    """Stored normalised so that old histories never underflow: after 100 half-lives a raw decayed
    sum is ~1e-30, at the edge of float32."""

    # Weighted mean of the folded item embeddings (its direction is the user's taste).
    vector: np.ndarray
    # Decayed total weight behind it, as of ``as_of``.
    weight: float
    # {category key: share of the weight}, each level of a path counted (shares per depth sum to 1).
    affinity: dict[str, float]
    as_of: datetime
    last_event_id: int = 0

    def unit(self) -> np.ndarray:
        norm = float(np.linalg.norm(self.vector))
        return self.vector / norm if norm > 0 else self.vector


@dataclass(frozen=True)
class Event:
    id: int
    item_id: int
    type: str
    occurred_at: datetime
    # The item's embedding for the profile's model version (None: not embedded yet).
    embedding: np.ndarray | None
    category_path: tuple[str, ...] = ()


def decay(seconds: float, half_life_s: float) -> float:
    return math.pow(0.5, seconds / half_life_s)


def fold(
    profile: Profile | None,
    events: Iterable[Event],
    weights: Mapping[str, float],
    half_life_s: float,
    now: datetime,
    dim: int,
) -> Profile:
    """Bring ``profile`` forward to ``now`` and add ``events`` (in id order).

    Every contribution is weighted by its event type and decayed by its age at ``now``, so
    folding in two steps equals folding everything at once (up to float rounding). Events of
    zero weight move the watermark but change nothing else.
    """
    if profile is None:
        profile = Profile(np.zeros(dim), 0.0, {}, now)
    carry = decay((now - profile.as_of).total_seconds(), half_life_s)
    # Work relative to the old weight so nothing underflows: sums are in units of profile.weight.
    scale = profile.weight * carry
    total = scale
    vector = np.asarray(profile.vector, dtype=np.float64) * scale
    affinity = {k: v * scale for k, v in profile.affinity.items()}
    last = profile.last_event_id
    for e in events:
        last = max(last, e.id)
        w = weights.get(e.type, 0.0) * decay((now - e.occurred_at).total_seconds(), half_life_s)
        if w <= 0 or e.embedding is None:
            continue
        vector += w * np.asarray(e.embedding, dtype=np.float64)
        total += w
        # Every level of the path: a drill buyer leans to "Power Tools" and to "Tools".
        for depth in range(1, len(e.category_path) + 1):
            key = category_key(e.category_path[:depth])
            affinity[key] = affinity.get(key, 0.0) + w
    if total <= 0:
        return Profile(np.asarray(profile.vector, dtype=np.float64), 0.0, dict(profile.affinity), now, last)
    top = sorted(affinity.items(), key=lambda kv: -kv[1])[:MAX_AFFINITIES]
    return Profile(vector / total, total, {k: v / total for k, v in top}, now, last)


def category_affinity(profile: Profile | None, category_path: tuple[str, ...] | list[str]) -> float:
    """The user's share of weight on the item's most specific category they have touched."""
    if profile is None or not category_path:
        return 0.0
    shares = profile.affinity
    for depth in range(len(category_path), 0, -1):
        share = shares.get(category_key(tuple(category_path[:depth])))
        if share:
            return share
    return 0.0
