"""Clients for the served ensembles: raw text in, numpy out. Sync for workers, async for the gateway.

Both speak only the public interfaces of core.model_interfaces, send at most
``REQUEST_TEXTS`` texts per request (the repository's limit) and turn Triton's errors into
:class:`TritonUnavailable` (retry later) or :class:`TritonInputError` (bad input, don't retry).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from core.model_interfaces import (
    ANALYZE_SENTIMENT,
    CLASSIFY_PRODUCT,
    EMBED_TEXT,
    RANK,
    WEIGHTS_FINGERPRINT,
    Endpoint,
)

# The repository's ensembles accept 128 texts per request (export.spec.REQUEST_MAX_BATCH).
REQUEST_TEXTS = 128
# Requests one call keeps in flight: enough for Triton's dynamic batcher to merge two of them
# and sort their rows by length together.
PARALLEL_REQUESTS = 4

_UNAVAILABLE = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED"}


# Triton 2.51's gRPC front end can crash (SIGSEGV in pthread_mutex_lock) when clients cancel
# in-flight inferences under load (triton-inference-server/server#7368; seen here with 16
# concurrent Recommend calls on 1 s deadlines, bench/gateway.py). So the gateway never cancels
# a call: it stops waiting when its budget is spent and lets the call end in the background,
# while the server-side timeout (the REJECT queue policy of the bulk models) drops requests that
# waited too long in Triton's queue; the per-call models go without one (export/spec.py,
# ModelSpec.expire_queued) and finish an abandoned call in milliseconds. An abandoned call is
# cut by the client only this long after its budget.
ABANDONED_CALL_S = 5.0
# Below this budget a call is not sent at all: no model answers that fast here (query
# embedding ~8 ms at c=1), so it would only add a request Triton must queue and reject.
MIN_CALL_S = 0.005


# A model's config is answered from Triton's memory in about a millisecond; the refresh tick
# that asks for it should not wait an inference's budget on a server that hangs.
CONFIG_READ_S = 5.0


def _server_timeout_us(seconds: float) -> int:
    return max(1, int(seconds * 1_000_000))


class TritonError(RuntimeError):
    pass


class TritonUnavailable(TritonError):
    """Triton is down, loading, overloaded or too slow: worth retrying later."""


class TritonInputError(TritonError):
    """Triton rejected the input (e.g. an empty text): retrying will not help."""


def _classify(exc: InferenceServerException) -> TritonError:
    status = str(exc.status() or "")
    message = exc.message() or str(exc)
    if status in _UNAVAILABLE or "failed to connect" in message or "unavailable" in message.lower():
        return TritonUnavailable(f"Triton unavailable: {message}")
    if status == "StatusCode.INVALID_ARGUMENT":
        return TritonInputError(message)
    return TritonError(f"Triton error {status}: {message}")


def _text_input(texts: list[str]) -> grpcclient.InferInput:
    arr = np.array([[t.encode("utf-8")] for t in texts], dtype=object)
    tensor = grpcclient.InferInput("text", list(arr.shape), "BYTES")
    tensor.set_data_from_numpy(arr)
    return tensor


def _chunks(items: list, size: int = REQUEST_TEXTS) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass(frozen=True)
class Classification:
    department: list[str]
    department_prob: list[float]
    aisle: list[str]
    aisle_prob: list[float]


def _decode(arr: np.ndarray) -> list:
    return [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in arr]


def _classifications(result) -> list[Classification]:
    out = []
    dep, dep_p = result.as_numpy("department"), result.as_numpy("department_prob")
    ais, ais_p = result.as_numpy("aisle"), result.as_numpy("aisle_prob")
    for i in range(len(dep)):
        out.append(Classification(_decode(dep[i]), dep_p[i].tolist(), _decode(ais[i]), ais_p[i].tolist()))
    return out


def _sentiments(result) -> list[tuple[str, float]]:
    labels = _decode(result.as_numpy("label").reshape(-1))
    probs = result.as_numpy("probability").reshape(-1).tolist()
    return list(zip(labels, probs))


class TritonClient:
    """Blocking client for workers and the CLI (thread-safe; parallel chunks on a small pool)."""

    def __init__(self, url: str, timeout_s: float = 30.0):
        self.url = url
        self.timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(url)
        self._pool = ThreadPoolExecutor(PARALLEL_REQUESTS, thread_name_prefix="triton")

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._client.close()

    def ready(self, model: str | None = None) -> bool:
        try:
            return self._client.is_model_ready(model) if model else self._client.is_server_ready()
        except InferenceServerException:
            return False

    def served_identity(self, endpoint: Endpoint) -> str:
        """What the ensemble's answers are made from, per its config's WEIGHTS_FINGERPRINT
        parameter ("" for a repository exported before it existed)."""
        try:
            config = self._client.get_model_config(endpoint.model, client_timeout=CONFIG_READ_S).config
        except InferenceServerException as exc:
            raise _classify(exc) from None
        if WEIGHTS_FINGERPRINT not in config.parameters:
            return ""
        return config.parameters[WEIGHTS_FINGERPRINT].string_value

    def _infer(self, endpoint: Endpoint, inputs, model: str | None = None):
        try:
            return self._client.infer(
                model or endpoint.model,
                inputs,
                outputs=[grpcclient.InferRequestedOutput(o) for o in endpoint.outputs],
                client_timeout=self.timeout_s,
                # The same bound on the server: Triton drops the request from its queue once the
                # client has given up on it (export/configs.py).
                timeout=_server_timeout_us(self.timeout_s),
            )
        except InferenceServerException as exc:
            raise _classify(exc) from None

    def _map(self, endpoint: Endpoint, texts: list[str], model: str | None = None) -> list:
        chunks = _chunks(texts)
        return list(self._pool.map(lambda c: self._infer(endpoint, [_text_input(c)], model), chunks))

    def embed(self, texts: list[str], model: str = EMBED_TEXT.model) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate([r.as_numpy("embedding") for r in self._map(EMBED_TEXT, texts, model)])

    def classify(self, texts: list[str]) -> list[Classification]:
        return [c for r in self._map(CLASSIFY_PRODUCT, texts) for c in _classifications(r)]

    def sentiment(self, texts: list[str]) -> list[tuple[str, float]]:
        return [s for r in self._map(ANALYZE_SENTIMENT, texts) for s in _sentiments(r)]


class AsyncTritonClient:
    """grpc.aio client for the gateway; every call carries a timeout."""

    def __init__(self, url: str, timeout_s: float = 30.0):
        self.url = url
        self.timeout_s = timeout_s
        self._client = aioclient.InferenceServerClient(url)

    async def close(self) -> None:
        await self._client.close()

    async def ready(self, timeout_s: float = 5.0) -> bool:
        """Whether Triton answers ready within ``timeout_s`` (a hung server is not ready)."""
        try:
            return await asyncio.wait_for(self._client.is_server_ready(), timeout_s)
        except (InferenceServerException, grpc.RpcError, asyncio.TimeoutError):
            return False

    async def model_ready(self, name: str, timeout_s: float = 5.0) -> bool | None:
        """Whether Triton serves ``name``; None when it did not answer within ``timeout_s``."""
        try:
            return await asyncio.wait_for(self._client.is_model_ready(name), timeout_s)
        except asyncio.TimeoutError:
            return None
        except (InferenceServerException, grpc.RpcError):
            return False

    async def _infer(self, endpoint: Endpoint, inputs, timeout_s: float | None, model: str | None = None):
        """One inference within ``timeout_s`` (asyncio.TimeoutError past it), never cancelled
        on Triton (see ABANDONED_CALL_S)."""
        budget = timeout_s or self.timeout_s
        if budget < MIN_CALL_S:
            raise asyncio.TimeoutError(f"{budget * 1000:.1f} ms left: not enough for a Triton call")
        call = asyncio.ensure_future(self._client.infer(
            model or endpoint.model,
            inputs,
            outputs=[aioclient.InferRequestedOutput(o) for o in endpoint.outputs],
            client_timeout=budget + ABANDONED_CALL_S,
            timeout=_server_timeout_us(budget),
        ))
        try:
            return await asyncio.wait_for(asyncio.shield(call), budget)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            # Past the budget, or the caller gave up (its own client went away): either way the
            # call runs to its end on Triton.
            call.add_done_callback(_drop_result)
            raise
        except InferenceServerException as exc:
            raise _classify(exc) from None

    async def _map(self, endpoint: Endpoint, texts: list[str], timeout_s: float | None, model: str | None = None):
        return await asyncio.gather(
            *(self._infer(endpoint, [_text_input(c)], timeout_s, model) for c in _chunks(texts))
        )

    async def embed(self, texts: list[str], timeout_s: float | None = None, model: str = EMBED_TEXT.model) -> np.ndarray:
        results = await self._map(EMBED_TEXT, texts, timeout_s, model)
        return np.concatenate([r.as_numpy("embedding") for r in results])

    async def classify(
        self, texts: list[str], timeout_s: float | None = None, model: str = CLASSIFY_PRODUCT.model
    ) -> list[Classification]:
        return [c for r in await self._map(CLASSIFY_PRODUCT, texts, timeout_s, model) for c in _classifications(r)]

    async def sentiment(
        self, texts: list[str], timeout_s: float | None = None, model: str = ANALYZE_SENTIMENT.model
    ) -> list[tuple[str, float]]:
        return [s for r in await self._map(ANALYZE_SENTIMENT, texts, timeout_s, model) for s in _sentiments(r)]

    async def rank(self, features: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        tensor = aioclient.InferInput("features", list(features.shape), "FP32")
        tensor.set_data_from_numpy(features.astype(np.float32, copy=False))
        result = await self._infer(RANK, [tensor], timeout_s)
        return result.as_numpy("score").reshape(-1)


def _drop_result(call: asyncio.Future) -> None:
    """Collect an abandoned call's outcome, so asyncio does not report it as never retrieved."""
    if not call.cancelled():
        call.exception()
