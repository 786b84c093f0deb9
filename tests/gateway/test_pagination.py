"""Page tokens: opaque, bound to the query, filters and user they continue, tamper-evident."""

from __future__ import annotations

import base64

import pytest

from gateway.model import MAX_RESULTS, Filters
from gateway.pagination import InvalidToken, PageTokens, request_digest

DRILLS = request_digest("cordless drill", Filters(brands=("DEWALT",)), "u1")


def test_a_token_gives_back_its_offset_for_the_same_request():
    tokens = PageTokens()
    token = tokens.encode(20, DRILLS)
    # base64url without padding: safe in URLs and JSON
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    # the same request, with its filters spelt differently (order, case), continues at 20
    same = request_digest("cordless drill", Filters(brands=("dewalt",)), "u1")
    assert tokens.decode(token, same) == 20


@pytest.mark.parametrize(
    "other",
    [
        request_digest("hammer", Filters(brands=("DEWALT",)), "u1"),
        request_digest("cordless drill", Filters(), "u1"),
        request_digest("cordless drill", Filters(brands=("DEWALT",), max_price=100.0), "u1"),
        request_digest("cordless drill", Filters(brands=("DEWALT",)), "u2"),
        request_digest("cordless drill", Filters(brands=("DEWALT",)), None),
    ],
)
def test_a_token_of_another_request_is_refused(other):
    token = PageTokens().encode(20, DRILLS)
    with pytest.raises(InvalidToken, match="another query"):
        PageTokens().decode(token, other)


def test_an_altered_token_is_refused():
    tokens = PageTokens()
    raw = bytearray(base64.urlsafe_b64decode(tokens.encode(20, DRILLS) + "=="))
    # Given the offset bytes changed to 400 (a client skipping ahead by editing the token)
    raw[1:5] = (400).to_bytes(4, "big")
    edited = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(InvalidToken, match="altered"):
        tokens.decode(edited, DRILLS)
    # and a token signed with another key
    with pytest.raises(InvalidToken):
        tokens.decode(PageTokens(b"another key").encode(20, DRILLS), DRILLS)


@pytest.mark.parametrize("garbage", ["x", "!!!!", "AQAAAAU", "A" * 39, "A" * 5000, "AQAAAAWGDWk0SF48CYk5sCSsHFt4-Z2shtLWzJMx", " "])
def test_malformed_tokens_are_refused(garbage):
    with pytest.raises(InvalidToken):
        PageTokens().decode(garbage, DRILLS)


def test_only_offsets_inside_the_pool_are_issued():
    with pytest.raises(ValueError):
        PageTokens().encode(0, DRILLS)
    with pytest.raises(ValueError):
        PageTokens().encode(MAX_RESULTS, DRILLS)
    assert PageTokens().decode(PageTokens().encode(MAX_RESULTS - 1, DRILLS), DRILLS) == MAX_RESULTS - 1
