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

# The int8 graph the portable target serves (export/quantize.py) against the fp32 one: on 1,000
# Home Depot queries its cosine was 0.994 on average and 0.979 at worst (2026-12-07).
INT8_MEAN_COSINE = 0.99
INT8_MIN_COSINE = 0.97

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
    path = artifacts.onnx("query_encoder")
    # when it embeds real queries in padded batches
    ours = _embed(path, queries)
    # then every query is within the parity bar of the base model with the adapters merged in
    cos = (ours * adapted).sum(1)
    assert cos.min() >= MIN_COSINE, f"worst cosine {cos.min():.7f} for {queries[int(cos.argmin())]!r}"


def _embed(path, queries: list[str], rows: int = 64) -> np.ndarray:
    """``queries`` through the graph at ``path``, ``rows`` padded queries per run."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([
        session.run(None, dict(zip(INPUT_NAMES, _tokenize(queries[i : i + rows]))))[0] for i in range(0, len(queries), rows)
    ])


def test_the_int8_query_graph_stays_close_to_the_fp32_one_and_keeps_its_interface(queries, adapted):
    # given the int8 form of the query encoder
    path = artifacts.onnx("query_encoder_int8")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # then it takes and gives the same named tensors, batch and sequence dynamic
    assert [i.name for i in session.get_inputs()] == list(INPUT_NAMES)
    assert [tuple(i.shape) for i in session.get_inputs()] == [("batch", "sequence")] * 2
    assert [(o.name, tuple(o.shape)) for o in session.get_outputs()] == [("sentence_embedding", ("batch", 384))]
    # and every MatMul over weights is int8 (those between activations, attention's, stay float)
    import onnx

    graph = onnx.load(str(path)).graph
    weights = {init.name for init in graph.initializer}
    assert sum(node.op_type == "MatMulInteger" for node in graph.node) >= 36  # 6 layers x 6 maps
    assert not [n.name for n in graph.node if n.op_type == "MatMul" and weights & set(n.input)]
    # and on real queries its unit vectors stay near the fp32 model's
    ours = _embed(path, queries)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-4)
    cos = (ours * adapted).sum(1)
    assert cos.mean() >= INT8_MEAN_COSINE, f"mean cosine {cos.mean():.4f}"
    assert cos.min() >= INT8_MIN_COSINE, f"worst cosine {cos.min():.4f} for {queries[int(cos.argmin())]!r}"


def test_queries_are_served_by_the_adapted_encoder_and_items_by_the_base_one(triton_url, queries, adapted):
    client = TritonClient(triton_url)
    try:
        # given the same real queries through the query twin and through the item ensemble
        served_query = client.embed(queries, model=query_model(EMBED_TEXT.model))
        served_item = client.embed(queries)
    finally:
        client.close()
    # then the twin answers with the adapted model, in the int8 form the portable target serves
    cos_adapted = (served_query * adapted).sum(1)
    assert cos_adapted.mean() >= INT8_MEAN_COSINE and cos_adapted.min() >= INT8_MIN_COSINE
    # one query per onnxruntime call, so a query's vector does not depend on its batch-mates
    alone = _embed(artifacts.onnx("query_encoder_int8"), queries, rows=1)
    assert np.allclose(served_query, alone, atol=1e-5)
    # and the items' encoder is not the adapted one (its parity with sentence-transformers is
    # test_served_models.py's), yet both stay in one space: the adapters move queries, not apart
    cos = (served_query * served_item).sum(1)
    assert np.median(cos) < 0.99
    assert cos.min() > 0.5
