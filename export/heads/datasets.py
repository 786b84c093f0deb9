"""Readers for the two labelled CSV formats, shared by training and evaluation.

How a review becomes the string the served sentiment model sees is ``core.catalog.review_text``,
shared with the sentiment refresh job; training and evaluation read reviews through it too.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from core.catalog import review_text

# Instacart uses these two departments for products it never categorised; they carry no signal.
UNLABELLED_DEPARTMENTS = frozenset({"missing", "other"})

NEGATIVE = "negative"
POSITIVE = "positive"
# Probability column order of the sentiment model (index 1 is "positive").
SENTIMENT_LABELS = (NEGATIVE, POSITIVE)


@dataclass(frozen=True)
class Review:
    text: str
    label: str
    # Grouping keys for held-out splits; empty when the file lacks the column.
    asin: str = ""
    domain: str = ""


def _header(reader: csv.DictReader) -> set[str]:
    return {c.strip() for c in reader.fieldnames or []}


def _require(have: set[str], columns: tuple[str, ...], what: str) -> None:
    """A ValueError naming the columns the header ``have`` lacks, if any (callers name the file)."""
    missing = [c for c in columns if c not in have]
    if missing:
        raise ValueError(f"{what} needs the column(s) {', '.join(missing)}; "
                         f"the header has {', '.join(sorted(have)) or 'nothing'}")


def read_products(path: Path) -> list[tuple[str, str, str]]:
    """``(product_name, department, aisle)`` rows, without the unlabelled departments."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        _require(_header(reader), ("product_name", "aisle", "department"), "the Instacart format")
        return [
            (row["product_name"].strip(), row["department"].strip(), row["aisle"].strip())
            for row in reader
            if (row["department"] or "").strip() not in UNLABELLED_DEPARTMENTS and (row["product_name"] or "").strip()
        ]


def rating_label(rating: str) -> str | None:
    """Amazon star rating to polarity, as the training data was built: 4-5 positive, 1-2 negative."""
    stars = float(rating)
    if stars >= 4:
        return POSITIVE
    if stars <= 2:
        return NEGATIVE
    return None  # 3 stars is ambiguous and is not in the training distribution.


def read_review_rows(path: Path) -> list[Review]:
    """Reviews with their grouping keys; labels from ``label``, else from ``rating``."""
    rows: list[Review] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        have = _header(reader)
        has_label = "label" in have
        if not has_label:
            _require(have, ("rating",), "a review file without a label column")
        if not have & {"title", "review_text"}:
            _require(have, ("review_text",), "the sentiment format")
        for line, row in enumerate(reader, start=2):
            try:
                label = (row["label"] or "").strip().lower() if has_label else rating_label(row["rating"] or "")
            except ValueError:
                raise ValueError(f"line {line}: rating {row['rating']!r} is not a number of stars") from None
            if label not in SENTIMENT_LABELS:
                continue
            text = review_text(row.get("title") or "", row.get("review_text") or "")
            if text:
                rows.append(Review(text, label, (row.get("asin") or "").strip(), (row.get("domain") or "").strip()))
    return rows


def read_reviews(path: Path) -> list[tuple[str, str]]:
    """``(text, label)`` pairs with ``label`` in :data:`SENTIMENT_LABELS`."""
    return [(r.text, r.label) for r in read_review_rows(path)]
