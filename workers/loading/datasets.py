"""Adapters from the datasets in ../shared/data (see its README) to standard records."""

from __future__ import annotations

import html
from collections.abc import Collection, Iterator
from datetime import datetime, timedelta, timezone

from workers.loading import fields, standard
from workers.loading.brands import BrandDetector
from workers.loading.categories import CategorySplitter
from workers.loading.records import Event, Item, Parsed, Review
from workers.loading.report import LoadError, Rejected, RowError
from workers.loading.rows import RowFile


def homedepot(file: RowFile) -> Iterator[Parsed]:
    """products.csv (product_uid, product_title) -> items with brands detected from the titles.

    Titles carry HTML entities ("Steves &amp; Sons", "Baker&#39;s Rack": 1,319 of them); they
    are decoded so search sees the words, not "amp".
    """
    rows: list[tuple[int, str, str]] = []
    for row in file.csv_rows(("product_uid", "product_title")):
        if isinstance(row, RowError):
            yield row
            continue
        line, values = row
        try:
            uid = fields.identifier(values, "product_uid")
            title = html.unescape(fields.required_text(values, "product_title"))
            fields.check_text(title, "product_title")
        except Rejected as exc:
            yield file.error(line, str(exc))
            continue
        rows.append((line, uid, title))
    # Brands need the whole catalog's statistics, hence two passes.
    brands = BrandDetector(title for _, _, title in rows)
    for line, uid, title in rows:
        yield Item(line=line, external_id=uid, title=title, brand=brands.brand(title))


# Every Industrial & Scientific category string starts with its root (4,251 of 4,385 items;
# the other 134 have an empty category).
SCIENTIFIC_ROOT = "Industrial & Scientific"


def parse_scientific_text(text: str) -> tuple[str, str, str]:
    """(title, category words, brand) of a UniSRec item text "title. category words. brand. ".

    Titles and brands may contain ". " ("Mr. Heater", "C. B. Gitty"); category words never do
    (measured on all 4,385 items), so the category is found by its root, or as the empty
    segment ". . " when it is missing.
    """
    body = text.removesuffix(". ")
    marker = ". " + SCIENTIFIC_ROOT
    at = body.find(marker)
    if at >= 0:
        title = body[:at]
        category, _, brand = body[at + 2 :].partition(". ")
    else:
        at = body.find(". . ")
        if at < 0:
            raise Rejected(f"text is not 'title. category. brand. ': {text[:80]!r}")
        title, category, brand = body[:at], "", body[at + 4 :]
    if brand == ".":
        brand = ""  # an empty brand keeps its period: "title. category. . "
    return title.strip(), category.strip(), brand.strip()


def scientific_items(file: RowFile) -> Iterator[Parsed]:
    """items.csv (item_idx, asin, text) -> items; the category path is recovered from its words."""
    rows: list[tuple[int, str, str, list[str] | None, str]] = []
    for row in file.csv_rows(("asin", "text")):
        if isinstance(row, RowError):
            yield row
            continue
        line, values = row
        try:
            asin = fields.identifier(values, "asin")
            title, category, brand = parse_scientific_text(fields.required_text(values, "text"))
            if not title:
                raise Rejected("the title part of text is empty")
        except Rejected as exc:
            yield file.error(line, str(exc))
            continue
        words = category[len(SCIENTIFIC_ROOT) :].split() if category else None
        rows.append((line, asin, title, words, brand))
    splitter = CategorySplitter(words for _, _, _, words, _ in rows if words)
    for line, asin, title, words, brand in rows:
        path = () if words is None else (SCIENTIFIC_ROOT, *splitter.split(words))
        yield Item(line=line, external_id=asin, title=title, brand=brand or None, category_path=path)


# The interactions have an order (position) but no time. Each user's last interaction in the file
# is placed at this instant and every earlier position one day before the next, so order is kept
# and time-decayed profiles weigh a history as recent. The Amazon 2018 reviews end in October 2018.
SCIENTIFIC_ANCHOR = datetime(2018, 10, 1, tzinfo=timezone.utc)
SCIENTIFIC_SPLITS = ("train", "valid")


def scientific_interactions(
    file: RowFile, splits: Collection[str] | str | None = None, anchor: datetime | str = SCIENTIFIC_ANCHOR
) -> Iterator[Parsed]:
    """interactions.csv -> purchase events of users (reviewer_id) on items (asin).

    ``splits`` keeps only rows whose loo_split is listed ("train,valid" or a list; default all).
    A row's timestamp is ``anchor - (last position of its user - position) days``, the last
    position taken over the whole file whatever the filter, so loading train first and valid
    later agrees. ``anchor`` is a datetime or ISO-8601 text (without a zone: UTC).
    """
    if isinstance(splits, str):
        splits = [s.strip() for s in splits.split(",") if s.strip()]
    if splits is not None and not splits:
        raise LoadError("splits is empty: name at least one loo_split (train, valid) or leave it out")
    if isinstance(anchor, str):
        try:
            anchor = datetime.fromisoformat(anchor.strip())
        except ValueError:
            raise LoadError(f"anchor {anchor!r} is not an ISO-8601 date or time") from None
    if anchor.tzinfo is None:
        anchor = anchor.replace(tzinfo=timezone.utc)
    rows: list[tuple[int, str, int, str, str]] = []
    last: dict[str, int] = {}
    seen: dict[tuple[str, int], int] = {}
    for row in file.csv_rows(("reviewer_id", "position", "asin", "loo_split")):
        if isinstance(row, RowError):
            yield row
            continue
        line, values = row
        try:
            user = fields.identifier(values, "reviewer_id")
            asin = fields.identifier(values, "asin")
            split = fields.required_text(values, "loo_split")
            position = _position(values["position"])
        except Rejected as exc:
            yield file.error(line, str(exc))
            continue
        first = seen.setdefault((user, position), line)
        if first != line:
            yield file.error(line, f"user {user!r} has position {position} already on line {first}")
            continue
        last[user] = max(position, last.get(user, position))
        rows.append((line, user, position, asin, split))
    present = {split for *_, split in rows}
    if splits is not None:
        unknown = sorted(set(splits) - present)
        if unknown:
            raise LoadError(f"{file.label}: no rows in splits {unknown}; the file has {sorted(present)}")
    for line, user, position, asin, split in rows:
        if splits is not None and split not in splits:
            file.skipped += 1
            continue
        occurred_at = anchor - timedelta(days=last[user] - position)
        yield Event(line, user, asin, "purchase", occurred_at, f"scientific:{user}:{position}")


def _position(value: str) -> int:
    try:
        position = int(value.strip())
    except ValueError:
        raise Rejected(f"position {value!r} is not an integer") from None
    if position < 0:
        raise Rejected(f"position {value!r} is negative")
    return position


# Instacart's placeholders for "no department": the README treats them as unlabelled.
INSTACART_UNLABELLED = frozenset({"missing", "other"})


def instacart(file: RowFile) -> Iterator[Parsed]:
    """products_train.csv -> items with category [department, aisle]."""
    for row in file.csv_rows(("product_id", "product_name", "aisle", "department")):
        if isinstance(row, RowError):
            yield row
            continue
        line, values = row
        try:
            department = (fields.text(values, "department") or "").strip()
            aisle = (fields.text(values, "aisle") or "").strip()
            if department in INSTACART_UNLABELLED or not department:
                path: tuple[str, ...] = ()
            else:
                path = (department, aisle) if aisle else (department,)
            yield Item(
                line=line,
                external_id=fields.identifier(values, "product_id"),
                title=fields.required_text(values, "product_name"),
                category_path=path,
            )
        except Rejected as exc:
            yield file.error(line, str(exc))


def sentiment(file: RowFile) -> Iterator[Parsed]:
    """reviews_train.csv -> an item per asin (title product_name, category [domain]) and its
    reviews (rating, title, review_text; the label column is ignored: the model predicts it)."""
    items: set[str] = set()
    for row in file.csv_rows(("domain", "asin", "product_name", "review_text")):
        if isinstance(row, RowError):
            yield row
            continue
        line, values = row
        try:
            asin = fields.identifier(values, "asin")
            if asin not in items:
                domain = (fields.text(values, "domain") or "").strip()
                item = Item(
                    line=line,
                    external_id=asin,
                    title=fields.required_text(values, "product_name"),
                    category_path=(domain,) if domain else (),
                )
            title = fields.text(values, "title") or ""
            body = fields.required_text(values, "review_text")
            review = Review(
                line=line,
                external_id="derived:" + standard.derived_key(asin, title, body),
                item_id=asin,
                body=body,
                rating=fields.rating(values, "rating"),
                title=title,
            )
        except Rejected as exc:
            yield file.error(line, str(exc))
            continue
        if asin not in items:
            items.add(asin)
            yield item
        yield review
