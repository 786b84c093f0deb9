"""Sparse feature rows from hashed n-gram buckets, for fitting the lexical models that the
Triton post-processing steps score bucket by bucket (export/backends/*_postprocess.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def presence_matrix(bucket_rows: Sequence[np.ndarray], width: int, l2_normalise: bool = False):
    """scipy CSR ``[len(bucket_rows), width]`` with each row's distinct buckets set to 1, or to
    1/sqrt(their number) with ``l2_normalise``."""
    from scipy.sparse import csr_matrix

    lengths = np.array([len(r) for r in bucket_rows], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = np.concatenate(bucket_rows) if len(bucket_rows) else np.zeros(0, dtype=np.int64)
    values = np.ones(len(indices), dtype=np.float32)
    if l2_normalise:
        values = np.repeat(1.0 / np.sqrt(np.maximum(lengths, 1)), lengths).astype(np.float32)
    return csr_matrix((values, indices, indptr), shape=(len(bucket_rows), width))
