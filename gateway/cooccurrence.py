"""Item-to-item co-occurrence, held in the gateway's memory as sparse matrices.

Recommend reads co-occurrence twice per call: its one- and two-hop candidates around the
user's recent items, and the co-occurrence features of the pool it ranks. As SQL over
``kg_edges`` that was two queries and ~10 ms of Postgres CPU a call (the two-hop expansion
alone p50 8.1 ms), on a machine where Recommend's throughput is set by CPU. The graph changes
only when the graph job rebuilds it, so the gateway loads it after each rebuild and answers
both from memory (``Engine.graph``): a few sparse row sums, 0.3-0.7 ms a call
(docs/api.md, "Where a call's CPU goes").

Plain numpy/scipy: nothing here knows Postgres or gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse


@dataclass(frozen=True)
class Neighbourhood:
    """Items around some anchors, best first (arrays, not objects: building 300 objects a call
    cost more than the sums themselves)."""

    item_ids: np.ndarray
    one_hop: np.ndarray  # summed anchor weight x edge weight to the item, either direction
    two_hop: np.ndarray  # the same through the strongest one-hop items

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def empty(cls) -> Neighbourhood:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0))


@dataclass(frozen=True)
class AnchorWeights:
    """Recency-weighted co-occurrence between the anchors and some candidates, raw (not log1p)."""

    last: np.ndarray  # edges from the most recent anchor to each candidate
    recent: np.ndarray  # sum over anchors of recency x edge anchor -> candidate
    reverse: np.ndarray  # sum over anchors of recency x edge candidate -> anchor


class CoOccurrenceGraph:
    """Directed weighted edges a -> b (b followed a in some history) over item ids."""

    def __init__(self, src: np.ndarray, dst: np.ndarray, weight: np.ndarray):
        src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
        # Row k is item self.items[k]; ids sorted, so index order is item id order (ties below).
        self.items = np.unique(np.concatenate([src, dst]))
        n = len(self.items)
        rows, cols = np.searchsorted(self.items, src), np.searchsorted(self.items, dst)
        # float64: the sums then match Postgres' float8 sums of the stored float4 weights.
        # Both directions as rows, 24 bytes an edge (float64 weight + int32 index, twice): 2.2 MB
        # for the 93,001 Scientific edges; an undirected copy would add a third.
        self.forward = sparse.csr_matrix((np.asarray(weight, dtype=np.float64), (rows, cols)), shape=(n, n))
        self.backward = self.forward.T.tocsr()

    @property
    def edges(self) -> int:
        return int(self.forward.nnz)

    def _index(self, item_ids) -> tuple[np.ndarray, np.ndarray]:
        """Row of each id, and which ids the graph holds."""
        ids = np.asarray(item_ids, dtype=np.int64)
        if not len(self.items) or not len(ids):
            return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
        at = np.minimum(np.searchsorted(self.items, ids), len(self.items) - 1)
        return at, self.items[at] == ids

    def _weighted_rows(self, matrix: sparse.csr_matrix, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """sum_k weights[k] * matrix[rows[k]], dense over the graph's items. Straight from the
        CSR arrays: scipy's row indexing and transpose took ~135 us a call, this ~20 us."""
        starts, lengths = matrix.indptr[rows], matrix.indptr[rows + 1] - matrix.indptr[rows]
        at = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        return np.bincount(
            matrix.indices[at], weights=matrix.data[at] * np.repeat(weights, lengths), minlength=len(self.items)
        )

    def _either_way(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return self._weighted_rows(self.forward, rows, weights) + self._weighted_rows(self.backward, rows, weights)

    def expand(self, anchors: list[int], weights: list[float], expand: int, alpha: float, n: int) -> Neighbourhood:
        """Items around the anchors, either edge direction: one hop = sum of anchor weight x
        edge weight; two hops = the same from the ``expand`` strongest one-hop items, each
        weighted by its one-hop score. The best ``n`` by one hop + ``alpha`` x two hops (ties by
        item id). Anchors come back too, when reachable; the caller excludes what it must.
        Either direction, because an item bought just *before* a recent one is as telling as one
        bought after it (offline, directed co-occurrence scored 11 % below symmetric;
        docs/models.md)."""
        at, found = self._index(anchors)
        one = self._either_way(at[found], np.asarray(weights, dtype=np.float64)[found])
        reached = np.flatnonzero(one > 0)
        # Strongest first, lower item id (= lower row) first among equals.
        top = reached[np.lexsort((reached, -one[reached]))][:expand]
        two = self._either_way(top, one[top])
        hit = np.flatnonzero((one > 0) | (two > 0))
        best = hit[np.lexsort((hit, -(one[hit] + alpha * two[hit])))][:n]
        return Neighbourhood(self.items[best], one[best], two[best])

    def anchor_weights(self, anchors: list[int], recency: list[float], ids: list[int]) -> AnchorWeights:
        """Co-occurrence between the anchors (most recent first, with their recency weights)
        and each of ``ids``, by direction."""
        at, found = self._index(anchors)
        rw = np.asarray(recency, dtype=np.float64)[found]
        cand, held = self._index(ids)

        def gather(dense: np.ndarray) -> np.ndarray:
            out = np.zeros(len(ids), dtype=np.float64)
            out[held] = dense[cand[held]]
            return out

        last = self._weighted_rows(self.forward, at[:1][found[:1]], np.ones(1)[found[:1]])
        return AnchorWeights(
            last=gather(last),
            recent=gather(self._weighted_rows(self.forward, at[found], rw)),
            reverse=gather(self._weighted_rows(self.backward, at[found], rw)),
        )
