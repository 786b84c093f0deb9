"""The ranker's features: one definition for training (`aisle train ranker`) and serving (the
gateway), so a model never sees features computed two ways.

Retrieval code gathers raw signals per candidate into :class:`Signals`; :func:`matrix` turns
them into the float32 feature matrix, columns in :data:`FEATURE_NAMES` order.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

# Reciprocal-rank fusion constant (Cormack et al. 2009); also the baseline's.
RRF_K = 60
# BM25 parameters (Robertson's usual values; titles are short, so length matters little).
BM25_K1 = 1.2
BM25_B = 0.75

FEATURE_NAMES: tuple[str, ...] = (
    "is_search",  # 1 for Search, 0 for Recommend and SimilarItems
    "dense_sim",  # cosine of the query (or profile/context) vector and the item
    "dense_rank",  # 1/rank in the dense (HNSW) retriever, 0 when it did not return the item
    "lexical_score",  # BM25 of the lexical retriever (title, brand, description), x/(1+x)
    "lexical_rank",  # 1/rank in the full-text retriever
    "bm25",  # BM25 with binary term frequency over the item's lexemes (every candidate)
    "graph_score",  # weight of the knowledge-graph path that brought the item in
    "graph_rank",  # 1/rank in the knowledge-graph retriever
    "rrf",  # reciprocal-rank fusion of all retrievers
    "retrievers",  # how many retrievers returned the item
    "query_coverage",  # share of the query's lexemes found in the item's
    "trigram_sim",  # Jaccard of character trigrams of query and title (robust to typos)
    "bigram_match",  # share of the query's adjacent word pairs adjacent in the title too
    "number_match",  # share of the query's numbers and sizes ("1/2", "2x4", "36") in the title
    "item_length",  # log1p of the item's lexeme count
    "brand_match",  # the query names the item's brand
    "category_match",  # the query, the context or the user's recent items share the item's category
    "popularity",  # log1p of decayed, event-weighted popularity
    "rating",  # average rating, 0 when unrated
    "review_count",  # log1p of the number of ratings
    "sentiment",  # mean P(positive) of its reviews, 0.5 when none
    "price",  # log1p of the price, 0 when unknown
    "has_price",
    "profile_sim",  # cosine of the user's profile and the item, 0 without a profile
    "category_affinity",  # the user's share of weight on the item's category
    "cooc_last",  # co-occurrence weight from the user's last item to this one
    "cooc_recent",  # recency-weighted co-occurrence from the user's recent items to this one
    "cooc_reverse",  # co-occurrence from this item to the user's recent items
    "sim_last",  # cosine of the user's last item and this one
    "idf_coverage",  # share of the query's IDF mass found in the item's lexemes
    "max_missing_idf",  # IDF of the rarest query lexeme the item lacks, 0 when it lacks none
    "missing_terms",  # how many of the query's lexemes the item lacks
    "query_last_in_item",  # the query's last word (usually what it wants) is among the item's lexemes
    "title_head_in_query",  # the title's head (its product type, see title_head) is in the query
    "title_head2_in_query",  # either of the head's last two words is in the query
    "blend_score",  # symmetric recency-weighted co-occurrence (scaled to the pool's max) + BLEND_SIM_WEIGHT x sim_last
    "brand_share",  # share of the user's recent (or context) items of the item's brand
    "history_length",  # log1p of how many distinct items the user has interacted with
    "sim_recent_max",  # highest cosine of the item to any of the user's recent (or context) items
    "cooc_two_hop",  # log1p of the co-occurrence weight two hops from the user's recent items
)
N_FEATURES = len(FEATURE_NAMES)
INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}


@dataclass
class Signals:
    """Raw per-candidate signals; every array has one entry per candidate (0 where absent)."""

    n: int
    is_search: bool
    ranks: dict[str, np.ndarray] = field(default_factory=dict)  # retriever -> 1-based rank, 0 = absent
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # retriever -> score
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # feature name -> value

    def column(self, name: str, default: float = 0.0) -> np.ndarray:
        return self.columns.get(name, np.full(self.n, default, dtype=np.float32))


def inverse_rank(ranks: np.ndarray) -> np.ndarray:
    return np.where(ranks > 0, 1.0 / np.maximum(ranks, 1), 0.0)


def rrf(ranks: dict[str, np.ndarray], n: int, k: int = RRF_K) -> np.ndarray:
    total = np.zeros(n, dtype=np.float64)
    for r in ranks.values():
        total += np.where(r > 0, 1.0 / (k + np.maximum(r, 1)), 0.0)
    return total


def matrix(s: Signals) -> np.ndarray:
    m = np.zeros((s.n, N_FEATURES), dtype=np.float32)
    zero = np.zeros(s.n)
    m[:, INDEX["is_search"]] = 1.0 if s.is_search else 0.0
    m[:, INDEX["dense_rank"]] = inverse_rank(s.ranks.get("dense", zero))
    m[:, INDEX["lexical_rank"]] = inverse_rank(s.ranks.get("lexical", zero))
    m[:, INDEX["graph_rank"]] = inverse_rank(s.ranks.get("graph", zero))
    lex = s.scores.get("lexical", zero)
    m[:, INDEX["lexical_score"]] = lex / (1.0 + lex)
    m[:, INDEX["graph_score"]] = s.scores.get("graph", zero)
    m[:, INDEX["rrf"]] = rrf(s.ranks, s.n) * RRF_K
    m[:, INDEX["retrievers"]] = sum((r > 0).astype(np.float32) for r in s.ranks.values()) if s.ranks else 0
    for name in (
        "dense_sim", "bm25", "query_coverage", "trigram_sim", "bigram_match", "number_match", "item_length", "brand_match", "category_match",
        "popularity", "rating", "review_count", "price", "has_price", "profile_sim", "category_affinity",
        "cooc_last", "cooc_recent", "cooc_reverse", "sim_last", "idf_coverage", "max_missing_idf", "missing_terms",
        "query_last_in_item", "title_head_in_query", "title_head2_in_query",
        "blend_score", "brand_share", "history_length", "sim_recent_max", "cooc_two_hop",
    ):
        m[:, INDEX[name]] = s.column(name)
    m[:, INDEX["sentiment"]] = s.column("sentiment", 0.5)
    return m


# --- Recommend features ----------------------------------------------------------------------

# Weight of the similarity to the last item in blend_score: the weight the blend baseline of
# `aisle eval recommend` tunes to on the Scientific `valid` rows (0.5 of 0.02-5.0; NDCG@10 0.0955
# offline, docs/models.md). As a feature, the ranker starts from what the baseline knows.
BLEND_SIM_WEIGHT = 0.5


def blend_column(cooc_forward: np.ndarray, cooc_backward: np.ndarray, sim_last: np.ndarray) -> np.ndarray:
    """The blend baseline's score: raw recency-weighted co-occurrence in both directions, scaled
    so the pool's best is 1, plus BLEND_SIM_WEIGHT x cosine to the last item."""
    co = cooc_forward + cooc_backward
    top = float(co.max(initial=0.0))
    scaled = co / top if top > 0 else co
    return (scaled + BLEND_SIM_WEIGHT * sim_last).astype(np.float32)


def brand_share_column(brands: list[str | None], recent_brands: list[str | None]) -> np.ndarray:
    """For each candidate, the share of the recent items that carry its brand (0 without one).
    Offline on the Scientific histories, brand share alone moved the blend from 0.0955 to
    0.0979 NDCG@10, and a ranker without it lost 2 % (docs/models.md)."""
    counts = Counter(b.lower() for b in recent_brands if b)
    if not counts:
        return np.zeros(len(brands), dtype=np.float32)
    total = len(recent_brands)
    return np.fromiter(((counts.get(b.lower(), 0) / total) if b else 0.0 for b in brands), dtype=np.float32, count=len(brands))


# --- Lexical features ------------------------------------------------------------------------

@dataclass(frozen=True)
class LexiconStats:
    """Document frequencies of the catalog's lexemes (from Postgres ts_stat)."""

    documents: int
    doc_freq: dict[str, int]
    mean_length: float

    def idf(self, lexeme: str) -> float:
        df = self.doc_freq.get(lexeme, 0)
        return math.log(1.0 + (self.documents - df + 0.5) / (df + 0.5))


def lexical_columns(query: list[str], items: list[list[str]], stats: LexiconStats | None) -> dict[str, np.ndarray]:
    """BM25 (binary term frequency: titles rarely repeat a word), query coverage and length,
    and which of the query's lexemes each item lacks: their number, the rarest one's IDF and
    the share of the query's IDF mass that is present. A relevant product seldom lacks the
    query's rarest word; BM25 and plain coverage don't say which words are missing.

    One pass per query lexeme (a query has a few) fills an items x lexemes presence matrix;
    every column is then a numpy expression over it. Item by item in Python this took 1.5-1.7 ms
    for 300 candidates (200 synthetic queries of 1-5 lexemes, titles of 3-20, on a 2-core
    machine running the test suite beside it); this way 0.47-0.72 ms, with equal values
    (tests/core/test_features.py holds the per-item definition)."""
    terms = sorted(set(query))
    n = len(items)
    docs = [set(lexemes) for lexemes in items]
    size = np.fromiter(map(len, docs), dtype=np.float64, count=n)
    zeros = np.zeros(n, dtype=np.float64)
    present = np.empty((n, len(terms)), dtype=bool)
    for j, term in enumerate(terms):
        present[:, j] = np.fromiter((term in doc for doc in docs), dtype=bool, count=n)
    idf = np.array([stats.idf(t) if stats else 1.0 for t in terms], dtype=np.float64)
    avg = stats.mean_length if stats and stats.mean_length > 0 else 8.0
    hit_idf = present @ idf
    total_idf = idf.sum()
    found = present.sum(axis=1)
    lacking = len(terms) - found
    norm = BM25_K1 * (1 - BM25_B + BM25_B * size / avg)
    columns = {
        "bm25": hit_idf * (BM25_K1 + 1) / (1 + norm),
        "query_coverage": found / len(terms) if terms else zeros,
        "item_length": np.log1p(size),
        "idf_coverage": hit_idf / total_idf if total_idf > 0 else zeros,
        # -inf where nothing is missing (IDFs are positive), then 0.
        "max_missing_idf": np.where(present, -np.inf, idf).max(axis=1, initial=-np.inf).clip(min=0),
        "missing_terms": lacking,
    }
    return {name: np.ascontiguousarray(values, dtype=np.float32) for name, values in columns.items()}


_TOKEN = re.compile(r"[a-z0-9]+(?:[./x][0-9]+)*")
# Titles whose normalised form is kept (~200 bytes each): the whole 59k-item catalog fits, and
# candidates repeat across queries.
TITLE_CACHE = 65536


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _padded(text: str) -> str:
    """Tokens joined by single spaces, with a space at each end: every trigram of the text, and
    every " word " and " word word " in it, is a substring of this."""
    return f" {' '.join(_tokens(text))} "


@functools.lru_cache(maxsize=TITLE_CACHE)
def _padded_title(title: str) -> str:
    return _padded(title)


# Normalised texts use 39 byte values (space, a-z, 0-9, ".", "/") plus the "\\n" that joins
# them: a trigram fits in 16 bits as a base-39 number.
_SYMBOLS = " abcdefghijklmnopqrstuvwxyz0123456789./\n"
# "\n" is the last symbol and never in a kept trigram, so the others fit in base 39.
_BASE = len(_SYMBOLS) - 1
_SYMBOL_INDEX = np.zeros(256, dtype=np.int32)
_SYMBOL_INDEX[np.frombuffer(_SYMBOLS.encode("ascii"), dtype=np.uint8)] = np.arange(len(_SYMBOLS))
_NEWLINE = _SYMBOLS.index("\n")


def _trigram_keys(joined: str, lengths: list[int]) -> np.ndarray:
    """Sorted distinct (text, trigram) pairs of texts joined by "\\n", as keys text << 16 | code;
    no trigram spans a "\\n". int32 keys while they fit: sorting them is half the work here."""
    sym = _SYMBOL_INDEX[np.frombuffer(joined.encode("ascii"), dtype=np.uint8)]
    if len(sym) < 3:
        return np.zeros(0, dtype=np.int32)
    codes = (sym[:-2] * _BASE + sym[1:-1]) * _BASE + sym[2:]
    dtype = np.int32 if len(lengths) < 1 << 15 else np.int64
    owner = np.repeat(np.arange(len(lengths), dtype=dtype), np.asarray(lengths) + 1)[: len(codes)]
    newline = sym == _NEWLINE
    valid = ~(newline[:-2] | newline[1:-1] | newline[2:])
    return np.unique((owner[valid] << 16) | codes[valid].astype(dtype))


def _share_present(patterns: set[str], joined: str, starts: np.ndarray, n: int) -> np.ndarray:
    """For each of ``n`` texts concatenated in ``joined`` (text k from ``starts[k]``), the share
    of ``patterns`` that occur in it; str.find visits matches only, not every text."""
    present = np.zeros(n, dtype=np.float32)
    for p in patterns:
        hits, at = [], joined.find(p)
        while at >= 0:
            hits.append(at)
            at = joined.find(p, at + 1)
        if hits:
            present[np.unique(np.searchsorted(starts, hits, side="right") - 1)] += 1.0
    return present / len(patterns)


class _TitleTrigrams:
    """Each normalised title's distinct trigram codes (sorted uint16), keyed by the padded text.

    Computing the codes was most of `text_columns`: encoding and sorting ~18k trigrams a
    search. Misses are computed together in one vectorised pass, so a cold call costs what
    computing every title did before, and a warm one skips it. Holds at most TITLE_CACHE texts
    (~14 MB for the 53k distinct Home Depot titles); past that, misses are computed each time."""

    def __init__(self) -> None:
        self._codes: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._codes)

    def clear(self) -> None:
        self._codes.clear()

    def of(self, padded: list[str]) -> list[np.ndarray]:
        known = self._codes
        found = [known.get(p) for p in padded]
        missing = list(dict.fromkeys(p for p, codes in zip(padded, found) if codes is None))
        if missing:
            computed = dict(zip(missing, _codes_per_text(missing)))
            room = TITLE_CACHE - len(known)
            if room > 0:
                # Single-key stores: readers on another thread never see a half-built dict.
                for text in missing[:room]:
                    known[text] = computed[text]
            found = [computed[p] if codes is None else codes for p, codes in zip(padded, found)]
        return found


def _codes_per_text(padded: list[str]) -> list[np.ndarray]:
    """Each text's distinct trigram codes, all texts in one pass."""
    keys = _trigram_keys("\n".join(padded), [len(p) for p in padded])
    owner, codes = keys >> 16, (keys & 0xFFFF).astype(np.uint16)
    return np.split(codes, np.searchsorted(owner, np.arange(1, len(padded))))


_TITLE_TRIGRAMS = _TitleTrigrams()
# Every trigram code: a query's codes become a lookup mask of this size.
_TRIGRAM_SPACE = _BASE**3


def text_columns(query: str, titles: list[str]) -> dict[str, np.ndarray]:
    """Surface-text matches the stemmed lexemes miss: typos, word order, sizes.

    Trigram Jaccard: each title's distinct trigram codes (cached per normalised title, misses
    computed together), looked up in a mask of the query's codes. Adjacent pairs (" a b ") and
    numbers (" 36 ") are substrings of a title's padded text, found by str.find over all titles
    joined; both equal the set intersections they stand for. A per-title loop of substring
    tests took ~1.9 ms of the gateway's ~12 ms of CPU per search (py-spy, Search at c=4). With
    every title's codes computed on each call, the whole function took 0.74 ms for 300 Home
    Depot titles (300 dev queries, in-process, caches warm) and was still 14 % of the gateway's
    CPU in Search at c=4 (py-spy, 2026-12-08); with the codes cached, 0.54 ms."""
    n = len(titles)
    tri = np.zeros(n, dtype=np.float32)
    bigram = np.zeros(n, dtype=np.float32)
    numbers = np.zeros(n, dtype=np.float32)
    if n == 0:
        return {"trigram_sim": tri, "bigram_match": bigram, "number_match": numbers}
    q_tokens = _tokens(query)
    q_padded = _padded(query)
    padded = [_padded_title(title) for title in titles]
    q_codes = _trigram_keys(q_padded, [len(q_padded)]) & 0xFFFF
    if len(q_codes):
        per_title = _TITLE_TRIGRAMS.of(padded)
        t_count = np.fromiter(map(len, per_title), dtype=np.int64, count=n)
        codes = np.concatenate(per_title)
        owner = np.repeat(np.arange(n), t_count)
        in_query = np.zeros(_TRIGRAM_SPACE, dtype=bool)
        in_query[q_codes] = True
        shared = np.bincount(owner[in_query[codes]], minlength=n)
        union = len(q_codes) + t_count - shared
        np.divide(shared, union, out=tri, where=union > 0, casting="unsafe")
    q_pairs = {f" {a} {b} " for a, b in zip(q_tokens, q_tokens[1:])}
    q_numbers = {f" {t} " for t in q_tokens if any(ch.isdigit() for ch in t)}
    if q_pairs or q_numbers:
        # "\n" never occurs in a padded text, so no pattern spans two titles.
        joined = "\n".join(padded)
        starts = np.cumsum([0] + [len(p) + 1 for p in padded[:-1]])
        if q_pairs:
            bigram = _share_present(q_pairs, joined, starts, n)
        if q_numbers:
            numbers = _share_present(q_numbers, joined, starts, n)
    return {"trigram_sim": tri, "bigram_match": bigram, "number_match": numbers}


# --- Product type ----------------------------------------------------------------------------

# A title names its product type last, before what qualifies it: "... Convection Microwave in
# Stainless Steel", "... Bamboo Rollup Shade - 96 in. W", "... Aluminum Sheet, Silver".
_HEAD_END = re.compile(r"\s(?:in|with|for)\s|\s-\s|,|\(")
# Words of three letters or more: shorter ones are sizes and joints ("in", "ft", "x").
_WORD = re.compile(r"[a-z]{3,}")


@functools.lru_cache(maxsize=1)
def _stemmer():
    import snowballstemmer

    # Postgres' 'english' text search configuration stems with this same Snowball algorithm,
    # so these stems compare with the lexemes of the lexical index and of the query.
    return snowballstemmer.stemmer("english")


# Distinct words of the Home Depot titles: 15,385. Snowball in Python takes ~15 µs a word, which
# made a fresh gateway's first searches 10 ms slower before this cache.
STEM_CACHE = 32768


@functools.lru_cache(maxsize=STEM_CACHE)
def stem(word: str) -> str:
    return _stemmer().stemWord(word)


@functools.lru_cache(maxsize=TITLE_CACHE)
def title_head(title: str) -> tuple[str, ...]:
    """The stems of a title's last two words before the first " in ", " with ", " for ",
    " - ", "," or "(": its product type, last word last."""
    return tuple(stem(w) for w in _WORD.findall(_HEAD_END.split(title.lower(), maxsplit=1)[0])[-2:])


# Titles whose trigram codes are computed together when warming: all 59k at once peaked at
# ~150 MB of temporary arrays (tracemalloc); 4,096 at a time peaked ~6 MB above the 35.6 MB the
# title caches keep, and ran no slower.
WARM_CHUNK = 4096


def warm_title_caches(titles: Iterable[str]) -> None:
    """Fill the per-title caches (normalised text, product-type head) ahead of the searches.
    Every gateway starts with them empty, and until its candidates repeated each search paid
    for its 300 titles: in-process, 300 Home Depot queries after 30 of warm-up, the engine
    used 14.4 and 13.7 ms of CPU a search cold against 11.4 and 11.3 warmed (2026-12-06).
    Warming all 59,052 titles took 0.65-0.8 s, most of it stemming the 15k distinct words; their
    trigram codes add ~0.15 s and ~14 MB (0.81-0.96 s in all, 2026-12-08)."""
    padded = []
    for title in itertools.islice(titles, TITLE_CACHE):
        padded.append(_padded_title(title))
        title_head(title)
        if len(padded) == WARM_CHUNK:
            _TITLE_TRIGRAMS.of(padded)
            padded = []
    _TITLE_TRIGRAMS.of(padded)


def type_columns(query: str, query_lexemes: list[str], titles: list[str], items: list[list[str]]) -> dict[str, np.ndarray]:
    """Whether query and item name the same product type: the query's last word among the
    item's lexemes, and the title's head (or either of its last two words) among the query's.
    Searches name what they want last ("cordless drill"); a product that shares only the
    qualifiers is rarely relevant."""
    n = len(titles)
    words = _WORD.findall(query.lower())
    q_last, q_set = (stem(words[-1]) if words else None), set(query_lexemes)
    heads = [title_head(title) for title in titles]
    last_in = np.fromiter((q_last in lexemes for lexemes in items), dtype=np.float32, count=n)
    head_in = np.fromiter((bool(h) and h[-1] in q_set for h in heads), dtype=np.float32, count=n)
    head2_in = np.fromiter((any(w in q_set for w in h) for h in heads), dtype=np.float32, count=n)
    return {"query_last_in_item": last_in, "title_head_in_query": head_in, "title_head2_in_query": head2_in}
