"""Search page tokens: opaque to clients, bound to the query they continue.

A token is the base64url (unpadded) form of 29 bytes::

    version (1) | offset (uint32, big-endian) | request digest (8) | tag (16)

The request digest is a hash of what decides the result list (the query, the filters, the
user), so a token presented with another query, other filters or another user is rejected
instead of silently paging through a different list. The tag is an HMAC-SHA256 (truncated) over
the rest with the server's key: a hand-edited offset or a token from elsewhere fails it.
Tokens carry no secret and no expiry (an offset into a ranking is not sensitive); every
gateway replica with the same key accepts every other's tokens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import struct

from gateway.model import MAX_RESULTS, Filters

VERSION = 1
_LAYOUT = struct.Struct(">BI8s")
_TAG_BYTES = 16
TOKEN_BYTES = _LAYOUT.size + _TAG_BYTES
# Longest valid token text (base64 of TOKEN_BYTES without padding); longer input is rejected
# before any decoding work.
MAX_TOKEN_CHARS = (TOKEN_BYTES * 4 + 2) // 3
# The default key. Tokens only need integrity (not secrecy), so a fixed key shared by replicas
# is enough; a deployment may pass its own to make tokens unforgeable from outside.
DEFAULT_KEY = b"aisle.v1.Search/page-token"


class InvalidToken(ValueError):
    """The token is malformed, tampered with, or belongs to another request."""


def request_digest(query: str, filters: Filters, user_id: str | None) -> bytes:
    """8 bytes identifying the result list: same query, filters and user -> same digest."""
    canonical = json.dumps(
        {
            "q": query,
            "u": user_id or "",
            "c": sorted({c.lower() for c in filters.categories}),
            "b": sorted({b.lower() for b in filters.brands}),
            "min": filters.min_price,
            "max": filters.max_price,
        },
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).digest()[:8]


class PageTokens:
    def __init__(self, key: bytes = DEFAULT_KEY):
        if not key:
            raise ValueError("the page token key is empty")
        self._key = key

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:_TAG_BYTES]

    def encode(self, offset: int, digest: bytes) -> str:
        if not 0 < offset < MAX_RESULTS:
            raise ValueError(f"offset {offset} is outside (0, {MAX_RESULTS})")
        body = _LAYOUT.pack(VERSION, offset, digest)
        return base64.urlsafe_b64encode(body + self._tag(body)).rstrip(b"=").decode("ascii")

    def decode(self, token: str, digest: bytes) -> int:
        """The offset the token continues at, for the request with ``digest``."""
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("page_token is malformed")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise InvalidToken("page_token is malformed") from None
        if len(raw) != TOKEN_BYTES:
            raise InvalidToken("page_token is malformed")
        body, tag = raw[: _LAYOUT.size], raw[_LAYOUT.size :]
        if not hmac.compare_digest(tag, self._tag(body)):
            raise InvalidToken("page_token is malformed or was altered")
        version, offset, token_digest = _LAYOUT.unpack(body)
        if version != VERSION:
            raise InvalidToken(f"page_token version {version} is not supported")
        if not hmac.compare_digest(token_digest, digest):
            raise InvalidToken("page_token belongs to another query, filters or user: start again without it")
        if not 0 < offset < MAX_RESULTS:
            raise InvalidToken("page_token is malformed")
        return offset
