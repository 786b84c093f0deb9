from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_VIEW: _ClassVar[EventType]
    EVENT_TYPE_CLICK: _ClassVar[EventType]
    EVENT_TYPE_CART: _ClassVar[EventType]
    EVENT_TYPE_PURCHASE: _ClassVar[EventType]
    EVENT_TYPE_REVIEW: _ClassVar[EventType]
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_VIEW: EventType
EVENT_TYPE_CLICK: EventType
EVENT_TYPE_CART: EventType
EVENT_TYPE_PURCHASE: EventType
EVENT_TYPE_REVIEW: EventType

class Filters(_message.Message):
    __slots__ = ("categories", "brands", "min_price", "max_price")
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    BRANDS_FIELD_NUMBER: _ClassVar[int]
    MIN_PRICE_FIELD_NUMBER: _ClassVar[int]
    MAX_PRICE_FIELD_NUMBER: _ClassVar[int]
    categories: _containers.RepeatedScalarFieldContainer[str]
    brands: _containers.RepeatedScalarFieldContainer[str]
    min_price: float
    max_price: float
    def __init__(self, categories: _Optional[_Iterable[str]] = ..., brands: _Optional[_Iterable[str]] = ..., min_price: _Optional[float] = ..., max_price: _Optional[float] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("query", "user_id", "filters", "page_size", "page_token", "explain")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    query: str
    user_id: str
    filters: Filters
    page_size: int
    page_token: str
    explain: bool
    def __init__(self, query: _Optional[str] = ..., user_id: _Optional[str] = ..., filters: _Optional[_Union[Filters, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., explain: _Optional[bool] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("items", "next_page_token", "degraded", "degraded_reason", "model_versions", "expansions", "stage_ms")
    class ModelVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class StageMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    EXPANSIONS_FIELD_NUMBER: _ClassVar[int]
    STAGE_MS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    next_page_token: str
    degraded: bool
    degraded_reason: str
    model_versions: _containers.ScalarMap[str, str]
    expansions: _containers.RepeatedCompositeFieldContainer[QueryExpansion]
    stage_ms: _containers.ScalarMap[str, float]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., degraded: _Optional[bool] = ..., degraded_reason: _Optional[str] = ..., model_versions: _Optional[_Mapping[str, str]] = ..., expansions: _Optional[_Iterable[_Union[QueryExpansion, _Mapping]]] = ..., stage_ms: _Optional[_Mapping[str, float]] = ...) -> None: ...

class QueryExpansion(_message.Message):
    __slots__ = ("matched", "labels")
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    matched: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, matched: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "context_item_ids", "k", "filters", "explain")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    context_item_ids: _containers.RepeatedScalarFieldContainer[str]
    k: int
    filters: Filters
    explain: bool
    def __init__(self, user_id: _Optional[str] = ..., context_item_ids: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., filters: _Optional[_Union[Filters, _Mapping]] = ..., explain: _Optional[bool] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "degraded", "degraded_reason", "model_versions", "stage_ms")
    class ModelVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class StageMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    STAGE_MS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    degraded: bool
    degraded_reason: str
    model_versions: _containers.ScalarMap[str, str]
    stage_ms: _containers.ScalarMap[str, float]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., degraded: _Optional[bool] = ..., degraded_reason: _Optional[str] = ..., model_versions: _Optional[_Mapping[str, str]] = ..., stage_ms: _Optional[_Mapping[str, float]] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("item_id", "k", "filters", "explain")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    k: int
    filters: Filters
    explain: bool
    def __init__(self, item_id: _Optional[str] = ..., k: _Optional[int] = ..., filters: _Optional[_Union[Filters, _Mapping]] = ..., explain: _Optional[bool] = ...) -> None: ...

class SimilarItemsResponse(_message.Message):
    __slots__ = ("items", "degraded", "degraded_reason", "model_versions", "stage_ms")
    class ModelVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class StageMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    STAGE_MS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    degraded: bool
    degraded_reason: str
    model_versions: _containers.ScalarMap[str, str]
    stage_ms: _containers.ScalarMap[str, float]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., degraded: _Optional[bool] = ..., degraded_reason: _Optional[str] = ..., model_versions: _Optional[_Mapping[str, str]] = ..., stage_ms: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("id", "title", "brand", "category_path", "price", "score", "explanation")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    BRAND_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_PATH_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    brand: str
    category_path: _containers.RepeatedScalarFieldContainer[str]
    price: float
    score: float
    explanation: Explanation
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., brand: _Optional[str] = ..., category_path: _Optional[_Iterable[str]] = ..., price: _Optional[float] = ..., score: _Optional[float] = ..., explanation: _Optional[_Union[Explanation, _Mapping]] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("retrievers", "features", "ranker_score", "graph_path")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RETRIEVERS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    RANKER_SCORE_FIELD_NUMBER: _ClassVar[int]
    GRAPH_PATH_FIELD_NUMBER: _ClassVar[int]
    retrievers: _containers.RepeatedCompositeFieldContainer[RetrieverHit]
    features: _containers.ScalarMap[str, float]
    ranker_score: float
    graph_path: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, retrievers: _Optional[_Iterable[_Union[RetrieverHit, _Mapping]]] = ..., features: _Optional[_Mapping[str, float]] = ..., ranker_score: _Optional[float] = ..., graph_path: _Optional[_Iterable[str]] = ...) -> None: ...

class RetrieverHit(_message.Message):
    __slots__ = ("name", "rank", "score")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    name: str
    rank: int
    score: float
    def __init__(self, name: _Optional[str] = ..., rank: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class ClassifyProductRequest(_message.Message):
    __slots__ = ("texts",)
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ...) -> None: ...

class ClassifyProductResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ProductClassification]
    def __init__(self, results: _Optional[_Iterable[_Union[ProductClassification, _Mapping]]] = ...) -> None: ...

class ProductClassification(_message.Message):
    __slots__ = ("departments", "aisles")
    DEPARTMENTS_FIELD_NUMBER: _ClassVar[int]
    AISLES_FIELD_NUMBER: _ClassVar[int]
    departments: _containers.RepeatedCompositeFieldContainer[Label]
    aisles: _containers.RepeatedCompositeFieldContainer[Label]
    def __init__(self, departments: _Optional[_Iterable[_Union[Label, _Mapping]]] = ..., aisles: _Optional[_Iterable[_Union[Label, _Mapping]]] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("label", "probability")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    probability: float
    def __init__(self, label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class AnalyzeReviewsRequest(_message.Message):
    __slots__ = ("texts",)
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ...) -> None: ...

class AnalyzeReviewsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ReviewSentiment]
    def __init__(self, results: _Optional[_Iterable[_Union[ReviewSentiment, _Mapping]]] = ...) -> None: ...

class ReviewSentiment(_message.Message):
    __slots__ = ("label", "probability")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    probability: float
    def __init__(self, label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class TrackEventRequest(_message.Message):
    __slots__ = ("user_id", "item_id", "type")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    type: EventType
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., type: _Optional[_Union[EventType, str]] = ...) -> None: ...

class TrackEventResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
