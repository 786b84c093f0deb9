"""``sentence_embedding`` for training features, computed the way the served encoder computes it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from core.model_interfaces import EMBEDDING_DIM
from export.encoder import MeanPooledEncoder, load_transformer
from export.heads.wordpieces import length_sorted_batches, pad


def embed(
    token_ids: Sequence[Sequence[int]], transformer: torch.nn.Module | None = None, batch_size: int = 64
) -> np.ndarray:
    """Unit-norm mean-pooled embeddings, float32 ``[len(token_ids), 384]``, in input order.

    Padding inside a batch is masked out of attention and pooling, so batching changes results
    only at float rounding level (~1e-7) against the one-text-at-a-time serving path.
    """
    encoder = MeanPooledEncoder(transformer if transformer is not None else load_transformer()).eval()
    out = np.zeros((len(token_ids), EMBEDDING_DIM), dtype=np.float32)
    with torch.inference_mode():
        for batch in length_sorted_batches(token_ids, batch_size):
            out[batch] = encoder(*pad([token_ids[i] for i in batch])).numpy()
    return out
