"""Encoder export: the ONNX graph equals sentence-transformers on real titles."""

from __future__ import annotations

import csv

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export import artifacts
from export.encoder import INPUT_NAMES, OUTPUT_NAME, base_model_dir
from export.spec import TEXT_MAX_TOKENS
from tests.datasets import data_file

# The bar: every title within cosine 0.9999 of the library's embedding.
MIN_COSINE = 0.9999


@pytest.fixture(scope="module")
def titles() -> list[str]:
    with open(data_file("homedepot", "products.csv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    # 1,000 real titles spread over the catalog, plus the longest ones (truncation).
    picked = rows[:: len(rows) // 1000][:1000]
    longest = sorted(rows, key=lambda r: -len(r["product_title"]))[:20]
    return [r["product_title"] for r in picked + longest]


@pytest.fixture(scope="module")
def encoder_path():
    return artifacts.onnx("encoder")


def _tokenize(texts):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(base_model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(TEXT_MAX_TOKENS)
    encs = tok.encode_batch(texts)
    width = max(len(e.ids) for e in encs)
    ids = np.zeros((len(encs), width), np.int64)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = e.ids
    return ids, (ids != 0).astype(np.int64)


def test_graph_has_named_inputs_outputs_and_dynamic_axes(encoder_path):
    graph = onnx.load(str(encoder_path), load_external_data=False).graph
    assert [i.name for i in graph.input] == list(INPUT_NAMES)
    assert [o.name for o in graph.output] == [OUTPUT_NAME]
    for tensor in graph.input:
        dims = tensor.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "sequence"]
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_onnx_matches_sentence_transformers_on_1000_real_titles(titles, encoder_path):
    from sentence_transformers import SentenceTransformer

    # given sentence-transformers' embeddings of real titles (batches padded to their longest)
    reference = SentenceTransformer(str(base_model_dir()), device="cpu").encode(titles, batch_size=64)
    session = ort.InferenceSession(str(encoder_path), providers=["CPUExecutionProvider"])
    # when the exported graph embeds the same titles in padded batches
    ours = np.concatenate(
        [
            session.run(None, dict(zip(INPUT_NAMES, _tokenize(titles[i : i + 64]))))[0]
            for i in range(0, len(titles), 64)
        ]
    )
    # then every title is within the parity bar, and embeddings are unit length
    cos = (ours * reference).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(ours, axis=1)
    assert cos.min() >= MIN_COSINE, f"worst cosine {cos.min():.7f} for {titles[int(cos.argmin())]!r}"
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
