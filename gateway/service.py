"""The Aisle gRPC servicer: validates requests against the documented limits, turns them into
the engine's domain types (gateway/model.py), and turns answers and failures back into
protobuf messages and status codes.

Status codes (docs/api.md): INVALID_ARGUMENT for requests outside the limits, NOT_FOUND for
unknown item ids, UNAVAILABLE when the engine cannot answer at all (no degraded answer is
possible), INTERNAL for anything else, with the request id and never a traceback in the
message (the traceback goes to the log, under the same request id).
"""

from __future__ import annotations

import functools
import logging
import math

import grpc
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from core import logs
from gateway import metrics
from gateway.model import (
    MAX_CONTEXT_ITEMS,
    MAX_FILTER_VALUES,
    MAX_ID_CHARS,
    MAX_K,
    MAX_PAGE_SIZE,
    MAX_QUERY_CHARS,
    MAX_RESULTS,
    MAX_TEXT_CHARS,
    MAX_TEXTS,
    Filters,
    InvalidInput,
    NotFound,
    OutOfTime,
    Ranked,
    RecommendQuery,
    SearchQuery,
    Unavailable,
)
from gateway.pagination import InvalidToken, PageTokens, request_digest
from gateway.protos.aisle.v1 import aisle_pb2 as pb
from gateway.protos.aisle.v1 import aisle_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 10
DEFAULT_K = 10

EVENT_TYPES = {
    pb.EVENT_TYPE_VIEW: "view",
    pb.EVENT_TYPE_CLICK: "click",
    pb.EVENT_TYPE_CART: "cart",
    pb.EVENT_TYPE_PURCHASE: "purchase",
    pb.EVENT_TYPE_REVIEW: "review",
}


class BadRequest(ValueError):
    """The request is outside the API's limits (INVALID_ARGUMENT); the message names the field."""


# --- Validation ------------------------------------------------------------------------------

def unknown_fields(message: Message, path: str = "") -> list[str]:
    """Fields of ``message`` (and the messages inside it) this server's schema does not know:
    a newer client's field would otherwise be dropped without a word (say, a filter ignored)."""
    found = [f"{path}#{field.field_number}" for field in UnknownFieldSet(message)]
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None or descriptor.message_type.GetOptions().map_entry:
            continue
        name = f"{path}{descriptor.name}"
        if _repeated(descriptor):
            for i, item in enumerate(value):
                found += unknown_fields(item, f"{name}[{i}].")
        else:
            found += unknown_fields(value, f"{name}.")
    return found


def _repeated(descriptor) -> bool:
    flag = getattr(descriptor, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return descriptor.label == descriptor.LABEL_REPEATED


# Unknown fields a refusal names at most. A status message travels in a trailer, and gRPC
# clients drop trailers over 16 KiB: a request repeating one unknown field 8,193 times got a
# 32 KiB message, which its client saw as RESOURCE_EXHAUSTED, not INVALID_ARGUMENT (test_fuzz).
MAX_NAMED_UNKNOWN = 10


def check_known_fields(message: Message) -> None:
    unknown = list(dict.fromkeys(unknown_fields(message)))
    if unknown:
        named = ", ".join(unknown[:MAX_NAMED_UNKNOWN])
        if len(unknown) > MAX_NAMED_UNKNOWN:
            named += f" and {len(unknown) - MAX_NAMED_UNKNOWN} more"
        raise BadRequest(
            f"unknown fields {named} in {message.DESCRIPTOR.name}: this server speaks aisle.v1 "
            "without them (a newer client's fields are refused, not ignored)"
        )


def _text(value: str, field: str, limit: int) -> str:
    if "\x00" in value:
        raise BadRequest(f"{field} contains a NUL character")
    if len(value) > limit:
        raise BadRequest(f"{field} is {len(value)} characters; the limit is {limit}")
    return value


def required_text(value: str, field: str, limit: int) -> str:
    value = value.strip()
    if not value:
        raise BadRequest(f"{field} is empty")
    return _text(value, field, limit)


def optional_id(value: str, field: str) -> str | None:
    return required_text(value, field, MAX_ID_CHARS) if value.strip() else None


def bounded(message: Message, field: str, default: int, limit: int) -> int:
    if not message.HasField(field):
        return default
    value = getattr(message, field)
    if not 1 <= value <= limit:
        raise BadRequest(f"{field} is {value}; it must be between 1 and {limit}")
    return value


def _values(values, field: str) -> tuple[str, ...]:
    if len(values) > MAX_FILTER_VALUES:
        raise BadRequest(f"{field} has {len(values)} values; the limit is {MAX_FILTER_VALUES}")
    out: list[str] = []
    for i, value in enumerate(values):
        value = required_text(value, f"{field}[{i}]", MAX_ID_CHARS)
        if value not in out:
            out.append(value)
    return tuple(out)


def _price(message: pb.Filters, field: str) -> float | None:
    if not message.HasField(field):
        return None
    value = getattr(message, field)
    if not math.isfinite(value) or value < 0:
        raise BadRequest(f"filters.{field} is {value}; it must be a finite number >= 0")
    return value


def filters(message: pb.Filters | None) -> Filters:
    if message is None:
        return Filters()
    out = Filters(
        categories=_values(message.categories, "filters.categories"),
        brands=_values(message.brands, "filters.brands"),
        min_price=_price(message, "min_price"),
        max_price=_price(message, "max_price"),
    )
    if out.min_price is not None and out.max_price is not None and out.min_price > out.max_price:
        raise BadRequest(f"filters.min_price {out.min_price} is above filters.max_price {out.max_price}")
    return out


def texts(values, field: str = "texts") -> list[str]:
    if not values:
        raise BadRequest(f"{field} is empty: send 1 to {MAX_TEXTS} texts")
    if len(values) > MAX_TEXTS:
        raise BadRequest(f"{field} has {len(values)} texts; the limit is {MAX_TEXTS}")
    out = []
    for i, value in enumerate(values):
        if not value.strip():
            raise BadRequest(f"{field}[{i}] is empty")
        out.append(_text(value, f"{field}[{i}]", MAX_TEXT_CHARS))
    return out


def time_left(context: grpc.aio.ServicerContext) -> float | None:
    """Seconds to the caller's deadline (None: no deadline, the engine's default budget)."""
    left = context.time_remaining()
    return None if left is None else max(left, 0.0)


# --- Answers ---------------------------------------------------------------------------------

def item_message(hit, explain: bool) -> pb.Item:
    item = hit.item
    out = pb.Item(id=item.id, title=item.title, category_path=list(item.category_path), score=hit.score)
    if item.brand is not None:
        out.brand = item.brand
    if item.price is not None:
        out.price = float(item.price)
    e = hit.explanation
    if explain and e is not None:
        ex = out.explanation
        for name, (rank, score) in sorted(e.retrievers.items(), key=lambda kv: kv[1][0]):
            ex.retrievers.add(name=name, rank=int(rank), score=float(score))
        ex.features.update({k: float(v) for k, v in e.features.items()})
        if e.ranker_score is not None:
            ex.ranker_score = float(e.ranker_score)
        ex.graph_path.extend(e.graph_path)
    return out


def _fill_ranked(response, ranked: Ranked, explain: bool) -> None:
    response.items.extend(item_message(h, explain) for h in ranked.hits)
    response.degraded = ranked.degraded
    response.degraded_reason = ranked.degraded_reason
    response.model_versions.update(ranked.model_versions)
    if explain:
        response.stage_ms.update({k: float(v) for k, v in ranked.stage_ms.items()})


# --- The servicer ----------------------------------------------------------------------------

async def fail(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> None:
    """End the call with ``code``. ``abort`` sends the status at once as trailers only (no
    headers went out), which is what lets a client's retry policy retry UNAVAILABLE; the
    interceptors log and count the call just after."""
    await context.abort(code, message)


def rpc(method):
    """Validation first, then the engine; every failure becomes a status code."""

    @functools.wraps(method)
    async def handler(self, request, context):
        try:
            check_known_fields(request)
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except (BadRequest, InvalidToken, InvalidInput) as exc:
            await fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except NotFound as exc:
            await fail(context, grpc.StatusCode.NOT_FOUND, str(exc))
        except OutOfTime as exc:
            # Said just before the caller's own timer fires, so the call's Postgres work is
            # cancelled rather than left running for an answer nobody reads.
            log.warning("%s out of time: %s", method.__name__, exc)
            await fail(context, grpc.StatusCode.DEADLINE_EXCEEDED, f"{exc} (request id {logs.current_request_id()})")
        except Unavailable as exc:
            # The caller learns what is down ("Triton unavailable", "database unavailable"), not
            # the addresses and errors behind it: those go to the log under the request id.
            log.warning("%s unavailable: %s", method.__name__, exc)
            what = str(exc).split(":", 1)[0].strip() or "service unavailable"
            await fail(context, grpc.StatusCode.UNAVAILABLE, f"{what}; retry later (request id {logs.current_request_id()})")
        except Exception:
            log.exception("%s failed", method.__name__)
            await fail(context, grpc.StatusCode.INTERNAL, f"internal error (request id {logs.current_request_id()})")
        return None

    return handler


class AisleService(aisle_pb2_grpc.AisleServicer):
    def __init__(self, engine, tokens: PageTokens | None = None):
        self.engine = engine
        self.tokens = tokens or PageTokens()
        self.cache_counters = metrics.CacheCounters(engine.cache) if hasattr(engine, "cache") else None
        if hasattr(engine, "held_items"):
            metrics.HELD_ITEMS.watch(engine)

    def _observe(self, rpc_name: str, ranked: Ranked) -> None:
        metrics.observe_ranked(rpc_name, ranked)
        if ranked.degraded:
            log.warning("%s answered degraded: %s", rpc_name, ranked.degraded_reason)

    @rpc
    async def Search(self, request: pb.SearchRequest, context) -> pb.SearchResponse:
        query = required_text(request.query, "query", MAX_QUERY_CHARS)
        user_id = optional_id(request.user_id, "user_id")
        flt = filters(request.filters if request.HasField("filters") else None)
        page_size = bounded(request, "page_size", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        digest = request_digest(query, flt, user_id)
        offset = self.tokens.decode(request.page_token, digest) if request.page_token else 0
        ranked = await self.engine.search(
            SearchQuery(query, user_id, flt, offset, page_size, request.explain, time_left_s=time_left(context))
        )
        if self.cache_counters is not None:
            self.cache_counters.sync()
        self._observe("Search", ranked)
        response = pb.SearchResponse()
        _fill_ranked(response, ranked, request.explain)
        for matched, labels in ranked.expansions.items():
            response.expansions.add(matched=matched, labels=labels)
        following = offset + page_size
        if ranked.has_more and following < MAX_RESULTS:
            response.next_page_token = self.tokens.encode(following, digest)
        return response

    @rpc
    async def Recommend(self, request: pb.RecommendRequest, context) -> pb.RecommendResponse:
        user_id = optional_id(request.user_id, "user_id")
        if len(request.context_item_ids) > MAX_CONTEXT_ITEMS:
            raise BadRequest(
                f"context_item_ids has {len(request.context_item_ids)} ids; the limit is {MAX_CONTEXT_ITEMS}"
            )
        context_ids: list[str] = []
        for i, item_id in enumerate(request.context_item_ids):
            item_id = required_text(item_id, f"context_item_ids[{i}]", MAX_ID_CHARS)
            if item_id not in context_ids:
                context_ids.append(item_id)
        if user_id is None and not context_ids:
            raise BadRequest("user_id is empty: name a user, or items in context_item_ids")
        k = bounded(request, "k", DEFAULT_K, MAX_K)
        flt = filters(request.filters if request.HasField("filters") else None)
        ranked = await self.engine.recommend(
            RecommendQuery(user_id or "", tuple(context_ids), k, flt, request.explain, time_left_s=time_left(context))
        )
        self._observe("Recommend", ranked)
        response = pb.RecommendResponse()
        _fill_ranked(response, ranked, request.explain)
        return response

    @rpc
    async def SimilarItems(self, request: pb.SimilarItemsRequest, context) -> pb.SimilarItemsResponse:
        item_id = required_text(request.item_id, "item_id", MAX_ID_CHARS)
        k = bounded(request, "k", DEFAULT_K, MAX_K)
        flt = filters(request.filters if request.HasField("filters") else None)
        ranked = await self.engine.similar_items(item_id, k, flt, request.explain, time_left_s=time_left(context))
        self._observe("SimilarItems", ranked)
        response = pb.SimilarItemsResponse()
        _fill_ranked(response, ranked, request.explain)
        return response

    @rpc
    async def ClassifyProduct(self, request: pb.ClassifyProductRequest, context) -> pb.ClassifyProductResponse:
        results = await self.engine.classify(texts(request.texts), time_left_s=time_left(context))
        response = pb.ClassifyProductResponse()
        for c in results:
            out = response.results.add()
            for label, p in c.department:
                out.departments.add(label=label, probability=float(p))
            for label, p in c.aisle:
                out.aisles.add(label=label, probability=float(p))
        return response

    @rpc
    async def AnalyzeReviews(self, request: pb.AnalyzeReviewsRequest, context) -> pb.AnalyzeReviewsResponse:
        results = await self.engine.analyze(texts(request.texts), time_left_s=time_left(context))
        response = pb.AnalyzeReviewsResponse()
        for s in results:
            response.results.add(label=s.label, probability=float(s.probability))
        return response

    @rpc
    async def TrackEvent(self, request: pb.TrackEventRequest, context) -> pb.TrackEventResponse:
        user_id = required_text(request.user_id, "user_id", MAX_ID_CHARS)
        item_id = required_text(request.item_id, "item_id", MAX_ID_CHARS)
        event_type = EVENT_TYPES.get(request.type)
        if event_type is None:
            known = ", ".join(pb.EventType.Name(t) for t in EVENT_TYPES)
            raise BadRequest(f"type {request.type} is not an event type; known: {known}")
        await self.engine.track_event(user_id, item_id, event_type)
        return pb.TrackEventResponse()
