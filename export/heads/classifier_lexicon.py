"""The lexical half of the product classifier: a linear SVM over a name's hashed word 1-2 grams
and character 2-5 grams (TF-IDF, L2-normalised), predicting aisles.

Served by averaging its probabilities with the transformer's (export/backends/classifier_postprocess.py,
which also holds the feature hashing). The SVM's scores become probabilities through a softmax at a
temperature fitted on an inner split of the training rows. Trained by ``aisle train classifier`` on
the same rows as the transformer, so the held-out names stay unseen by both. The weights ship as
int8 with one scale per aisle: 16,384 buckets x 132 aisles, 2.2 MB, where float32 would take 8.7 MB.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from export.backends.classifier_postprocess import (
    BUCKETS,
    LEXICON_META,
    LEXICON_WEIGHTS,
    lexical_aisle_probs,
    name_buckets,
    name_features,
    read_lexicon,
)
from export.heads.hashed_features import bucket_matrix

# Measured on an inner 10 % split of the served split's training rows (/tmp probes, 2026-12-07),
# aisle / department accuracy of the lexical model alone:
# - logistic regression over binary presence, C = 3 / 10 / 30: 0.746 / 0.754 / 0.753 aisle;
#   over TF-IDF, C = 10 / 30: 0.761 / 0.851 and 0.755 / 0.851;
# - a linear SVM over TF-IDF, C = 0.3 / 1 / 3: 0.766 / 0.858, 0.773 / 0.866, 0.768 / 0.864.
C = 1.0
# Softmax temperature of the SVM's scores: the one that minimised the log-loss of the true aisle
# on that inner split (4.78 for C = 1; 3.92 for C = 3).
TEMPERATURE = 4.78
# Share of the lexical model in the served average: an equal average, fixed before any held-out
# measurement rather than tuned on it (as for the sentiment lexicon).
LEXICAL_WEIGHT = 0.5
# int8 range used by the weights: symmetric, so zero stays exactly zero.
INT8_MAX = 127


def inverse_document_frequency(names: list[str]) -> np.ndarray:
    """Smoothed IDF per bucket over the training names, as scikit-learn's TfidfTransformer:
    ln((1 + n) / (1 + df)) + 1; a bucket no name has gets the largest."""
    df = np.zeros(BUCKETS, dtype=np.int64)
    for name in names:
        df[name_buckets(name)] += 1
    return (np.log((1 + len(names)) / (1 + df)) + 1).astype(np.float32)


def features(names: list[str], idf: np.ndarray):
    """TF-IDF rows (scipy CSR), the features ``name_features`` defines."""
    rows = [name_buckets(n) for n in names]
    return bucket_matrix(rows, BUCKETS, [name_features(r, idf) for r in rows])


def fit(names: list[str], aisles: np.ndarray, n_aisles: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float weights ``[n_aisles, BUCKETS]``, biases ``[n_aisles]`` and the IDF per bucket, from
    names and their aisle indices; deterministic (liblinear with a fixed seed). An aisle without a
    training name gets no weight and a bias log(n) below the least likely trained aisle's once the
    temperature applies: no evidence makes it at most 1/n as likely."""
    from sklearn.svm import LinearSVC

    aisles = np.asarray(aisles, dtype=np.int64)
    idf = inverse_document_frequency(names)
    weights = np.zeros((n_aisles, BUCKETS), dtype=np.float32)
    bias = np.zeros(n_aisles, dtype=np.float32)
    present = np.unique(aisles)
    if len(present) > 1:
        model = LinearSVC(C=C, random_state=0).fit(features(names, idf), aisles)
        coef, intercept = model.coef_, model.intercept_
        if len(present) == 2:
            # One score for the second class against the first: half of it to each side.
            coef, intercept = np.vstack([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
        weights[model.classes_] = coef
        bias[model.classes_] = intercept
    absent = np.setdiff1d(np.arange(n_aisles), present)
    bias[absent] = bias[present].min() - np.log(max(len(names), 1)) / TEMPERATURE
    return weights, bias, idf


def quantise(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 ``[BUCKETS, aisles]`` (one aisle per column, so a name's buckets are rows to sum) and
    the scale of each aisle."""
    peak = np.abs(weights).max(axis=1)
    scale = np.where(peak > 0, peak / INT8_MAX, 1.0).astype(np.float32)
    return np.round(weights / scale[:, None]).astype(np.int8).T.copy(), scale


def save(weights: np.ndarray, bias: np.ndarray, idf: np.ndarray, department_of_aisle: np.ndarray, out_dir: Path) -> dict:
    """Write the quantised lexicon (np.save and sorted JSON: the same bytes for the same fit) and
    return it as served."""
    out_dir = Path(out_dir)
    quantised, scale = quantise(weights)
    np.save(out_dir / LEXICON_WEIGHTS, quantised)
    meta = {
        "scale": scale.tolist(),
        "bias": bias.astype(np.float32).tolist(),
        "idf": idf.astype(np.float32).tolist(),
        "temperature": TEMPERATURE,
        "department_of_aisle": [int(d) for d in department_of_aisle],
    }
    (out_dir / LEXICON_META).write_text(json.dumps(meta, sort_keys=True) + "\n")
    return load(out_dir)


def load(weights_dir: Path) -> dict:
    return read_lexicon(str(weights_dir))


def predict(names: list[str], lexicon: dict) -> np.ndarray:
    """Aisle probabilities as the served post-processing computes them."""
    return lexical_aisle_probs(names, lexicon)
