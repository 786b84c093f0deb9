"""Sparse feature rows from hashed n-gram buckets, for fitting the lexical models that the
Triton post-processing steps score bucket by bucket (export/backends/*_postprocess.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bucket_matrix(bucket_rows: Sequence[np.ndarray], width: int, row_values: Sequence[np.ndarray] | None = None):
    """scipy CSR ``[len(bucket_rows), width]``: each row's distinct buckets set to 1, or to the
    row's values (one per bucket, in the same order)."""
    from scipy.sparse import csr_matrix

    indptr = np.concatenate([[0], np.cumsum([len(r) for r in bucket_rows])]).astype(np.int64)
    indices = np.concatenate(bucket_rows) if len(bucket_rows) else np.zeros(0, dtype=np.int64)
    if row_values is None:
        values = np.ones(len(indices), dtype=np.float32)
    else:
        values = (np.concatenate(row_values) if len(row_values) else np.zeros(0)).astype(np.float32)
    return csr_matrix((values, indices, indptr), shape=(len(bucket_rows), width))
