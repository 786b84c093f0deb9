"""The standard format (docs/data-format.md): items, events and reviews as CSV or JSONL."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from workers.loading import fields
from workers.loading.records import Event, Item, Parsed, Review
from workers.loading.report import Rejected, RowError
from workers.loading.rows import RowFile, rows

# Columns a CSV header must name (JSONL rows are checked one by one).
REQUIRED = {
    "items": ("external_id", "title"),
    "events": ("user_id", "item_id", "type", "timestamp"),
    "reviews": ("item_id", "text"),
}
# Separates the parts hashed into derived keys, so ("ab", "c") and ("a", "bc") differ.
UNIT_SEPARATOR = "\x1f"
# Hex digits kept from sha256 for derived keys: 128 bits, collision-free at any catalog size.
DERIVED_KEY_HEX = 32


def item(line: int, row: dict[str, Any]) -> Item:
    return Item(
        line=line,
        external_id=fields.identifier(row, "external_id"),
        title=fields.required_text(row, "title"),
        description=fields.text(row, "description") or "",
        brand=fields.text(row, "brand"),
        category_path=fields.category(row, "category"),
        price=fields.price(row, "price"),
        attributes=fields.attributes(row, "attributes"),
    )


def event(line: int, row: dict[str, Any]) -> Event:
    user_id = fields.identifier(row, "user_id")
    item_id = fields.identifier(row, "item_id")
    kind = fields.event_type(row, "type")
    occurred_at = fields.required_timestamp(row, "timestamp")
    source_key = fields.optional_identifier(row, "event_id")
    if source_key is None:
        # The instant in one canonical spelling, so "…Z", "+00:00" and epoch seconds agree.
        source_key = "derived:" + derived_key(user_id, item_id, kind, occurred_at.isoformat())
    return Event(line, user_id, item_id, kind, occurred_at, source_key)


def review(line: int, row: dict[str, Any]) -> Review:
    item_id = fields.identifier(row, "item_id")
    title = fields.text(row, "title") or ""
    body = fields.required_text(row, "text")
    external_id = fields.optional_identifier(row, "review_id")
    if external_id is None:
        external_id = "derived:" + derived_key(item_id, title, body)
    return Review(
        line=line,
        external_id=external_id,
        item_id=item_id,
        body=body,
        user_id=fields.optional_identifier(row, "user_id"),
        rating=fields.rating(row, "rating"),
        title=title,
        created_at=fields.timestamp(row, "created_at"),
    )


PARSERS = {"items": item, "events": event, "reviews": review}


def derived_key(*parts: str) -> str:
    digest = hashlib.sha256(UNIT_SEPARATOR.join(parts).encode("utf-8")).hexdigest()
    return digest[:DERIVED_KEY_HEX]


def read(kind: str, file: RowFile) -> Iterator[Parsed]:
    """Records of a standard ``kind`` file (items, events or reviews)."""
    parse = PARSERS[kind]
    for row in rows(file, REQUIRED[kind]):
        if isinstance(row, RowError):
            yield row
            continue
        line, values = row
        try:
            yield parse(line, values)
        except Rejected as exc:
            yield file.error(line, str(exc))
