"""In-process LRU+TTL cache of query embeddings: head queries repeat, and an embedding costs a
Triton round trip (~5 ms on 2 cores) while a hit costs microseconds."""

from __future__ import annotations

import threading

import numpy as np
from cachetools import TTLCache

# 10,000 queries x 384 floats = 15 MB. Head queries recur within minutes; an hour bounds how
# long a query keeps an embedding of a model version that was since replaced.
CAPACITY = 10_000
TTL_S = 3600.0


class QueryCache:
    def __init__(self, capacity: int = CAPACITY, ttl_s: float = TTL_S):
        self._cache: TTLCache = TTLCache(maxsize=capacity, ttl=ttl_s)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(model_version: str, query: str) -> tuple[str, str]:
        return model_version, " ".join(query.lower().split())

    def get(self, model_version: str, query: str) -> np.ndarray | None:
        with self._lock:
            value = self._cache.get(self.key(model_version, query))
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
            return value

    def put(self, model_version: str, query: str, vector: np.ndarray) -> None:
        with self._lock:
            self._cache[self.key(model_version, query)] = vector

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
