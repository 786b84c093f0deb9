"""Lexical and surface-text features: the substring formulation equals the set definitions it
stands for; what an item lacks of the query; product types; stems equal Postgres' lexemes."""

from __future__ import annotations

import math
import re

import numpy as np
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.features import (
    BLEND_SIM_WEIGHT,
    BM25_B,
    BM25_K1,
    LexiconStats,
    blend_column,
    brand_share_column,
    lexical_columns,
    stem,
    text_columns,
    title_head,
    type_columns,
)


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


# --- What an item lacks of the query, and product types -------------------------------------

def test_an_item_lacking_the_rarest_query_word_scores_lower_than_one_lacking_a_common_one():
    # given a query of a common and a rare lexeme, and two items that each lack one of them
    stats = LexiconStats(documents=1000, doc_freq={"cordless": 20, "drill": 200}, mean_length=8.0)
    # when the lexical columns are computed
    cols = lexical_columns(["cordless", "drill"], [["drill", "bit"], ["cordless", "saw"], ["cordless", "drill"]], stats)
    # then each lacks one lexeme, the first the rarer one: less of the query's IDF mass, a rarer miss
    assert list(cols["missing_terms"]) == [1.0, 1.0, 0.0]
    assert cols["max_missing_idf"][0] == pytest.approx(stats.idf("cordless"))
    assert cols["max_missing_idf"][1] == pytest.approx(stats.idf("drill"))
    assert cols["max_missing_idf"][2] == 0.0
    assert cols["idf_coverage"][0] < cols["idf_coverage"][1] < cols["idf_coverage"][2] == pytest.approx(1.0)


def lexical_by_items(query: list[str], items: list[list[str]], stats: LexiconStats | None) -> list[tuple]:
    """The lexical columns as defined, item by item: (bm25, query_coverage, item_length,
    idf_coverage, max_missing_idf, missing_terms)."""
    terms = set(query)
    idf = {t: stats.idf(t) if stats else 1.0 for t in terms}
    avg = stats.mean_length if stats and stats.mean_length > 0 else 8.0
    rows = []
    for lexemes in items:
        doc = set(lexemes)
        hits = terms & doc
        hit_idf = sum(idf[t] for t in hits)
        norm = BM25_K1 * (1 - BM25_B + BM25_B * len(doc) / avg)
        missing = [idf[t] for t in terms - doc]
        rows.append((
            hit_idf * (BM25_K1 + 1) / (1 + norm) if terms else 0.0,
            len(hits) / len(terms) if terms else 0.0,
            math.log1p(len(doc)),
            hit_idf / sum(idf.values()) if terms else 0.0,
            max(missing, default=0.0),
            float(len(missing)),
        ))
    return rows


lexeme = st.sampled_from(["drill", "cordless", "bit", "saw", "pvc", "pipe", "1/2", "dewalt"])
LEXICAL_COLUMNS = ("bm25", "query_coverage", "item_length", "idf_coverage", "max_missing_idf", "missing_terms")


@settings(max_examples=300, deadline=None)
@given(
    query=st.lists(lexeme, max_size=5),
    items=st.lists(st.lists(lexeme, max_size=8), max_size=12),
    doc_freq=st.dictionaries(lexeme, st.integers(min_value=0, max_value=1000)),
    mean_length=st.sampled_from([0.0, 3.5, 9.5]),
    with_stats=st.booleans(),
)
def test_lexical_columns_equal_their_per_item_definition(query, items, doc_freq, mean_length, with_stats):
    # given any query, items (repeated lexemes included) and catalog statistics, or none
    stats = LexiconStats(documents=1000, doc_freq=doc_freq, mean_length=mean_length) if with_stats else None
    # when the columns are computed for all items at once
    cols = lexical_columns(query, items, stats)
    # then each item's values are those of the definition
    assert all(cols[name].shape == (len(items),) and cols[name].dtype == np.float32 for name in LEXICAL_COLUMNS)
    for k, expected in enumerate(lexical_by_items(query, items, stats)):
        got = tuple(float(cols[name][k]) for name in LEXICAL_COLUMNS)
        assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for a, b in zip(got, expected)), (query, items[k])


@pytest.mark.parametrize(
    "title, head",
    [
        ("Whirlpool 1.9 cu. ft. Over the Range Convection Microwave in Stainless Steel", ("convect", "microwav")),
        ("Hampton Bay Caramel Simple Weave Bamboo Rollup Shade - 96 in. W x 72 in. L", ("rollup", "shade")),
        ("MD Building Products 36 in. x 36 in. Cloverleaf Aluminum Sheet, Silver", ("aluminum", "sheet")),
        ("Valley View Industries Metal Stakes (4-Pack)", ("metal", "stake")),
        ("Simpson Strong-Tie 12-Gauge Angle", ("gaug", "angl")),
        ("36 in.", ()),
    ],
)
def test_a_titles_head_is_its_product_type(title, head):
    assert title_head(title) == head


def test_type_columns_match_the_query_s_last_word_and_the_title_s_head():
    # given "microwave over stove" (lexemes as Postgres makes them) and three real-looking titles
    titles = ["Magic Chef 1.6 cu. ft. Over-the-Range Microwave in White", "Stove Top Cover in Black",
              "GE 30 in. Electric Range with Stove Guard"]
    items = [["1.6", "chef", "cu", "ft", "magic", "microwav", "rang", "white"], ["black", "cover", "stove", "top"],
             ["30", "electr", "ge", "guard", "rang", "stove"]]
    # when the product-type columns are computed
    cols = type_columns("microwave over stove", ["microwav", "stove"], titles, items)
    # then the microwave is the type asked for, the cover only names the stove, the range has it as
    # a qualifier, and the query's last word ("stove") is in the last two
    assert list(cols["title_head_in_query"]) == [1.0, 0.0, 0.0]
    assert list(cols["title_head2_in_query"]) == [1.0, 0.0, 0.0]
    assert list(cols["query_last_in_item"]) == [0.0, 1.0, 1.0]


def test_stems_equal_postgres_english_lexemes_on_real_titles(database_url):
    # given the words of real Home Depot titles, as the product-type features see them
    titles = ["Whirlpool 1.9 cu. ft. Over the Range Convection Microwave in Stainless Steel with Sensor Cooking",
              "Lithonia Lighting Quantum 2-Light Black LED Emergency Fixture Unit",
              "Toro Personal Pace Recycler 22 in. Variable Speed Self-Propelled Gas Lawn Mower with Briggs",
              "Nantucket Pavers Patio-on-a-Pallet 10 ft. x 10 ft. Concrete Tan Variegated Basketweave Yorkstone Paver",
              "Samsung 4.2 cu. ft. Front Load Washer with Steam in White, ENERGY STAR batteries shelves faucets"]
    words = sorted({w for t in titles for w in re.findall(r"[a-z]{3,}", t.lower())})
    # when Postgres makes their lexemes ('english', as the lexical index)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT w, tsvector_to_array(to_tsvector('english', w)) FROM unnest(%s::text[]) w",
                            (words,)).fetchall()
    # then every word that is not a stop word stems the same in Python
    lexemes = {w: a[0] for w, a in rows if a}
    assert len(lexemes) >= 45
    assert {w: stem(w) for w in lexemes} == lexemes


def test_blend_score_is_the_blend_baselines_score():
    # given raw co-occurrence both ways and cosines to the last item
    forward = np.array([2.0, 0.0, 1.0], dtype=np.float32)
    backward = np.array([2.0, 1.0, 0.0], dtype=np.float32)
    sim_last = np.array([0.1, 0.8, 0.4], dtype=np.float32)
    # when blended
    blend = blend_column(forward, backward, sim_last)
    # then co-occurrence is scaled to the pool's best (4) and the cosine added at the baseline's weight
    expected = np.array([1.0, 0.25, 0.25]) + BLEND_SIM_WEIGHT * sim_last
    assert np.allclose(blend, expected)
    # and without any co-occurrence only the cosine remains
    assert np.allclose(blend_column(np.zeros(3), np.zeros(3), sim_last), BLEND_SIM_WEIGHT * sim_last)


def test_brand_share_counts_recent_items_of_the_same_brand_case_blind():
    # given four recent items, two of them by one brand and one without a brand
    recent = ["3M", "3m", "Loctite", None]
    # when candidates by that brand, another brand, an unseen one and none are scored
    share = brand_share_column(["3M", "LOCTITE", "Gorilla", None], recent)
    # then each gets the share of the recent items carrying its brand
    assert share.tolist() == [0.5, 0.25, 0.0, 0.0]
    # and with no branded recent item every share is 0
    assert brand_share_column(["3M"], [None]).tolist() == [0.0]


def _clear_title_caches():
    from core.features import _TITLE_TRIGRAMS, _padded_title, title_head

    _padded_title.cache_clear()
    title_head.cache_clear()
    _TITLE_TRIGRAMS.clear()


def test_warmed_title_caches_give_the_same_columns():
    from core.features import _TITLE_TRIGRAMS, _padded_title, title_head, warm_title_caches

    # Given titles computed cold
    titles = ["DEWALT 20-Volt MAX Cordless Drill with (2) Batteries", "Bosch 18 in. x 1/2 in. Drill Bit, Black",
              "Hampton Bay 36 in. Ceiling Fan in Brushed Nickel"]
    _clear_title_caches()
    cold = text_columns("cordless drill 18 in", titles), type_columns("cordless drill", ["cordless", "drill"], titles, [[], [], []])
    # when the caches are warmed first
    _clear_title_caches()
    warm_title_caches(titles)
    assert title_head.cache_info().currsize == len(_TITLE_TRIGRAMS) == len(titles)
    warm = text_columns("cordless drill 18 in", titles), type_columns("cordless drill", ["cordless", "drill"], titles, [[], [], []])
    # then the columns are the same, and computing them missed no cache
    for a, b in zip(cold, warm):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert title_head.cache_info().misses == _padded_title.cache_info().misses == len(titles)
    assert len(_TITLE_TRIGRAMS) == len(titles)


def test_a_full_trigram_cache_still_answers_every_title(monkeypatch):
    import core.features
    from core.features import _TITLE_TRIGRAMS

    # Given room for two titles' trigram codes, and four titles, one of them twice
    titles = ["Cordless Drill", "Drill Bit Set", "Ceiling Fan", "Cordless Drill", "Fan Blade 36 in."]
    expected = [by_sets("cordless drill 36", t) for t in titles]
    _clear_title_caches()
    monkeypatch.setattr(core.features, "TITLE_CACHE", 2)
    # when the columns are computed twice
    for _ in range(2):
        cols = text_columns("cordless drill 36", titles)
        # then the cache holds two titles, and every title is scored as its set definition says
        assert len(_TITLE_TRIGRAMS) == 2
        got = list(zip(cols["trigram_sim"], cols["bigram_match"], cols["number_match"]))
        assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) for g, e in zip(got, expected) for a, b in zip(g, e))
    _clear_title_caches()
