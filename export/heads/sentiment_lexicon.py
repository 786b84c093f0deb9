"""The lexical half of the review sentiment model: NB-weighted logistic regression (NBSVM's
log-count ratios, Wang & Manning 2012) over hashed word unigrams and bigrams.

Served by averaging its probability with the transformer's (export/backends/sentiment_postprocess.py,
which also holds the feature hashing). Trained by ``aisle train sentiment`` on the same rows as the
transformer, so the held-out products stay unseen by both. The shipped weights are one float per
hash bucket, the log-count ratio times the regression weight, so serving sums the weights of the
buckets a review contains: 1 MB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.backends.sentiment_postprocess import BUCKETS, lexical_positive, read_lexicon, review_buckets
from export.heads.hashed_features import bucket_matrix

# One float32 array: the weight of each hash bucket, then the bias (np.save writes the same bytes
# for the same weights; an .npz archive stamps the time).
LEXICON_FILE = "lexicon.npy"
# Inverse regularisation strength: five-fold cross-validation grouped by product, on the training
# rows of the served split, gave accuracy 0.871 / 0.871 / 0.870 / 0.872 at C = 0.1 / 0.3 / 1 / 3;
# flat, so the middle of the range.
C = 0.3
# Additive smoothing of the log-count ratios (NBSVM's alpha).
ALPHA = 1.0
# Share of the lexical model in the served average: an equal average, fixed before any held-out
# measurement rather than tuned on it.
LEXICAL_WEIGHT = 0.5


def features(texts: list[str]):
    """Binary bucket-presence rows (scipy CSR), the features ``review_buckets`` defines."""
    return bucket_matrix([review_buckets(t) for t in texts], BUCKETS)


def fit(texts: list[str], positive: np.ndarray) -> tuple[np.ndarray, float]:
    """(weights per bucket, bias) from reviews and their 0/1 labels; deterministic (lbfgs)."""
    from sklearn.linear_model import LogisticRegression

    x = features(texts)
    positive = np.asarray(positive, dtype=int)
    if len(set(positive.tolist())) < 2:
        # Nothing to tell apart: no word weighs anything, and the bias is the smoothed share.
        share = (positive.sum() + ALPHA) / (len(positive) + 2 * ALPHA)
        return np.zeros(BUCKETS, dtype=np.float32), float(np.log(share / (1 - share)))
    pos = ALPHA + np.asarray(x[positive == 1].sum(axis=0)).ravel()
    neg = ALPHA + np.asarray(x[positive == 0].sum(axis=0)).ravel()
    ratio = np.log((pos / pos.sum()) / (neg / neg.sum())).astype(np.float32)
    model = LogisticRegression(C=C, max_iter=5000).fit(x.multiply(ratio).tocsr(), positive)
    return (model.coef_.ravel() * ratio).astype(np.float32), float(model.intercept_[0])


def save(weights: np.ndarray, bias: float, out_dir: Path) -> Path:
    path = Path(out_dir) / LEXICON_FILE
    np.save(path, np.append(weights.astype(np.float32), np.float32(bias)))
    return path


def load(weights_dir: Path) -> tuple[np.ndarray, float]:
    return read_lexicon(str(Path(weights_dir) / LEXICON_FILE))


def predict(texts: list[str], weights: np.ndarray, bias: float) -> np.ndarray:
    return lexical_positive(texts, weights, bias)
