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

# Config parameter of the classify and sentiment ensembles naming what their answers are made
# from (a fingerprint of the trained weights and the post-processing, export/artifacts.py). The
# refresh stamps each stored prediction with it, so a new model re-predicts what an older one
# predicted (workers/jobs/served_model.py).
WEIGHTS_FINGERPRINT = "weights_fingerprint"

# The gateway's interactive calls (Search's query embedding, ClassifyProduct, AnalyzeReviews) go
# to a twin of their ensemble, ``<ensemble>_query``, whose models serve nothing else:
# - Triton cannot preempt a running batch, and its request priority does not reach a model behind
#   a Python step of an ensemble (triton-inference-server#6055), so on the shared encoder a search
#   waited behind 256-title refresh batches and ran out its budget (bench/soak.py during a full
#   refresh: every search degraded, p50 825 ms at 5 QPS);
# - the refresh's models carry a queue policy, and in Triton 2.51 such a model holds ~1-2 % of
#   calls that arrive in bursts ~500 ms (export/spec.py, ModelSpec.expire_queued).
QUERY_SUFFIX = "_query"


def query_model(model: str) -> str:
    return model + QUERY_SUFFIX
