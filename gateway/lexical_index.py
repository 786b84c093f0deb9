"""The lexical retriever: BM25 over the catalog's Postgres lexemes, held in memory.

Postgres ranking an OR of the query's words with ts_rank_cd reads and scores every matching
row: on the 59,052-item catalog 17 ms for "cordless drill" (1,124 matches) and 350 ms for
"4 in. x 10 ft. pvc pipe" (23,551 matches), most of a search's time under load. The same
analysis (Postgres's English lexemes, read from ``items.search_tsv``) scored as BM25 by one
sparse column sum answers in about a millisecond, and BM25 alone ranks better than
ts_rank_cd did (`aisle eval search`: the BM25 baseline's NDCG@10 0.376).

Postgres stays the source of truth: the base index is rebuilt from it every few minutes, and
items changed since (``updated_at``) go into a small overlay that shadows their old rows, so an
upserted item is found within seconds. Both are immutable once built; a refresh swaps in a new
``LexicalIndex`` and readers never see half of one. Plain numpy/scipy: no SQL here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from core.features import BM25_B, BM25_K1, LexiconStats

# (item id, lexemes, term frequency of each lexeme), as Postgres returns them (None: no lexemes)
Doc = tuple[int, Sequence[str] | None, Sequence[int] | None]


@dataclass(frozen=True)
class Corpus:
    """Collection statistics every score is computed against (the base index's)."""

    # Documents, document frequencies and the mean number of distinct lexemes: what the ranker's
    # binary-tf BM25 feature reads, and the idf both share.
    lexicon: LexiconStats
    mean_tf_length: float  # mean of the sum of term frequencies: BM25's document length


class BM25Matrix:
    """A docs × terms matrix of BM25 weights over a fixed set of documents."""

    def __init__(self, docs: Iterable[Doc], corpus: Corpus | None = None):
        ids: list[int] = []
        vocab: dict[str, int] = {}
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        tfs: list[np.ndarray] = []
        # Each document's lexemes stay readable (the ranker's lexical features need them for
        # every candidate), as lists of one shared string per distinct lexeme (~8 MB for 59k items).
        canonical: dict[str, str] = {}
        self._docs: dict[int, list[str]] = {}
        for item_id, lexemes, tf in docs:
            row = len(ids)
            ids.append(item_id)
            self._docs[item_id] = [canonical.setdefault(t, t) for t in lexemes] if lexemes else []
            if not lexemes:
                continue
            cols.append(np.fromiter((vocab.setdefault(t, len(vocab)) for t in lexemes), np.int32, len(lexemes)))
            rows.append(np.full(len(lexemes), row, np.int32))
            tfs.append(np.asarray(tf, np.float32))
        self.ids = np.asarray(ids, np.int64)
        self.vocab = vocab
        n, m = len(ids), len(vocab)
        r = np.concatenate(rows) if rows else np.zeros(0, np.int32)
        c = np.concatenate(cols) if cols else np.zeros(0, np.int32)
        tf = np.concatenate(tfs) if tfs else np.zeros(0, np.float32)
        lengths = np.bincount(r, weights=tf, minlength=n).astype(np.float32)
        if corpus is None:
            df = np.bincount(c, minlength=m)
            terms = list(vocab)
            corpus = Corpus(
                LexiconStats(n, {terms[k]: int(df[k]) for k in range(m)}, float(len(c) / n) if n else 1.0),
                mean_tf_length=float(lengths.mean()) if n else 1.0,
            )
        self.corpus = corpus
        idf = np.array([corpus.lexicon.idf(t) for t in vocab], np.float32)
        norm = BM25_K1 * (1 - BM25_B + BM25_B * lengths / max(corpus.mean_tf_length, 1e-6))
        w = idf[c] * tf * (BM25_K1 + 1) / (tf + norm[r]) if len(c) else np.zeros(0, np.float32)
        self.weights = sp.csc_matrix((w, (r, c)), shape=(n, m), dtype=np.float32)

    def lexemes(self, item_id: int) -> list[str] | None:
        """The document's lexemes, or None when it is not in this matrix."""
        return self._docs.get(item_id)

    def scores(self, lexemes: Iterable[str]) -> np.ndarray:
        cols = sorted({self.vocab[t] for t in lexemes if t in self.vocab})
        if not cols:
            return np.zeros(len(self.ids), np.float32)
        return np.asarray(self.weights[:, cols].sum(axis=1), dtype=np.float32).ravel()


@dataclass(frozen=True)
class LexicalIndex:
    """The base matrix, an overlay of documents changed since it was built, and which base
    rows those changes supersede."""

    base: BM25Matrix
    overlay: BM25Matrix | None = None
    superseded: np.ndarray | None = None  # bool per base row

    @classmethod
    def build(cls, docs: Iterable[Doc]) -> LexicalIndex:
        return cls(BM25Matrix(docs))

    @property
    def corpus(self) -> Corpus:
        return self.base.corpus

    @property
    def overlay_size(self) -> int:
        return 0 if self.overlay is None else len(self.overlay.ids)

    def with_changes(self, changed: dict[int, Doc]) -> LexicalIndex:
        """This index with ``changed`` (every document changed since the base was built, by
        item id) shadowing the base's rows; scored against the base's statistics."""
        if not changed:
            return LexicalIndex(self.base)
        superseded = np.isin(self.base.ids, np.fromiter(changed, np.int64, len(changed)))
        return LexicalIndex(self.base, BM25Matrix(changed.values(), self.base.corpus), superseded)

    def lexemes_of(self, item_ids: Sequence[int]) -> list[list[str] | None]:
        """Each item's lexemes as this index holds them (a changed item's newest), None for an
        item it does not hold yet (one added since the last look for changes)."""
        out: list[list[str] | None] = []
        for item_id in item_ids:
            doc = self.overlay.lexemes(item_id) if self.overlay is not None else None
            out.append(doc if doc is not None else self.base.lexemes(item_id))
        return out

    def search(self, lexemes: Sequence[str], k: int) -> list[tuple[int, float]]:
        """The ``k`` best (item id, BM25 score), best first; items matching no lexeme are left out."""
        if k <= 0:
            return []
        scores = self.base.scores(lexemes)
        if self.superseded is not None:
            scores[self.superseded] = 0.0
        ids = self.base.ids
        if self.overlay is not None:
            scores = np.concatenate([scores, self.overlay.scores(lexemes)])
            ids = np.concatenate([ids, self.overlay.ids])
        hit = np.flatnonzero(scores > 0)
        if len(hit) > k:
            # Everything scoring at least the k-th best, so ties at the cut are settled by id
            # below rather than by where argpartition happened to leave them.
            kth = -np.partition(-scores[hit], k - 1)[k - 1]
            hit = hit[scores[hit] >= kth]
        # Ties by item id: the same query gives the same page every time.
        hit = hit[np.lexsort((ids[hit], -scores[hit]))][:k]
        return [(int(ids[h]), float(scores[h])) for h in hit]
