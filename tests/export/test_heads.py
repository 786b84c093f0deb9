"""Product-category and sentiment heads: readers, deterministic training, ONNX parity.

Training runs here are on small real subsets with short schedules, so the file stays well under a
minute; full-size numbers live in docs/models.md.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from export.heads import classifier_lexicon, product_classifier, sentiment, sentiment_lexicon
from export.heads.datasets import read_products, read_reviews, review_text
from export.heads.wordpieces import encode, pad

DATA = Path(__file__).parents[2].parent / "shared" / "data"
PRODUCTS_CSV = DATA / "instacart" / "products_train.csv"
REVIEWS_CSV = DATA / "sentiment" / "reviews_train.csv"
needs_data = pytest.mark.skipif(
    not (PRODUCTS_CSV.exists() and REVIEWS_CSV.exists()),
    reason=f"training data not found under {DATA} (the repo reads it from ../shared/data)",
)
# Parity bound between ONNX Runtime and torch on the same weights.
ATOL = 1e-5


def _subset(src: Path, dst: Path, n: int, keep=lambda row: True) -> Path:
    """First ``n`` rows of ``src`` that pass ``keep``, written to ``dst`` (a temp dir: never committed)."""
    with open(src, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if keep(r)][:n]
        fields = reader.fieldnames
    with open(dst, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return dst


def _onnx_run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_reviews_without_label_column_map_ratings(tmp_path: Path) -> None:
    # given a review file with ratings but no label column
    path = tmp_path / "reviews.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["rating", "title", "review_text"])
        for stars in ("5.0", "4", "3.0", "2.0", "1"):
            writer.writerow([stars, f"Title {stars}", "Body"])
    # when it is read
    reviews = read_reviews(path)
    # then 4-5 stars are positive, 1-2 negative, and 3 is dropped
    assert [label for _, label in reviews] == ["positive", "positive", "negative", "negative"]
    assert reviews[0][0] == review_text("Title 5.0", "Body")


def test_label_column_wins_over_rating(tmp_path: Path) -> None:
    # given a file that has both a label and a rating column
    path = tmp_path / "reviews.csv"
    path.write_text("label,rating,title,review_text\nnegative,5.0,Meh,Body\n", encoding="utf-8")
    # when it is read, then the label column is used as is
    assert read_reviews(path) == [("Meh. Body", "negative")]


@pytest.mark.parametrize("reader, header_and_rows, message", [
    (read_reviews, "asin,text\nB1,Great\n", "a review file without a label column needs the column(s) rating; the header has asin, text"),
    (read_reviews, "rating,summary\n5,Great\n", "the sentiment format needs the column(s) review_text"),
    (read_reviews, "rating,title,review_text\n5,Fine,Body\nfive,Bad,Body\n", "line 3: rating 'five' is not a number of stars"),
    (read_products, "product_id,name,department\n1,Milk,dairy eggs\n", "the Instacart format needs the column(s) product_name, aisle"),
])
def test_a_file_in_another_format_is_refused_with_what_it_lacks(tmp_path: Path, reader, header_and_rows, message) -> None:
    # given a CSV that is not in the format, or has a bad value on one line
    path = tmp_path / "data.csv"
    path.write_text(header_and_rows, encoding="utf-8")
    # when it is read, then a ValueError says which columns are missing or which line is wrong
    with pytest.raises(ValueError) as info:
        reader(path)
    assert message in str(info.value)


def test_review_text_joins_title_and_body() -> None:
    # given titles with and without final punctuation and messy whitespace
    # when they are joined, then the title becomes a sentence and whitespace collapses
    assert review_text(" Great  pan ", "Heats\n evenly.") == "Great pan. Heats evenly."
    assert review_text("Awful!", "") == "Awful!"


@pytest.fixture(scope="module")
def product_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict, Path, Path]:
    tmp = tmp_path_factory.mktemp("products")
    # Two departments (12 aisles): a stratified 20 % split of 300 rows needs few classes.
    csv_path = _subset(PRODUCTS_CSV, tmp / "products.csv", 300, keep=lambda r: r["department"] in ("pets", "dairy eggs"))
    # One epoch on LoRA rank 2 keeps each run to seconds; the code path is the full one.
    config = product_classifier.ClassifierConfig(epochs=1, lora_rank=2)
    first = product_classifier.train(csv_path, tmp / "a", seed=0, holdout=0.2, config=config)
    second = product_classifier.train(csv_path, tmp / "b", seed=0, holdout=0.2, config=config)
    return csv_path, first, second, tmp / "a", tmp / "b"


@needs_data
def test_product_training_is_deterministic(product_runs) -> None:
    # given two trainings on the same subset with the same seed
    _, first, second, dir_a, dir_b = product_runs
    # then adapters, head, lexicon and held-out metrics are identical
    for weights in (product_classifier.WEIGHTS_FILE, classifier_lexicon.LEXICON_WEIGHTS, classifier_lexicon.LEXICON_META):
        assert (dir_a / weights).read_bytes() == (dir_b / weights).read_bytes()
    drop_timing = lambda m: {k: v for k, v in m.items() if not k.endswith("_seconds")}
    assert drop_timing(first) == drop_timing(second)
    # and the served average is reported beside each half alone
    for prefix in ("", "transformer_", "lexicon_"):
        assert 0 <= first[f"{prefix}department_accuracy"] <= 1 and 0 <= first[f"{prefix}aisle_accuracy"] <= 1


@needs_data
def test_product_onnx_matches_torch(product_runs, tmp_path: Path) -> None:
    # given trained adapters and real product names, tokenised as served
    csv_path, _, _, weights_dir, _ = product_runs
    names = [name for name, _, _ in read_products(csv_path)[:16]]
    ids, mask = pad(encode(names, product_classifier.MAX_LENGTH))
    # when the merged encoder and head are exported and run by ONNX Runtime
    onnx_path = product_classifier.to_onnx(weights_dir, tmp_path / "product.onnx")
    dept, aisle = _onnx_run(onnx_path, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    # then it matches the torch model, with the documented shapes and probability rows
    with torch.no_grad():
        ref_dept, ref_aisle = product_classifier.load(weights_dir)(ids, mask)
    assert dept.shape == (16, len(product_classifier.DEPARTMENTS)) == (16, 19)
    assert aisle.shape == (16, len(product_classifier.AISLES)) == (16, 132)
    np.testing.assert_allclose(dept, ref_dept.numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(aisle, ref_aisle.numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(dept.sum(1), 1.0, atol=ATOL)


@pytest.fixture(scope="module")
def sentiment_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict, Path, Path]:
    tmp = tmp_path_factory.mktemp("sentiment")
    csv_path = _subset(REVIEWS_CSV, tmp / "reviews.csv", 40, keep=lambda r: len(r["review_text"]) < 400)
    # Short reviews and one epoch keep each run to seconds; the code path is the full one.
    config = sentiment.SentimentConfig(epochs=1, max_length=64)
    first = sentiment.train(csv_path, tmp / "a", seed=0, holdout=0.25, config=config)
    second = sentiment.train(csv_path, tmp / "b", seed=0, holdout=0.25, config=config)
    return csv_path, first, second, tmp / "a", tmp / "b"


@needs_data
def test_sentiment_training_is_deterministic(sentiment_runs) -> None:
    # given two trainings on the same subset with the same seed
    _, first, second, dir_a, dir_b = sentiment_runs
    # then adapters, head, lexicon and held-out metrics are identical
    for weights in (sentiment.WEIGHTS_FILE, sentiment_lexicon.LEXICON_FILE):
        assert (dir_a / weights).read_bytes() == (dir_b / weights).read_bytes()
    drop_timing = lambda m: {k: v for k, v in m.items() if not k.endswith("_seconds")}
    assert drop_timing(first) == drop_timing(second)
    # and the served average is reported beside each half alone
    for prefix in ("", "transformer_", "lexicon_"):
        assert 0 <= first[f"{prefix}accuracy"] <= 1


@needs_data
def test_sentiment_onnx_matches_torch(sentiment_runs, tmp_path: Path) -> None:
    # given trained adapters and real reviews tokenised as served
    csv_path, _, _, weights_dir, _ = sentiment_runs
    texts = [text for text, _ in read_reviews(csv_path)[:8]]
    ids, mask = pad(encode(texts, sentiment.MAX_LENGTH))
    # when the merged encoder and head are exported and run by ONNX Runtime
    onnx_path = sentiment.to_onnx(weights_dir, tmp_path / "sentiment.onnx")
    (probs,) = _onnx_run(onnx_path, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    # then it matches the torch model: [batch, 2] probabilities in (negative, positive) order
    with torch.no_grad():
        reference = sentiment.load(weights_dir)(ids, mask).numpy()
    assert sentiment.LABELS == ("negative", "positive")
    assert probs.shape == (8, 2)
    np.testing.assert_allclose(probs, reference, atol=ATOL, rtol=0)
