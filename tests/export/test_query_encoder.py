"""The search query encoder: query-side adapters exported to ONNX and served as the query twin
of embed_text, while items keep the base encoder's embeddings."""

from __future__ import annotations

import csv

import numpy as np
import onnxruntime as ort
import pytest
import torch

from core.model_interfaces import EMBED_TEXT, query_model
from core.triton import TritonClient
from export import artifacts
from export.encoder import INPUT_NAMES, MeanPooledEncoder
from export.heads import query_encoder
from tests.datasets import data_file
from tests.export.test_encoder import MIN_COSINE, _tokenize

pytestmark = pytest.mark.skipif(
    "query_encoder" not in artifacts.available(), reason="no query encoder adapters committed (aisle train query-encoder)"
)


@pytest.fixture(scope="module")
def queries() -> list[str]:
    with open(data_file("homedepot", "queries_dev.csv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["query"] for r in rows[:: len(rows) // 300][:300]]


@pytest.fixture(scope="module")
def adapted(queries) -> np.ndarray:
    model = MeanPooledEncoder(query_encoder.load(artifacts.WEIGHTS / "query_encoder")).eval()
    with torch.no_grad():
        ids, mask = _tokenize(queries)
        return model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()


def test_the_query_graph_equals_the_adapted_model_on_300_real_queries(queries, adapted):
    # given the exported query encoder graph
    session = ort.InferenceSession(str(artifacts.onnx("query_encoder")), providers=["CPUExecutionProvider"])
    # when it embeds real queries in padded batches
    ours = np.concatenate([
        session.run(None, dict(zip(INPUT_NAMES, _tokenize(queries[i : i + 64]))))[0] for i in range(0, len(queries), 64)
    ])
    # then every query is within the parity bar of the base model with the adapters merged in
    cos = (ours * adapted).sum(1)
    assert cos.min() >= MIN_COSINE, f"worst cosine {cos.min():.7f} for {queries[int(cos.argmin())]!r}"


def test_queries_are_served_by_the_adapted_encoder_and_items_by_the_base_one(triton_url, queries, adapted):
    client = TritonClient(triton_url)
    try:
        # given the same real queries through the query twin and through the item ensemble
        served_query = client.embed(queries, model=query_model(EMBED_TEXT.model))
        served_item = client.embed(queries)
    finally:
        client.close()
    # then the twin answers with the adapted model
    assert (served_query * adapted).sum(1).min() >= MIN_COSINE
    # and the items' encoder is not the adapted one (its parity with sentence-transformers is
    # test_served_models.py's), yet both stay in one space: the adapters move queries, not apart
    cos = (served_query * served_item).sum(1)
    assert np.median(cos) < 0.99
    assert cos.min() > 0.5
