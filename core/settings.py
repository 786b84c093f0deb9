"""Typed configuration, read once from ``AISLE_*`` environment variables and validated at start-up.

Every process (CLI, gateway, workers) calls :func:`get_settings` once. A bad value stops the
process with a message naming the variable, never a traceback deep inside a request.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, FilePath, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]

EVENT_TYPES = ("view", "click", "cart", "purchase", "review")


class ConfigurationError(ValueError):
    """The configuration is invalid; the message says which variable and why."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AISLE_", extra="ignore", frozen=True)

    # Where `aisle up` keeps its state file, logs and the embedded Postgres/Redis data.
    run_dir: Path = REPO_ROOT / ".aisle"
    # External services; when unset, `aisle up` starts embedded ones and records their URLs.
    database_url: str | None = None
    redis_url: str | None = None
    triton_url: str | None = Field(None, description="Triton gRPC address host:port")
    gateway_address: str | None = Field(None, description="gateway gRPC address host:port")

    model_repository: Path = REPO_ROOT / "model_repository"
    # Deadline for one Triton call from workers and the gateway (seconds).
    triton_timeout_s: float = Field(30.0, gt=0)

    # Embedding model version that reads and writes use; a new encoder is written beside the old
    # one under a new version and switched by changing this (or `aisle db activate-embedding`).
    embedding_model: str = "all-MiniLM-L6-v2@1"

    # Event weights for profiles and popularity (purchase signals intent far more than a view).
    event_weights: dict[str, float] = {"view": 1.0, "click": 2.0, "cart": 4.0, "purchase": 8.0, "review": 6.0}
    # Half-life of an event's weight in profiles and popularity, in days.
    event_half_life_days: float = Field(30.0, gt=0)

    # Celery: an unacknowledged task of a worker that died is handed out again after this long
    # (seconds). A batch takes ~1 s, so 5 minutes is generous while bounding the loss.
    task_visibility_timeout_s: int = Field(300, gt=0)
    # A run with pending work and no progress (nor dispatch) for this long is dispatched again:
    # its remaining tasks were lost with a dead worker or broker.
    redispatch_after_s: int = Field(600, gt=0)
    # Items per embedding task: 256 lets Triton sort a whole batch by length and still keeps a
    # task around a second, so a killed worker loses little.
    embedding_batch: int = Field(256, gt=0, le=4096)
    # Seconds between beat ticks of the Triton-bound jobs and of the Postgres-only ones.
    tick_interval_s: float = Field(10.0, gt=0)
    # Batches of one job queued at a time; each finished batch tops its job up again. The Triton
    # jobs share one queue: when a tick queued a job's whole backlog, the 231 enrichment batches
    # of the 59k-item catalog (10 s each) stood in front of every embedding batch for 20 minutes
    # (bench/soak.py). 8 keeps each of 2 worker processes (prefetch 1) a batch in hand and
    # several behind it; raise it with the number of worker processes.
    queued_batches_per_job: int = Field(8, ge=1)
    graph_interval_s: float = Field(300.0, gt=0)
    # How long a user's cached recommendations serve while the user does nothing (their own
    # events make them stale at once); 0 turns the cache off. An hour: other users' activity
    # and the graph's rebuilds (every graph_interval_s) reach a list within it, and rewarming
    # the Scientific data's 8,442 users takes ~3 min of CPU an hour (~25 ms each).
    recommend_cache_ttl_s: float = Field(3600.0, ge=0, le=30 * 86400, allow_inf_nan=False)
    # Seconds between beat's warm-ups of missing or stale cached recommendations (the workers
    # ask the gateway at gateway_address; without one there is no warm-up).
    recommend_warm_interval_s: float = Field(60.0, gt=0)
    log_format: Literal["text", "json"] = "text"
    # Gateway: Postgres connections per process. A Search runs up to 4 queries at once; 16
    # covered 16 concurrent clients without waiting on the pool (bench/gateway.py).
    db_pool_size: int = Field(16, ge=2)
    # Keep every item's facts and embedding in the gateway's memory (gateway/item_table.py;
    # ~2 KB an item at 384 dimensions, ~115 MB for 59k) instead of reading each call's
    # candidates from Postgres. Off for catalogs too large for the gateway's memory.
    gateway_item_table: bool = True
    # Answer nearest-neighbour queries without filters from an HNSW graph over the item table's
    # embeddings (gateway/vector_index.py; ~100 MB more for 59k items at 384 dimensions, ~7 s
    # of one core to build at each full read) instead of pgvector's index. Needs the item table.
    gateway_vector_index: bool = True

    # Comma-separated API keys for the gateway; empty means no authentication.
    api_keys: Annotated[tuple[str, ...], NoDecode] = ()

    # Gateway limits against abusive clients (docs/api.md, "Limits and status codes").
    # Largest request message: larger ones answer RESOURCE_EXHAUSTED before a byte of them is
    # parsed. A full ClassifyProduct batch of ASCII text is 128 x 32 KiB = 4 MiB; 8 MiB leaves
    # room for multi-byte text. The floor keeps every valid Search, Recommend, SimilarItems and
    # TrackEvent within the limit: the largest, a Recommend with every list full of 4-byte
    # characters, is about 160 KiB.
    max_message_bytes: int = Field(8 * 1024 * 1024, ge=256 * 1024, le=2**31 - 1)
    # Calls in flight on one HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS): more wait in
    # the client until one ends, so a single connection cannot occupy the server with
    # thousands of calls. 100 is HTTP/2's recommended minimum and far beyond what one replica's
    # pipeline runs at once (16 Postgres connections).
    max_concurrent_streams: int = Field(100, ge=1, le=2**31 - 1)
    # Per-client token bucket: calls per second and burst, a client being its API key (or its IP
    # address without keys). 0 turns it off, the default: the benchmarks and the soak measure
    # one client's maximum rate, and deployments usually limit at the ingress; set it where the
    # gateway is reachable by clients it does not trust. Health checks are never limited.
    rate_limit_qps: float = Field(0.0, ge=0, allow_inf_nan=False)
    # Calls a client may make at once after being idle; unset: one second's worth of calls.
    rate_limit_burst: int | None = Field(None, ge=1)

    # TLS on the gateway's port: a PEM certificate (chain) and its private key. With a client
    # CA as well, clients must present a certificate that CA signed (mTLS). Unset: plaintext.
    tls_cert: FilePath | None = None
    tls_key: FilePath | None = Field(None, validate_default=True)
    tls_client_ca: FilePath | None = Field(None, validate_default=True)

    @field_validator("event_weights", mode="before")
    @classmethod
    def _parse_weights(cls, value):
        if isinstance(value, str):
            value = json.loads(value)
        unknown = set(value) - set(EVENT_TYPES)
        if unknown:
            raise ValueError(f"unknown event types {sorted(unknown)}; known: {list(EVENT_TYPES)}")
        if any(float(w) < 0 for w in value.values()):
            raise ValueError("event weights must be >= 0")
        return {t: float(value.get(t, 0.0)) for t in EVENT_TYPES}

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value):
        if isinstance(value, str):
            value = tuple(k.strip() for k in value.split(",") if k.strip())
        return tuple(value)

    @field_validator("tls_cert")
    @classmethod
    def _check_cert(cls, value):
        if value is not None and b"-----BEGIN CERTIFICATE-----" not in value.read_bytes():
            raise ValueError(f"{value} is not a PEM certificate")
        return value

    @field_validator("tls_key")
    @classmethod
    def _check_key(cls, value, info: ValidationInfo):
        if "tls_cert" not in info.data:
            return value  # the certificate failed its own validation, which says why
        if (value is None) != (info.data["tls_cert"] is None):
            raise ValueError("AISLE_TLS_CERT and AISLE_TLS_KEY go together: set both or neither")
        if value is not None and b"PRIVATE KEY-----" not in value.read_bytes():
            raise ValueError(f"{value} is not a PEM private key")
        return value

    @field_validator("tls_client_ca")
    @classmethod
    def _check_client_ca(cls, value, info: ValidationInfo):
        if value is None:
            return value
        if "tls_cert" in info.data and info.data["tls_cert"] is None:
            raise ValueError("client certificates (mTLS) need TLS: set AISLE_TLS_CERT and AISLE_TLS_KEY")
        if b"-----BEGIN CERTIFICATE-----" not in value.read_bytes():
            raise ValueError(f"{value} is not a PEM certificate")
        return value

    @property
    def rate_limit_bucket(self) -> int:
        """The burst a client gets: AISLE_RATE_LIMIT_BURST, else one second's worth of calls."""
        if self.rate_limit_burst is not None:
            return self.rate_limit_burst
        return max(1, math.ceil(self.rate_limit_qps))

    @field_validator("database_url")
    @classmethod
    def _check_db_url(cls, value):
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value):
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// URL")
        return value


def load_settings(**overrides) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"AISLE_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
