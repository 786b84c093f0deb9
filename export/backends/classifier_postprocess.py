"""Triton Python backend: class probabilities and the product name in; top-k label names with
probabilities out.

``labels.json`` beside this file maps each ``<head>_probs`` input to its label list:
``{"department": [...], "aisle": [...]}`` gives outputs ``department``/``department_prob`` and
``aisle``/``aisle_prob``, each ``top_k`` wide, best first.

With ``lexical_weight`` above 0, the probabilities are first averaged with a linear SVM over the
name's hashed word and character n-grams (``aisle_lexicon.npy`` and ``aisle_lexicon.json``, trained
beside the transformer by ``aisle train classifier``, export/heads/classifier_lexicon.py). It
predicts aisles; its department probabilities are its aisle probabilities summed per department,
as the transformer's are, so department and aisle still never contradict each other. On the
held-out names the average was right more often than either model (docs/models.md, "Product
classifier").

The hashing below is the one definition of the lexical features: training imports it from here.
It uses the standard library and numpy only, which is all the Triton images provide.
"""

import json
import os
import re
import zlib

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton, by training and the tests
    pb_utils = None

# Hash buckets for the word unigrams and bigrams, then as many for the character 2-5 grams. On an
# inner 10 % split of the training rows, a logistic regression over 2^13 each scored aisle 0.754 /
# department 0.846 alone and over 2^14 each, twice the weights, 0.754 / 0.850 (/tmp probe,
# 2026-12-07; the served SVM was chosen on the same split, export/heads/classifier_lexicon.py).
WORD_BUCKETS = 1 << 13
CHAR_BUCKETS = 1 << 13
BUCKETS = WORD_BUCKETS + CHAR_BUCKETS
CHAR_GRAMS = range(2, 6)
_WORD = re.compile(r"\w+")
LEXICON_WEIGHTS = "aisle_lexicon.npy"
LEXICON_META = "aisle_lexicon.json"


def name_buckets(name: str) -> np.ndarray:
    """Sorted distinct hash buckets of a product name: its lowercased words and adjacent word pairs
    in ``[0, WORD_BUCKETS)``, and the character 2-5 grams of the words joined by single spaces with
    a space at each end in ``[WORD_BUCKETS, BUCKETS)``. CRC-32 of the UTF-8 gram: the same on every
    platform and Python, unlike ``hash``."""
    words = _WORD.findall(name.lower())
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
    padded = f" {' '.join(words)} "
    chars = [padded[i : i + n] for n in CHAR_GRAMS for i in range(len(padded) - n + 1)]
    ids = [zlib.crc32(g.encode("utf-8")) % WORD_BUCKETS for g in grams]
    ids += [WORD_BUCKETS + zlib.crc32(c.encode("utf-8")) % CHAR_BUCKETS for c in chars]
    return np.unique(np.array(ids, dtype=np.int64))


def read_lexicon(directory: str) -> dict:
    """The lexical model as written by export/heads/classifier_lexicon.py: ``weights``, int8
    ``[BUCKETS, aisles]``; ``scale`` and ``bias`` per aisle; ``idf`` per bucket; the softmax
    ``temperature``; ``department_of_aisle``, the index of each aisle's department in the
    department labels."""
    weights = np.load(os.path.join(directory, LEXICON_WEIGHTS))
    with open(os.path.join(directory, LEXICON_META), encoding="utf-8") as f:
        meta = json.load(f)
    if weights.dtype != np.int8 or weights.shape != (BUCKETS, len(meta["bias"])):
        raise ValueError(f"{LEXICON_WEIGHTS}: {weights.dtype} {weights.shape}, expected int8 ({BUCKETS}, {len(meta['bias'])})")
    return {
        "weights": weights,
        "scale": np.asarray(meta["scale"], dtype=np.float32),
        "bias": np.asarray(meta["bias"], dtype=np.float32),
        "idf": np.asarray(meta["idf"], dtype=np.float32),
        "temperature": float(meta["temperature"]),
        "department_of_aisle": np.asarray(meta["department_of_aisle"], dtype=np.int64),
    }


def name_features(buckets: np.ndarray, idf: np.ndarray) -> np.ndarray:
    """The value of each of the name's buckets: its IDF, the whole vector L2-normalised."""
    values = idf[buckets].astype(np.float64)
    norm = np.sqrt(np.dot(values, values))
    return values / norm if norm > 0 else values


def lexical_aisle_probs(names, lexicon: dict) -> np.ndarray:
    """Aisle probabilities ``[len(names), aisles]`` under the lexical model: the softmax, at the
    model's temperature, of the bias plus the name's TF-IDF vector times the scaled weights."""
    weights, scale, bias, idf = lexicon["weights"], lexicon["scale"], lexicon["bias"], lexicon["idf"]
    logits = np.empty((len(names), len(bias)), dtype=np.float64)
    for row, name in enumerate(names):
        buckets = name_buckets(name)
        # One name at a time, its buckets in sorted order: a name's score never depends on the
        # other names of its batch.
        logits[row] = bias + scale * (name_features(buckets, idf) @ weights[buckets])
    logits *= lexicon["temperature"]
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


def fuse(probs: dict, lexical_aisle: np.ndarray | None, department_of_aisle: np.ndarray | None, lexical_weight: float) -> dict:
    """``{"department": ..., "aisle": ...}`` probabilities averaged with the lexical model's, whose
    department probabilities are its aisle probabilities summed per department."""
    if lexical_aisle is None or lexical_weight <= 0:
        return probs
    rollup = np.zeros((len(department_of_aisle), probs["department"].shape[1]), dtype=np.float32)
    rollup[np.arange(len(department_of_aisle)), department_of_aisle] = 1.0
    lexical = {"aisle": lexical_aisle, "department": lexical_aisle @ rollup}
    return {head: ((1.0 - lexical_weight) * p + lexical_weight * lexical[head]).astype(np.float32) for head, p in probs.items()}


def _text(item) -> str:
    # The tokenizer before this step has refused what is not UTF-8; replace rather than fail here.
    return item if isinstance(item, str) else bytes(item).decode("utf-8", errors="replace")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.top_k = int(params["top_k"])
        self.lexical_weight = float(params.get("lexical_weight", "0"))
        here = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(here, "labels.json"), encoding="utf-8") as f:
            self.labels = {head: np.array(names, dtype=object) for head, names in json.load(f).items()}
        self.lexicon = read_lexicon(here) if self.lexical_weight > 0 else None

    def execute(self, requests):
        responses = []
        for request in requests:
            probs = {head: pb_utils.get_input_tensor_by_name(request, f"{head}_probs").as_numpy() for head in self.labels}
            if self.lexicon is not None:
                names = [_text(t) for t in pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)]
                lexical = lexical_aisle_probs(names, self.lexicon)
                probs = fuse(probs, lexical, self.lexicon["department_of_aisle"], self.lexical_weight)
            tensors = []
            for head, names in self.labels.items():
                k = min(self.top_k, probs[head].shape[1])
                top = np.argsort(-probs[head], axis=1, kind="stable")[:, :k]
                tensors.append(pb_utils.Tensor(head, names[top]))
                tensors.append(pb_utils.Tensor(f"{head}_prob", np.take_along_axis(probs[head], top, axis=1)))
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
