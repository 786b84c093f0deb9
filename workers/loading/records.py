"""Standard records: what every reader and dataset adapter produces and the store writes.

A record is the full state of its row: a field left out (brand, price, ...) is stored as absent,
so loading a file again makes the database match it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from workers.loading.report import RowError


@dataclass(frozen=True, slots=True)
class Item:
    line: int
    external_id: str
    title: str
    description: str = ""
    brand: str | None = None
    category_path: tuple[str, ...] = ()
    price: Decimal | None = None
    # Canonical JSON text of a JSON object (validated, no NaN, no NUL).
    attributes: str = "{}"


@dataclass(frozen=True, slots=True)
class Event:
    line: int
    user_id: str
    item_id: str
    type: str
    occurred_at: datetime
    source_key: str


@dataclass(frozen=True, slots=True)
class Review:
    line: int
    external_id: str
    item_id: str
    body: str
    user_id: str | None = None
    rating: float | None = None
    title: str = ""
    # None: now() for a new review, unchanged for a known one.
    created_at: datetime | None = None


Record = Item | Event | Review
# What readers and adapters yield: a record, or the reason a row was skipped.
Parsed = Item | Event | Review | RowError
