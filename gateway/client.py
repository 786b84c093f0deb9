"""A thin typed client of the aisle.v1 API (blocking; one channel, thread-safe).

    from gateway.client import AisleClient
    with AisleClient("localhost:50051", api_key="...") as client:
        page = client.search("cordless drill", page_size=5)
        for item in page.items:
            print(item.id, item.title, item.score)
        more = client.search("cordless drill", page_size=5, page_token=page.next_page_token)

Methods return the generated response messages (gateway/protos/aisle/v1/aisle_pb2.pyi) and
raise :class:`grpc.RpcError` with the server's status code and message.

TLS: pass ``credentials=tls_credentials(root_ca="ca.pem")`` (plus ``cert``/``key`` for a gateway
that requires client certificates); without credentials the channel is plaintext.

Retries: the channel's service config retries UNAVAILABLE, with backoff, for the idempotent
reads only (Search, Recommend, SimilarItems, ClassifyProduct, AnalyzeReviews); TrackEvent is
never retried, so an event is not recorded twice when only its answer was lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.protos.aisle.v1 import aisle_pb2 as pb
from gateway.protos.aisle.v1 import aisle_pb2_grpc

SERVICE = "aisle.v1.Aisle"
API_KEY_HEADER = "x-api-key"
REQUEST_ID_HEADER = "x-request-id"
RETRIED_METHODS = ("Search", "Recommend", "SimilarItems", "ClassifyProduct", "AnalyzeReviews")
RETRY_POLICY = {
    "maxAttempts": 3,
    "initialBackoff": "0.05s",
    "maxBackoff": "0.5s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
SERVICE_CONFIG = {
    "methodConfig": [
        {"name": [{"service": SERVICE, "method": m} for m in RETRIED_METHODS], "retryPolicy": RETRY_POLICY},
    ]
}

EVENT_TYPES = {
    "view": pb.EVENT_TYPE_VIEW,
    "click": pb.EVENT_TYPE_CLICK,
    "cart": pb.EVENT_TYPE_CART,
    "purchase": pb.EVENT_TYPE_PURCHASE,
    "review": pb.EVENT_TYPE_REVIEW,
}


def make_filters(
    categories: Iterable[str] = (),
    brands: Iterable[str] = (),
    min_price: float | None = None,
    max_price: float | None = None,
) -> pb.Filters | None:
    f = pb.Filters(categories=list(categories), brands=list(brands))
    if min_price is not None:
        f.min_price = min_price
    if max_price is not None:
        f.max_price = max_price
    return f if f.ListFields() else None


def tls_credentials(
    root_ca: str | Path | None = None, cert: str | Path | None = None, key: str | Path | None = None
) -> grpc.ChannelCredentials:
    """Channel credentials for a TLS gateway: ``root_ca`` the PEM file of the CA to trust (None:
    the system's roots), ``cert`` and ``key`` this client's certificate and key (mTLS)."""
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs its key, and a key its certificate")

    def read(path):
        return None if path is None else Path(path).read_bytes()

    return grpc.ssl_channel_credentials(root_certificates=read(root_ca), private_key=read(key), certificate_chain=read(cert))


class AisleClient:
    def __init__(
        self,
        address: str,
        api_key: str | None = None,
        timeout_s: float = 5.0,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Iterable[tuple[str, object]] = (),
    ):
        """``address`` host:port; ``timeout_s`` the deadline of each call unless the call gives
        its own; ``credentials`` for TLS (:func:`tls_credentials`; plaintext without)."""
        self.address = address
        self.timeout_s = timeout_s
        self._metadata: tuple[tuple[str, str], ...] = ((API_KEY_HEADER, api_key),) if api_key else ()
        opts = [
            ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
            ("grpc.enable_retries", 1),
            *options,
        ]
        if credentials is None:
            self.channel = grpc.insecure_channel(address, options=opts)
        else:
            self.channel = grpc.secure_channel(address, credentials, options=opts)
        self.stub = aisle_pb2_grpc.AisleStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> AisleClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _kw(self, timeout_s: float | None, request_id: str | None) -> dict:
        metadata = self._metadata + (((REQUEST_ID_HEADER, request_id),) if request_id else ())
        return {"timeout": self.timeout_s if timeout_s is None else timeout_s, "metadata": metadata}

    # --- Calls ---------------------------------------------------------------------------

    def search(
        self,
        query: str,
        *,
        user_id: str = "",
        categories: Iterable[str] = (),
        brands: Iterable[str] = (),
        min_price: float | None = None,
        max_price: float | None = None,
        page_size: int | None = None,
        page_token: str = "",
        explain: bool = False,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> pb.SearchResponse:
        request = pb.SearchRequest(query=query, user_id=user_id, page_token=page_token, explain=explain)
        f = make_filters(categories, brands, min_price, max_price)
        if f is not None:
            request.filters.CopyFrom(f)
        if page_size is not None:
            request.page_size = page_size
        return self.stub.Search(request, **self._kw(timeout_s, request_id))

    def search_all(self, query: str, *, page_size: int = 100, max_pages: int = 5, **kwargs) -> Iterator[pb.Item]:
        """Items of every page of a query, following next_page_token (at most ``max_pages``)."""
        token = ""
        for _ in range(max_pages):
            page = self.search(query, page_size=page_size, page_token=token, **kwargs)
            yield from page.items
            token = page.next_page_token
            if not token:
                return

    def recommend(
        self,
        user_id: str,
        *,
        context_item_ids: Iterable[str] = (),
        k: int | None = None,
        categories: Iterable[str] = (),
        brands: Iterable[str] = (),
        min_price: float | None = None,
        max_price: float | None = None,
        explain: bool = False,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> pb.RecommendResponse:
        request = pb.RecommendRequest(user_id=user_id, context_item_ids=list(context_item_ids), explain=explain)
        f = make_filters(categories, brands, min_price, max_price)
        if f is not None:
            request.filters.CopyFrom(f)
        if k is not None:
            request.k = k
        return self.stub.Recommend(request, **self._kw(timeout_s, request_id))

    def similar_items(
        self,
        item_id: str,
        *,
        k: int | None = None,
        categories: Iterable[str] = (),
        brands: Iterable[str] = (),
        min_price: float | None = None,
        max_price: float | None = None,
        explain: bool = False,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> pb.SimilarItemsResponse:
        request = pb.SimilarItemsRequest(item_id=item_id, explain=explain)
        f = make_filters(categories, brands, min_price, max_price)
        if f is not None:
            request.filters.CopyFrom(f)
        if k is not None:
            request.k = k
        return self.stub.SimilarItems(request, **self._kw(timeout_s, request_id))

    def classify_product(
        self, texts: Iterable[str], *, timeout_s: float | None = None, request_id: str | None = None
    ) -> pb.ClassifyProductResponse:
        return self.stub.ClassifyProduct(pb.ClassifyProductRequest(texts=list(texts)), **self._kw(timeout_s, request_id))

    def analyze_reviews(
        self, texts: Iterable[str], *, timeout_s: float | None = None, request_id: str | None = None
    ) -> pb.AnalyzeReviewsResponse:
        return self.stub.AnalyzeReviews(pb.AnalyzeReviewsRequest(texts=list(texts)), **self._kw(timeout_s, request_id))

    def track_event(
        self,
        user_id: str,
        item_id: str,
        type: str | int,  # noqa: A002 - the API's field name
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> pb.TrackEventResponse:
        """Record an event; ``type`` is view, click, cart, purchase, review (or the enum value)."""
        if isinstance(type, str):
            try:
                type = EVENT_TYPES[type.lower()]
            except KeyError:
                raise ValueError(f"unknown event type {type!r}; known: {', '.join(EVENT_TYPES)}") from None
        request = pb.TrackEventRequest(user_id=user_id, item_id=item_id, type=type)
        return self.stub.TrackEvent(request, **self._kw(timeout_s, request_id))

    def health(self, service: str = SERVICE, *, timeout_s: float | None = None) -> str:
        """SERVING, NOT_SERVING, ... of ``service`` ("" for the process)."""
        response = self._health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=self.timeout_s if timeout_s is None else timeout_s
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
