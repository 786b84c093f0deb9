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
