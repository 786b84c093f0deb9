"""Profile folding: incremental equals all-at-once, decay and weights behave, nothing underflows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.profiles import Event, category_affinity, fold

WEIGHTS = {"view": 1.0, "click": 2.0, "cart": 4.0, "purchase": 8.0, "review": 6.0}
HALF_LIFE = 30 * 86400.0
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _events(n: int, rng: np.random.Generator, start_id: int = 1, when: datetime = T0) -> list[Event]:
    kinds = list(WEIGHTS)
    out = []
    for i in range(n):
        v = rng.normal(size=8)
        out.append(
            Event(
                start_id + i,
                int(rng.integers(1, 100)),
                kinds[int(rng.integers(0, len(kinds)))],
                when + timedelta(hours=int(rng.integers(0, 2000))),
                v / np.linalg.norm(v),
                ("Tools", "Power Tools", "Drills") if i % 2 else ("Garden",),
            )
        )
    return sorted(out, key=lambda e: e.id)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 30), split=st.integers(0, 30), seed=st.integers(0, 2**16))
def test_folding_in_two_steps_equals_folding_at_once(n, split, seed):
    # given a user's events and two ways of folding them
    events = _events(n, np.random.default_rng(seed))
    split = min(split, n)
    mid, end = T0 + timedelta(days=40), T0 + timedelta(days=100)
    # when folding all at once, or a prefix first and the rest later
    once = fold(None, events, WEIGHTS, HALF_LIFE, end, 8)
    first = fold(None, events[:split], WEIGHTS, HALF_LIFE, mid, 8)
    twice = fold(first, events[split:], WEIGHTS, HALF_LIFE, end, 8)
    # then profile, weight, affinities and watermark agree
    np.testing.assert_allclose(twice.vector, once.vector, rtol=1e-9, atol=1e-12)
    assert abs(twice.weight - once.weight) <= 1e-9 * once.weight
    assert twice.last_event_id == once.last_event_id == events[-1].id
    for key, share in once.affinity.items():
        assert abs(twice.affinity[key] - share) < 1e-9


def test_a_purchase_outweighs_a_view_and_recent_outweighs_old():
    a, b = np.eye(4)[0], np.eye(4)[1]
    now = T0 + timedelta(days=1)
    # given a view of A and a purchase of B at the same time
    p = fold(None, [Event(1, 1, "view", T0, a), Event(2, 2, "purchase", T0, b)], WEIGHTS, HALF_LIFE, now, 4)
    # then the profile leans to B in proportion to the weights (1 : 8)
    assert p.vector[1] / p.vector[0] == 8.0
    # given a purchase of A long ago and of B now
    old = T0 - timedelta(days=90)
    q = fold(None, [Event(1, 1, "purchase", old, a), Event(2, 2, "purchase", now, b)], WEIGHTS, HALF_LIFE, now, 4)
    # then three half-lives shrink A's contribution eightfold (up to the 1-day offset)
    ratio = q.vector[1] / q.vector[0]
    assert 7.5 < ratio < 8.5


def test_histories_decades_old_do_not_underflow():
    # given events 20 years old (240 half-lives: raw decayed sums are ~1e-73)
    long_ago = T0 - timedelta(days=20 * 365)
    v = np.ones(4) / 2
    p = fold(None, [Event(1, 1, "purchase", long_ago, v)], WEIGHTS, HALF_LIFE, T0, 4)
    # then the stored profile is still the item's direction, with a finite tiny weight
    np.testing.assert_allclose(p.unit(), v, rtol=1e-12)
    assert 0 < p.weight < 1e-60


def test_category_affinity_uses_the_most_specific_category_touched():
    v = np.ones(4) / 2
    p = fold(
        None,
        [Event(1, 1, "purchase", T0, v, ("Tools", "Power Tools", "Drills")), Event(2, 2, "purchase", T0, v, ("Garden",))],
        WEIGHTS,
        HALF_LIFE,
        T0,
        4,
    )
    assert category_affinity(p, ("Tools", "Power Tools", "Drills")) == 0.5
    # a sibling category the user never touched falls back to the shared parent
    assert category_affinity(p, ("Tools", "Power Tools", "Saws")) == 0.5
    assert category_affinity(p, ("Kitchen",)) == 0.0
    assert category_affinity(None, ("Tools",)) == 0.0
