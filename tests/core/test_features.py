"""Surface-text features: the substring formulation equals the set definitions it stands for."""

from __future__ import annotations

import math
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from core.features import text_columns


def by_sets(query: str, title: str) -> tuple[float, float, float]:
    """The features as defined: Jaccard of character trigrams of the normalised texts, share of
    the query's adjacent word pairs adjacent in the title, share of its numbers in the title."""

    def tokens(text):
        return re.findall(r"[a-z0-9]+(?:[./x][0-9]+)*", text.lower())

    def trigrams(text):
        padded = f" {' '.join(tokens(text))} "
        return {padded[i : i + 3] for i in range(len(padded) - 2)}

    q, t = tokens(query), tokens(title)
    qt, tt = trigrams(query), trigrams(title)
    tri = len(qt & tt) / len(qt | tt) if qt | tt else 0.0
    pairs = set(zip(q, q[1:]))
    bigram = len(pairs & set(zip(t, t[1:]))) / len(pairs) if pairs else 0.0
    nums = {w for w in q if any(c.isdigit() for c in w)}
    number = len(nums & set(t)) / len(nums) if nums else 0.0
    return tri, bigram, number


def test_sizes_and_word_order_on_real_looking_titles():
    # given a query with a size and two titles, one with the words in the query's order
    titles = ["Everbilt 1/2 in. x 10 ft. PVC Pipe", "Pipe cutter for PVC, 1/2 in."]
    # when the features are computed
    cols = text_columns("1/2 in. pvc pipe", titles)
    # then both titles hold the size and "1/2 in", only the first "pvc pipe" ...
    assert list(cols["number_match"]) == [1.0, 1.0]
    assert cols["bigram_match"][0] > cols["bigram_match"][1]
    # ... and every value equals its set definition
    for k, title in enumerate(titles):
        expected = by_sets("1/2 in. pvc pipe", title)
        got = (cols["trigram_sim"][k], cols["bigram_match"][k], cols["number_match"][k])
        assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) for a, b in zip(got, expected))


text = st.text(alphabet=st.sampled_from("ab1 2/.xX-é"), max_size=24)


@settings(max_examples=300, deadline=None)
@given(query=text, titles=st.lists(text, max_size=12))
def test_equal_to_the_set_definitions(query, titles):
    cols = text_columns(query, titles)
    for k, title in enumerate(titles):
        expected = by_sets(query, title)
        got = (cols["trigram_sim"][k], cols["bigram_match"][k], cols["number_match"][k])
        assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) for a, b in zip(got, expected)), (query, title)
