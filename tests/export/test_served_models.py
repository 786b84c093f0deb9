"""The exported repository served by a real tritonserver: every ensemble with real text, and
bad input answered with a clear error while the server stays up."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from core.model_interfaces import EMBED_TEXT
from core.triton import TritonClient
from export.spec import REQUEST_MAX_BATCH, TEXT_MAX_CHARS, repository
from tests.datasets import data_file


@pytest.fixture(scope="module")
def client(triton_url):
    c = grpcclient.InferenceServerClient(triton_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def aisle_client(triton_url):
    c = TritonClient(triton_url)
    yield c
    c.close()


def _infer_raw(client, model: str, values, shape=None, dtype="BYTES"):
    arr = np.array(values, dtype=object)
    if shape is not None:
        arr = arr.reshape(shape)
    tensor = grpcclient.InferInput("text", list(arr.shape), dtype)
    tensor.set_data_from_numpy(arr)
    return client.infer(model, [tensor])


@pytest.fixture(scope="module")
def titles() -> list[str]:
    with open(data_file("homedepot", "products.csv"), encoding="utf-8") as f:
        return [r["product_title"] for _, r in zip(range(300), csv.DictReader(f))]


def test_every_model_of_the_spec_is_ready(client):
    for spec in repository("portable"):
        assert client.is_model_ready(spec.name), spec.name


def test_embed_text_equals_sentence_transformers(aisle_client, titles):
    from sentence_transformers import SentenceTransformer

    from export.encoder import base_model_dir

    # given 300 real titles, more than one request's worth, sent through the ensemble
    served = aisle_client.embed(titles)
    # when compared with the library in-process
    reference = SentenceTransformer(str(base_model_dir()), device="cpu").encode(titles)
    cos = (served * reference).sum(1) / np.linalg.norm(reference, axis=1)
    # then each row is the same embedding, in the same order
    assert served.shape == (300, 384)
    assert cos.min() >= 0.9999


@pytest.mark.parametrize(
    "values, expected",
    [
        ([[b""]], "text[0] is empty"),
        ([[b"ok"], [b"   "]], "text[1] is empty"),
        ([[b"\xff\xfe broken"]], "text[0] is not valid UTF-8"),
        ([[("x" * 100_000).encode()]], f"has 100000 characters; the limit is {TEXT_MAX_CHARS}"),
    ],
    ids=["empty", "blank-second", "non-utf8", "100k-chars"],
)
def test_bad_text_gets_a_clear_invalid_argument(client, values, expected):
    # when a request carries a bad text
    with pytest.raises(InferenceServerException) as err:
        _infer_raw(client, EMBED_TEXT.model, values)
    # then Triton answers INVALID_ARGUMENT naming the problem
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert expected in err.value.message()
    # and the next good request succeeds
    assert _infer_raw(client, EMBED_TEXT.model, [[b"cordless drill"]]).as_numpy("embedding").shape == (1, 384)


def test_a_batch_larger_than_max_batch_size_is_refused(client):
    with pytest.raises(InferenceServerException) as err:
        _infer_raw(client, EMBED_TEXT.model, [[b"drill"]] * (REQUEST_MAX_BATCH + 1))
    assert "batch-size must be <=" in err.value.message() or "max allowed" in err.value.message()
    assert _infer_raw(client, EMBED_TEXT.model, [[b"drill"]] * REQUEST_MAX_BATCH).as_numpy("embedding").shape[0] == REQUEST_MAX_BATCH


@pytest.mark.parametrize("shape", [(3,), (1, 2), (1, 1, 1)], ids=["1d", "two-per-row", "3d"])
def test_wrong_tensor_shapes_are_refused(client, shape):
    values = [b"drill"] * int(np.prod(shape))
    with pytest.raises(InferenceServerException) as err:
        _infer_raw(client, EMBED_TEXT.model, values, shape=shape)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "text" in err.value.message()
    assert _infer_raw(client, EMBED_TEXT.model, [[b"drill"]]).as_numpy("embedding").shape == (1, 384)


def test_a_wrong_datatype_is_refused(client):
    tensor = grpcclient.InferInput("text", [1, 1], "INT64")
    tensor.set_data_from_numpy(np.array([[7]], dtype=np.int64))
    with pytest.raises(InferenceServerException) as err:
        client.infer(EMBED_TEXT.model, [tensor])
    assert "data-type" in err.value.message() or "datatype" in err.value.message().lower()


def test_bad_requests_in_flight_do_not_poison_good_ones(aisle_client, client, titles):
    # given good and bad requests interleaved concurrently (they share dynamic batches)
    from concurrent.futures import ThreadPoolExecutor

    def bad(_):
        with pytest.raises(InferenceServerException):
            _infer_raw(client, EMBED_TEXT.model, [[b""]])

    expected = aisle_client.embed(titles[:80])
    with ThreadPoolExecutor(8) as pool:
        goods = [pool.submit(aisle_client.embed, titles[i : i + 10]) for i in range(0, 80, 10)]
        list(pool.map(bad, range(8)))
        # then every good request still gets its own embeddings, row for row
        for i, fut in enumerate(goods):
            np.testing.assert_allclose(fut.result(), expected[i * 10 : i * 10 + 10], atol=1e-5)
