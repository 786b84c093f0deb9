"""`aisle eval classifier` and `aisle eval sentiment`: accuracy and macro-F1 through the served
ensembles, on any file in the Instacart or sentiment format."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from aisle.evaluation.metrics import classification_metrics
from core.triton import TritonClient


def evaluate_classifier(client: TritonClient, path: Path) -> dict:
    from export.heads.datasets import read_products

    rows = read_products(path)
    if not rows:
        raise ValueError("no labelled products (departments 'missing'/'other' are dropped)")
    predictions = client.classify([name for name, _, _ in rows])
    out = {
        "department": classification_metrics([d for _, d, _ in rows], [p.department[0] for p in predictions]),
        "aisle": classification_metrics([a for _, _, a in rows], [p.aisle[0] for p in predictions]),
        "products": len(rows),
    }
    return out


def evaluate_sentiment(client: TritonClient, path: Path) -> dict:
    from export.heads.datasets import read_reviews

    rows = read_reviews(path)
    if not rows:
        raise ValueError("no labelled reviews (3-star reviews are dropped)")
    predictions = client.sentiment([text for text, _ in rows])
    gold = [label for _, label in rows]
    balance = Counter(gold)
    return {
        **classification_metrics(gold, [label for label, _ in predictions]),
        "class_balance": {k: v / len(gold) for k, v in sorted(balance.items())},
        "reviews": len(rows),
    }
