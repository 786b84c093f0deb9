"""Every request outside the documented limits answers its status code with a message naming the
problem, never a traceback."""

from __future__ import annotations

import grpc
import pytest

from gateway.model import (
    MAX_CONTEXT_ITEMS,
    MAX_FILTER_VALUES,
    MAX_ID_CHARS,
    MAX_K,
    MAX_PAGE_SIZE,
    MAX_QUERY_CHARS,
    MAX_TEXT_CHARS,
    MAX_TEXTS,
)
from gateway.protos.aisle.v1 import aisle_pb2 as pb
from tests.gateway.conftest import rpc_error

# These tests serve the real data of ../shared/data (skipped without it).
pytestmark = pytest.mark.data

INVALID = grpc.StatusCode.INVALID_ARGUMENT

# A field number aisle.v1 does not have, as a newer client would send it: field 9, varint 1.
UNKNOWN_FIELD = b"\x48\x01"


def with_unknown_field(message):
    return type(message).FromString(message.SerializeToString() + UNKNOWN_FIELD)


def search(**fields) -> pb.SearchRequest:
    fields.setdefault("query", "cordless drill")
    return pb.SearchRequest(**fields)


BAD_SEARCHES = {
    "empty query": (search(query=""), "query is empty"),
    "whitespace query": (search(query=" \t\n "), "query is empty"),
    "oversized query": (search(query="drill " * (MAX_QUERY_CHARS // 6 + 1)), f"limit is {MAX_QUERY_CHARS}"),
    "NUL in query": (search(query="drill\x00bit"), "NUL"),
    "page_size 0": (search(page_size=0), "page_size"),
    "page_size -1": (search(page_size=-1), "page_size"),
    "page_size 101": (search(page_size=MAX_PAGE_SIZE + 1), "page_size"),
    "garbage page token": (search(page_token="not-a-token"), "page_token"),
    "too many brands": (search(filters=pb.Filters(brands=[f"b{i}" for i in range(MAX_FILTER_VALUES + 1)])), "filters.brands"),
    "too many categories": (
        search(filters=pb.Filters(categories=[f"c{i}" for i in range(MAX_FILTER_VALUES + 1)])), "filters.categories",
    ),
    "empty brand": (search(filters=pb.Filters(brands=["BEHR", " "])), "filters.brands[1] is empty"),
    "oversized category": (search(filters=pb.Filters(categories=["c" * (MAX_ID_CHARS + 1)])), "filters.categories[0]"),
    "min above max": (search(filters=pb.Filters(min_price=50, max_price=10)), "min_price"),
    "negative price": (search(filters=pb.Filters(min_price=-1)), "min_price"),
    "NaN price": (search(filters=pb.Filters(max_price=float("nan"))), "max_price"),
    "oversized user id": (search(user_id="u" * (MAX_ID_CHARS + 1)), "user_id"),
    "unknown filter field": (search(filters=with_unknown_field(pb.Filters(brands=["BEHR"]))), "filters.#9"),
    "unknown request field": (with_unknown_field(search()), "unknown fields #9"),
}


@pytest.mark.parametrize("request_, message", BAD_SEARCHES.values(), ids=BAD_SEARCHES.keys())
def test_bad_searches_are_invalid_arguments(client, request_, message):
    err = rpc_error(client.stub.Search, request_, timeout=30)
    assert err.code() == INVALID, err.details()
    assert message in err.details()
    assert "Traceback" not in err.details()


def recommend(**fields) -> pb.RecommendRequest:
    fields.setdefault("user_id", "someone")
    return pb.RecommendRequest(**fields)


BAD_RECOMMENDS = {
    "no user nor context": (recommend(user_id=""), "user_id"),
    "k 0": (recommend(k=0), "k is 0"),
    "k 101": (recommend(k=MAX_K + 1), "k is 101"),
    "k -5": (recommend(k=-5), "k is -5"),
    "too many context ids": (recommend(context_item_ids=[f"i{i}" for i in range(MAX_CONTEXT_ITEMS + 1)]), "context_item_ids"),
    "empty context id": (recommend(context_item_ids=[""]), "context_item_ids[0] is empty"),
    "too many brands": (recommend(filters=pb.Filters(brands=["b"] * (MAX_FILTER_VALUES + 1))), "filters.brands"),
    "unknown filter field": (recommend(filters=with_unknown_field(pb.Filters())), "filters.#9"),
}


@pytest.mark.parametrize("request_, message", BAD_RECOMMENDS.values(), ids=BAD_RECOMMENDS.keys())
def test_bad_recommends_are_invalid_arguments(client, request_, message):
    err = rpc_error(client.stub.Recommend, request_, timeout=30)
    assert err.code() == INVALID, err.details()
    assert message in err.details()


BAD_SIMILAR = {
    "empty item": (pb.SimilarItemsRequest(item_id=" "), "item_id is empty"),
    "k 0": (pb.SimilarItemsRequest(item_id="100001", k=0), "k is 0"),
    "k 101": (pb.SimilarItemsRequest(item_id="100001", k=101), "k is 101"),
    "oversized item id": (pb.SimilarItemsRequest(item_id="1" * (MAX_ID_CHARS + 1)), "item_id"),
}


@pytest.mark.parametrize("request_, message", BAD_SIMILAR.values(), ids=BAD_SIMILAR.keys())
def test_bad_similar_items_are_invalid_arguments(client, request_, message):
    err = rpc_error(client.stub.SimilarItems, request_, timeout=30)
    assert err.code() == INVALID, err.details()
    assert message in err.details()


BAD_TEXTS = {
    "no texts": ([], "texts is empty"),
    "too many texts": (["organic milk"] * (MAX_TEXTS + 1), f"limit is {MAX_TEXTS}"),
    "an empty text": (["organic milk", ""], "texts[1] is empty"),
    "a whitespace text": (["  \n"], "texts[0] is empty"),
    "an oversized text": (["a" * (MAX_TEXT_CHARS + 1)], "texts[0]"),
    "NUL in a text": (["milk\x00"], "NUL"),
}


@pytest.mark.parametrize("texts, message", BAD_TEXTS.values(), ids=BAD_TEXTS.keys())
@pytest.mark.parametrize("rpc", ["ClassifyProduct", "AnalyzeReviews"])
def test_bad_text_batches_are_invalid_arguments(client, rpc, texts, message):
    request_type = pb.ClassifyProductRequest if rpc == "ClassifyProduct" else pb.AnalyzeReviewsRequest
    err = rpc_error(getattr(client.stub, rpc), request_type(texts=texts), timeout=30)
    assert err.code() == INVALID, err.details()
    assert message in err.details()


BAD_EVENTS = {
    "unspecified type": (pb.TrackEventRequest(user_id="u", item_id="100001"), "type 0"),
    "unknown type": (pb.TrackEventRequest(user_id="u", item_id="100001", type=42), "type 42"),
    "empty user": (pb.TrackEventRequest(item_id="100001", type=pb.EVENT_TYPE_VIEW), "user_id is empty"),
    "empty item": (pb.TrackEventRequest(user_id="u", type=pb.EVENT_TYPE_VIEW), "item_id is empty"),
}


@pytest.mark.parametrize("request_, message", BAD_EVENTS.values(), ids=BAD_EVENTS.keys())
def test_bad_events_are_invalid_arguments(client, request_, message):
    err = rpc_error(client.stub.TrackEvent, request_, timeout=30)
    assert err.code() == INVALID, err.details()
    assert message in err.details()


def test_unknown_items_are_not_found(client, catalog):
    missing = "no-such-item-42"
    cases = [
        (client.similar_items, (missing,), {}),
        (client.track_event, ("someone", missing, "view"), {}),
        (client.recommend, ("someone",), {"context_item_ids": [catalog.scientific_item, missing]}),
    ]
    for call, args, kwargs in cases:
        err = rpc_error(call, *args, **kwargs)
        assert err.code() == grpc.StatusCode.NOT_FOUND, (call.__name__, err.details())
        assert missing in err.details()


def test_limits_themselves_are_accepted(client, catalog):
    # The documented limits are inclusive: exactly at them is fine
    assert client.search("d" * MAX_QUERY_CHARS, page_size=MAX_PAGE_SIZE) is not None
    assert client.search("drill", page_size=1, brands=[f"b{i}" for i in range(MAX_FILTER_VALUES)]) is not None
    assert len(client.recommend(catalog.user_id, k=MAX_K).items) == MAX_K
