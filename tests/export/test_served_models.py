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


@pytest.fixture(scope="module")
def products() -> list[tuple[str, str, str]]:
    from export.heads.datasets import read_products

    # Every 100th labelled row: spread over the file, a few hundred names.
    return read_products(data_file("instacart", "products_train.csv"))[::100]


@pytest.fixture(scope="module")
def reviews() -> list[tuple[str, str]]:
    from export.heads.datasets import read_reviews

    return read_reviews(data_file("sentiment", "reviews_train.csv"))[::40]


def _served(client, model: str) -> None:
    if not client.is_model_ready(model):
        pytest.skip(f"{model} is not in the exported repository (no weights under export/weights)")


def test_classify_product_returns_ranked_labels_of_the_taxonomy(client, aisle_client, products):
    from export.heads.product_classifier import AISLES, DEPARTMENT_AISLES, DEPARTMENTS

    _served(client, "classify_product")
    # given real Instacart product names
    names = [name for name, _, _ in products]
    # when the ensemble classifies them
    results = aisle_client.classify(names)
    # then each gets top-5 departments and aisles of the taxonomy, most probable first, and the
    # top aisle belongs to the top department most of the time (they come from one distribution)
    assert len(results) == len(names)
    for c in results:
        assert len(c.department) == len(c.aisle) == 5
        assert set(c.department) <= set(DEPARTMENTS) and set(c.aisle) <= set(AISLES)
        assert c.department_prob == sorted(c.department_prob, reverse=True)
        assert 0 < c.department_prob[0] <= 1.0 + 1e-6
    consistent = np.mean([c.aisle[0] in DEPARTMENT_AISLES[c.department[0]] for c in results])
    assert consistent > 0.95
    # and they are mostly right (rows seen in training: this checks the wiring, docs/models.md the quality)
    accuracy = np.mean([c.department[0] == dept for c, (_, dept, _) in zip(results, products)])
    assert accuracy > 0.8


def test_enrich_item_gives_the_embedding_and_the_category_in_one_call(client, aisle_client, products):
    from core.model_interfaces import ENRICH_ITEM

    _served(client, ENRICH_ITEM.model)
    names = [name for name, _, _ in products[:20]]
    # when items are enriched
    result = _infer_raw(client, ENRICH_ITEM.model, [[n.encode()] for n in names])
    # then the embedding equals embed_text's and the categories equal classify_product's
    np.testing.assert_allclose(result.as_numpy("embedding"), aisle_client.embed(names), atol=1e-5)
    departments = [row[0].decode() for row in result.as_numpy("department")]
    assert departments == [c.department[0] for c in aisle_client.classify(names)]


def test_analyze_sentiment_labels_real_reviews(client, aisle_client, reviews):
    _served(client, "analyze_sentiment")
    # given real reviews, half of them long
    texts = [text for text, _ in reviews]
    # when the ensemble scores them
    results = aisle_client.sentiment(texts)
    # then each gets a label with the probability of that label, and most are right
    assert len(results) == len(texts)
    assert all(label in ("positive", "negative") and 0.5 <= p <= 1.0 + 1e-6 for label, p in results)
    accuracy = np.mean([label == gold for (label, _), (_, gold) in zip(results, reviews)])
    assert accuracy > 0.85


@pytest.mark.parametrize("model", ["analyze_sentiment", "analyze_sentiment_query"])
def test_analyze_sentiment_answers_the_average_of_the_model_and_the_lexicon(client, model, reviews):
    import onnxruntime as ort

    from export import artifacts
    from export.backends.sentiment_postprocess import fuse
    from export.heads import sentiment, sentiment_lexicon
    from export.heads.wordpieces import encode, pad

    _served(client, model)
    # given real reviews, and the committed transformer and lexicon run outside Triton
    texts = [text for text, _ in reviews[:40]]
    session = ort.InferenceSession(str(artifacts.onnx("sentiment")), providers=["CPUExecutionProvider"])
    ids, mask = pad(encode(texts, sentiment.MAX_LENGTH))
    (probs,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    lexical = sentiment_lexicon.predict(texts, *sentiment_lexicon.load(artifacts.WEIGHTS / "sentiment"))
    labels, expected = fuse(probs, lexical, sentiment_lexicon.LEXICAL_WEIGHT)
    # when the ensemble scores them
    result = _infer_raw(client, model, [[t.encode()] for t in texts])
    # then its label and probability are the average's, not the transformer's alone
    assert [v.decode() for v in result.as_numpy("label").reshape(-1)] == list(labels)
    np.testing.assert_allclose(result.as_numpy("probability").reshape(-1), expected, atol=1e-4)
    alone = probs.max(axis=1)
    assert np.abs(alone - expected).max() > 0.01


def test_the_client_reads_which_model_an_ensemble_serves(aisle_client):
    from core.model_interfaces import CLASSIFY_PRODUCT
    from export import artifacts

    # when the workers' client asks Triton which model serves classify_product and embed_text
    # then it reads the weights' fingerprint from the served config, and "" where there is none
    assert aisle_client.served_identity(CLASSIFY_PRODUCT) == artifacts.served_fingerprint("product_classifier")
    assert aisle_client.served_identity(EMBED_TEXT) == ""


@pytest.mark.parametrize("model", ["classify_product", "classify_product_query", "enrich_item"])
def test_classify_product_answers_the_average_of_the_model_and_the_lexicon(client, model, products):
    import onnxruntime as ort

    from export import artifacts
    from export.backends.classifier_postprocess import fuse
    from export.heads import classifier_lexicon, product_classifier
    from export.heads.wordpieces import encode, pad

    _served(client, model)
    # given real product names, and the committed transformer and lexicon run outside Triton
    names = [name for name, _, _ in products[:40]]
    session = ort.InferenceSession(str(artifacts.onnx("product_classifier")), providers=["CPUExecutionProvider"])
    ids, mask = pad(encode(names, product_classifier.MAX_LENGTH))
    department, aisle = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    lexicon = classifier_lexicon.load(artifacts.WEIGHTS / "product_classifier")
    expected = fuse({"department": department, "aisle": aisle}, classifier_lexicon.predict(names, lexicon),
                    lexicon["department_of_aisle"], classifier_lexicon.LEXICAL_WEIGHT)
    # when the ensemble classifies them
    result = _infer_raw(client, model, [[n.encode()] for n in names])
    # then each head's top labels and probabilities are the average's, not the transformer's alone
    for head, alone in (("department", department), ("aisle", aisle)):
        labels = np.array(product_classifier.LABELS[head], dtype=object)
        top = np.argsort(-expected[head], axis=1, kind="stable")[:, :5]
        served_prob = result.as_numpy(f"{head}_prob")
        np.testing.assert_allclose(served_prob, np.take_along_axis(expected[head], top, axis=1), atol=1e-4)
        assert [row[0].decode() for row in result.as_numpy(head)] == list(labels[top[:, 0]])
        assert np.abs(alone.max(axis=1) - served_prob[:, 0]).max() > 0.01


@pytest.mark.parametrize("model", ["classify_product", "analyze_sentiment"])
def test_classifier_ensembles_refuse_bad_text_and_stay_up(client, model):
    _served(client, model)
    for values, expected in (([[b""]], "text[0] is empty"), ([[b"\xff broken"]], "not valid UTF-8")):
        with pytest.raises(InferenceServerException) as err:
            _infer_raw(client, model, values)
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert expected in err.value.message()
    with pytest.raises(InferenceServerException):
        _infer_raw(client, model, [[b"ok"]] * (REQUEST_MAX_BATCH + 1))
    assert _infer_raw(client, model, [[b"organic whole milk"]]).get_response() is not None
