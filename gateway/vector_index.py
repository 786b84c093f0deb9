"""Nearest-neighbour search over the item table's embeddings, in the gateway's memory.

pgvector's HNSW scan was the largest single cost of a search: ~6 ms of Postgres CPU for the 200
nearest of 59,052 items at `hnsw.ef_search` 200, ~0.8 of Postgres's ~7.8 ms a search, plus the
gateway's cost of sending the query vector and parsing 200 rows (`log_min_duration_statement`
and per-process CPU over 200 searches, 2026-12-08). Recommend runs two such scans a call. The
item table (gateway/item_table.py) already holds every embedding, so an HNSW graph over it
(faiss, the same M and ef_construction as the Postgres index) answers the same question in
~0.6 ms of the gateway's CPU: on the Home Depot titles, 0.57 ms a query at ef 300 (BREADTH) and
recall@200 0.979 against an exact scan (/tmp probe, one thread).

The graph is built at a full read of the table (~7 s of one core for 59k items, in a thread:
faiss releases the GIL, the event loop stalled at most 7.5 ms meanwhile), unless the items and
embeddings read are those it was built over, and never changed after: a table's copies share
it. Rows whose embedding changed since (``moved``) are dropped from its answers and scored
exactly instead; items the table does not hold at all are the caller's to look up
(``ItemTable.stale``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from core.embeddings import HNSW_EF_CONSTRUCTION, HNSW_M

# faiss logs at INFO every CPU-specific build it looks for and does not find (the wheel ships the
# generic one): six lines at each gateway start.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
import faiss  # noqa: E402

# One thread: the gateway serves many small searches at once, and an OpenMP team per search
# would spin on cores the event loop, Postgres and Triton share.
faiss.omp_set_num_threads(1)

# The graph searches this much wider than the pgvector breadth it stands in for. At the same
# breadth it found 0.959 of the exact 200 nearest where pgvector found 0.967 (ef 200, 300
# perturbed item vectors of the Home Depot titles), and all 5,902 dev queries lost 0.0007 of
# Recall@100 end to end; at 1.5x it finds 0.979 for 0.57 ms a query instead of 0.40.
BREADTH = 1.5


@dataclass(frozen=True)
class VectorIndex:
    index: faiss.Index
    # The table row of each vector in the graph, in the order added.
    rows: np.ndarray

    @classmethod
    def build(cls, embeddings: np.ndarray, norms: np.ndarray) -> VectorIndex:
        """The graph over every row with an embedding (CPU only: run it off the event loop)."""
        rows = np.flatnonzero(norms > 0)
        dim = embeddings.shape[1]
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        if len(rows):
            index.add(np.ascontiguousarray(embeddings[rows] / norms[rows, None], dtype=np.float32))
        return cls(index, rows)

    def __len__(self) -> int:
        return len(self.rows)

    def search(self, vector: np.ndarray, k: int, ef: int) -> np.ndarray:
        """Table rows of (about) the ``k`` vectors closest to ``vector`` by cosine, closest first;
        ``ef`` is the search breadth pgvector would use (`hnsw.ef_search`), widened by BREADTH."""
        if not len(self.rows) or k <= 0:
            return np.zeros(0, dtype=np.int64)
        unit = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        norm = float(np.linalg.norm(unit))
        if norm == 0:
            return np.zeros(0, dtype=np.int64)
        params = faiss.SearchParametersHNSW(efSearch=max(round(ef * BREADTH), k))
        _, found = self.index.search(unit / norm, min(k, len(self.rows)), params=params)
        found = found[0]
        return self.rows[found[found >= 0]]
