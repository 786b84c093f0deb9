"""Triton Python backend: the sentiment model's (negative, positive) probabilities and the review
text in; label and its probability out.

The label comes from the average of two models: the transformer's probabilities and a linear
model over the review's hashed word unigrams and bigrams (``lexicon.npy``, trained beside the
transformer by ``aisle train sentiment``, export/heads/sentiment_lexicon.py). The two err on
different reviews: on the held-out products the average was right more often than either
(docs/models.md, "Review sentiment").

The hashing below is the one definition of the lexical features: training imports it from here.
It uses the standard library and numpy only, which is all the Triton images provide.
"""

import os
import re
import zlib

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton, by training and the tests
    pb_utils = None

LABELS = np.array(["negative", "positive"], dtype=object)
# Hash buckets of the lexical model: 2^18. In five-fold cross-validation grouped by product on the
# training rows (scikit-learn's hashing of the same grams), 2^16 buckets scored 0.858 against 0.875,
# and adding word trigrams 0.864.
BUCKETS = 1 << 18
# Words of two or more letters or digits, lowercased (scikit-learn's default token pattern).
_WORD = re.compile(r"\w\w+")


def review_buckets(text: str, buckets: int = BUCKETS) -> np.ndarray:
    """Sorted distinct hash buckets of the text's word unigrams and bigrams (CRC-32 of the UTF-8
    gram, modulo ``buckets``: the same on every platform and Python, unlike ``hash``)."""
    words = _WORD.findall(text.lower())
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
    return np.unique(np.fromiter((zlib.crc32(g.encode("utf-8")) % buckets for g in grams), dtype=np.int64, count=len(grams)))


def read_lexicon(path: str) -> tuple[np.ndarray, float]:
    """The lexical model's (weights per bucket, bias), stored as one float32 array: the weights,
    then the bias (written by export/heads/sentiment_lexicon.py)."""
    packed = np.load(path)
    return packed[:-1].astype(np.float32), float(packed[-1])


def lexical_positive(texts, weights: np.ndarray, bias: float) -> np.ndarray:
    """Probability that each review is positive under the lexical model (binary features)."""
    logits = np.array([bias + float(weights[review_buckets(t, len(weights))].sum()) for t in texts], dtype=np.float64)
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def fuse(probabilities: np.ndarray, lexical: np.ndarray | None, lexical_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels and their probabilities from the transformer's (negative, positive) rows, averaged
    with the lexical model's positive probability where there is one."""
    probs = probabilities.astype(np.float32)
    if lexical is not None and lexical_weight > 0:
        lexical_rows = np.stack([1.0 - lexical, lexical], axis=1)
        probs = (1.0 - lexical_weight) * probs + lexical_weight * lexical_rows
    best = probs.argmax(axis=1)
    return LABELS[best], probs[np.arange(len(best)), best].astype(np.float32)


def _text(item) -> str:
    # The tokenizer before this step has refused what is not UTF-8; replace rather than fail here.
    return item if isinstance(item, str) else bytes(item).decode("utf-8", errors="replace")


class TritonPythonModel:
    def initialize(self, args):
        import json

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.lexical_weight = float(params.get("lexical_weight", "0"))
        self.weights, self.bias = None, 0.0
        if self.lexical_weight > 0:
            here = os.path.join(args["model_repository"], args["model_version"])
            self.weights, self.bias = read_lexicon(os.path.join(here, "lexicon.npy"))

    def execute(self, requests):
        responses = []
        for request in requests:
            probs = pb_utils.get_input_tensor_by_name(request, "probabilities").as_numpy()
            lexical = None
            if self.weights is not None:
                texts = [_text(t) for t in pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)]
                lexical = lexical_positive(texts, self.weights, self.bias)
            label, prob = fuse(probs, lexical, self.lexical_weight)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("label", label.reshape(-1, 1)),
                        pb_utils.Tensor("probability", prob.reshape(-1, 1)),
                    ]
                )
            )
        return responses
