"""int8 weights for the search query encoder of the ``portable`` target.

One query at a time, the fp32 query encoder costs ~2.3 ms of CPU in onnxruntime (6 tokens, one
thread), the largest single cost of a Search after Postgres. Dynamic quantisation of its MatMul
weights, per output channel, cuts that to ~0.6 ms. Per channel is what keeps the vectors close:
on 1,000 Home Depot queries the quantised graph's cosine to the fp32 one is 0.994 on average and
0.979 at worst, where per-tensor scales gave 0.966 and 0.920 (docs/models.md, "Search query
encoder"). The item encoder is not quantised: item embeddings are stored, compared with every
query and held to the 0.9999 parity bar, and the refresh batches them anyway.
"""

from __future__ import annotations

import logging
from pathlib import Path


def int8_matmuls(src: Path, dest: Path) -> None:
    """``src``'s graph with every MatMul's weights as per-channel int8, activations quantised
    at run time (onnxruntime's MatMulInteger path on CPU); names and dynamic axes unchanged."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic advises shape pre-processing on the root logger at every call; the
    # measurements above are of this graph without it, so the advice is noise in `aisle export`.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            src,
            dest,
            per_channel=True,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
        )
    finally:
        root.setLevel(level)
