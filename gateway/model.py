"""The gateway's domain types: what a Search/Recommend asks and answers, independent of gRPC.

The servicer (gateway/service.py) turns protobuf requests into these, calls the pipelines
(gateway/search.py, gateway/recommend.py, gateway/catalog.py), and turns their results back.
Validation of limits happens in the servicer; pipelines may assume valid input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Documented request limits (the servicer answers INVALID_ARGUMENT beyond them).
MAX_QUERY_CHARS = 512
MAX_PAGE_SIZE = 100
MAX_K = 100
MAX_TEXTS = 128
MAX_TEXT_CHARS = 32_768
MAX_CONTEXT_ITEMS = 50
MAX_FILTER_VALUES = 50
MAX_ID_CHARS = 256
# How deep pagination goes: the ranked candidate pool of one query.
MAX_RESULTS = 500


@dataclass(frozen=True)
class Filters:
    # Category filter values match any level of an item's category path (case-insensitive).
    categories: tuple[str, ...] = ()
    brands: tuple[str, ...] = ()
    min_price: float | None = None
    max_price: float | None = None

    def empty(self) -> bool:
        return not (self.categories or self.brands or self.min_price is not None or self.max_price is not None)


@dataclass(frozen=True)
class SearchQuery:
    query: str
    user_id: str | None = None
    filters: Filters = Filters()
    offset: int = 0
    page_size: int = 10
    explain: bool = False
    # Seconds left until the caller's deadline (None: the server's default budget).
    time_left_s: float | None = None


@dataclass(frozen=True)
class RecommendQuery:
    user_id: str
    context_item_ids: tuple[str, ...] = ()
    k: int = 10
    filters: Filters = Filters()
    explain: bool = False
    time_left_s: float | None = None


@dataclass(frozen=True)
class Item:
    id: str
    title: str
    brand: str | None
    category_path: tuple[str, ...]
    price: float | None


@dataclass
class Explanation:
    # retriever name -> (1-based rank, retriever score)
    retrievers: dict[str, tuple[int, float]] = field(default_factory=dict)
    features: dict[str, float] = field(default_factory=dict)
    ranker_score: float | None = None
    # Knowledge-graph path that brought the item in, e.g. ["query:drill", "category:Power Drills"].
    graph_path: list[str] = field(default_factory=list)


@dataclass
class Hit:
    item: Item
    score: float
    explanation: Explanation | None = None


@dataclass
class Ranked:
    """A page of results and how it was made."""

    hits: list[Hit]
    # Results beyond this page exist (the servicer issues a next page token).
    has_more: bool = False
    degraded: bool = False
    degraded_reason: str = ""
    # Model versions used: {"embedding": ..., "ranker": ...}.
    model_versions: dict[str, str] = field(default_factory=dict)
    # Milliseconds per stage (always measured; returned with explain).
    stage_ms: dict[str, float] = field(default_factory=dict)
    # Recommend: None when the call could not use the recommendation cache, else whether it
    # was served from it.
    cache_hit: bool | None = None
    # Query expansions from the knowledge graph, e.g. {"drill": ["Power Drills"]}.
    expansions: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Classification:
    department: list[tuple[str, float]]
    aisle: list[tuple[str, float]]


@dataclass(frozen=True)
class Sentiment:
    label: str
    probability: float


class NotFound(LookupError):
    """An id the caller named does not exist (NOT_FOUND)."""


class Unavailable(RuntimeError):
    """No answer is possible, not even a degraded one (UNAVAILABLE)."""


class OutOfTime(RuntimeError):
    """A stage no answer can do without ran past the call's deadline (DEADLINE_EXCEEDED)."""


class InvalidInput(ValueError):
    """The request is malformed in a way only the pipeline can see (INVALID_ARGUMENT)."""
