"""The public face of the Triton model repository: model names and tensor names clients use.

export/ builds the repository to match these; gateway/ and workers/ call Triton through them.
"""

from __future__ import annotations

from dataclasses import dataclass

# all-MiniLM-L6-v2's hidden size.
EMBEDDING_DIM = 384


@dataclass(frozen=True)
class Endpoint:
    model: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


EMBED_TEXT = Endpoint("embed_text", ("text",), ("embedding",))
CLASSIFY_PRODUCT = Endpoint(
    "classify_product", ("text",), ("department", "department_prob", "aisle", "aisle_prob")
)
ANALYZE_SENTIMENT = Endpoint("analyze_sentiment", ("text",), ("label", "probability"))
ENRICH_ITEM = Endpoint(
    "enrich_item", ("text",), ("embedding", "department", "department_prob", "aisle", "aisle_prob")
)
RANK = Endpoint("ranker", ("features",), ("score",))

# Queries are embedded by a twin of an embedding ensemble, ``<ensemble>_query``, whose encoder
# instance serves nothing else: Triton cannot preempt a running batch, and its request priority
# does not reach a model behind a Python step of an ensemble (triton-inference-server#6055), so
# on the shared encoder a search waited behind 256-title refresh batches and ran out its budget
# (bench/soak.py during a full refresh: every search degraded, p50 825 ms at 5 QPS).
QUERY_SUFFIX = "_query"


def query_model(embedding_model: str) -> str:
    return embedding_model + QUERY_SUFFIX
