"""ClassifyProduct and AnalyzeReviews straight from Triton's ensembles (batched).

The models exist in the repository only when their trained weights are committed
(export/weights/...): with them the RPCs answer; without them they answer UNAVAILABLE with
Triton's reason (never INTERNAL). Each environment runs one of the two cases of each model.
"""

from __future__ import annotations

import time

import grpc
import pytest

from tests.gateway.conftest import rpc_error, triton_has_model

# These tests serve the real data of ../shared/data (skipped without it).
pytestmark = pytest.mark.data

MODELS = {"ClassifyProduct": "classify_product", "AnalyzeReviews": "analyze_sentiment"}


def needs(triton_url: str, model: str, present: bool) -> None:
    if triton_has_model(triton_url, model) != present:
        pytest.skip(f"{model} is {'absent from' if present else 'served by'} the test model repository")


def test_classify_product_labels_each_text(client, triton_url):
    needs(triton_url, "classify_product", present=True)
    texts = ["Organic whole milk, 1 gallon", "Cordless drill with two batteries", "Frozen pepperoni pizza"]
    response = client.classify_product(texts)
    assert len(response.results) == len(texts)
    for result in response.results:
        for labels in (result.departments, result.aisles):
            assert labels and all(label.label for label in labels)
            probs = [label.probability for label in labels]
            assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
    assert response.results[0].departments[0].label == "dairy eggs"
    assert response.results[2].departments[0].label == "frozen"


def test_analyze_reviews_gives_each_text_a_polarity(client, triton_url):
    needs(triton_url, "analyze_sentiment", present=True)
    response = client.analyze_reviews([
        "Works perfectly, sturdy and easy to use. Highly recommend!",
        "Broke after two days and support never answered. Waste of money.",
    ])
    assert [r.label for r in response.results] == ["positive", "negative"]
    assert all(0.5 <= r.probability <= 1 for r in response.results)


def _inferences(triton_url: str, model: str) -> int:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton_url)
    try:
        return sum(s.inference_count for s in client.get_inference_statistics(model).model_stats)
    finally:
        client.close()


@pytest.mark.parametrize("rpc", MODELS)
def test_the_rpcs_run_on_instances_the_refresh_never_reaches(client, triton_url, rpc):
    from core.model_interfaces import query_model
    from core.triton import TritonClient

    base = MODELS[rpc]
    needs(triton_url, query_model(base), present=True)
    texts = ["Organic whole milk, 1 gallon", "Broke after two days. Waste of money.", "Frozen pepperoni pizza"]
    before = {m: _inferences(triton_url, m) for m in (base, query_model(base))}
    # when the gateway answers the RPC
    if rpc == "ClassifyProduct":
        served = [(r.departments[0].label, r.aisles[0].label) for r in client.classify_product(texts).results]
    else:
        served = [r.label for r in client.analyze_reviews(texts).results]
    # then its twin ensemble did the work, and the refresh's ensemble none of it
    assert _inferences(triton_url, query_model(base)) - before[query_model(base)] == len(texts)
    assert _inferences(triton_url, base) == before[base]
    # and the twin answers as the refresh's ensemble does (the same graphs)
    triton = TritonClient(triton_url)
    try:
        if rpc == "ClassifyProduct":
            direct = [(c.department[0], c.aisle[0]) for c in triton.classify(texts)]
        else:
            direct = [label for label, _ in triton.sentiment(texts)]
    finally:
        triton.close()
    assert served == direct


@pytest.mark.parametrize("rpc", MODELS)
def test_a_model_missing_from_triton_is_unavailable_not_internal(client, gateway_logs, triton_url, rpc):
    needs(triton_url, MODELS[rpc], present=False)
    call = client.classify_product if rpc == "ClassifyProduct" else client.analyze_reviews
    mark = gateway_logs.mark()
    err = rpc_error(call, ["a cordless drill"], request_id=f"missing-{rpc}")
    # the caller learns what is down and the request id, nothing of the server's insides
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert err.details() == f"Triton unavailable; retry later (request id missing-{rpc})"
    # the log says which model, under that request id
    lines = [line for line in gateway_logs.since(mark) if line["request_id"] == f"missing-{rpc}"]
    assert any(MODELS[rpc] in line["message"] for line in lines), lines


def test_a_twin_lookup_that_gets_no_answer_in_time_keeps_the_twin(gateway, gateway_loop, triton_url, monkeypatch):
    from core.model_interfaces import query_model
    from gateway import engine as engine_module

    needs(triton_url, query_model("analyze_sentiment"), present=True)
    engine = gateway.server.engine
    # given an engine that found the twin once, long enough ago to look again
    engine._query_models["analyze_sentiment"] = (time.monotonic() - engine_module.MODEL_TTL_S - 1, "analyze_sentiment_query")
    # when Triton does not answer the readiness look in time (a busy machine)
    monkeypatch.setattr(engine_module, "QUERY_MODEL_LOOKUP_S", 0)
    chosen = gateway_loop.run(engine._query_model("analyze_sentiment"))
    # then calls stay on the twin, and the next call looks again
    assert chosen == "analyze_sentiment_query"
    assert time.monotonic() - engine._query_models["analyze_sentiment"][0] > engine_module.MODEL_TTL_S
    # and once Triton answers, the twin is confirmed for another MODEL_TTL_S
    monkeypatch.setattr(engine_module, "QUERY_MODEL_LOOKUP_S", 5.0)
    assert gateway_loop.run(engine._query_model("analyze_sentiment")) == "analyze_sentiment_query"
    assert time.monotonic() - engine._query_models["analyze_sentiment"][0] < engine_module.MODEL_TTL_S
