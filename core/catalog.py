"""What an item is to the models: the text the encoder sees and its content hash."""

from __future__ import annotations

import hashlib


def embedding_text(title: str, description: str = "") -> str:
    """The text embedded for an item: its title, then its description when it has one."""
    title = " ".join(title.split())
    description = " ".join(description.split())
    return f"{title}. {description}" if description else title


def content_hash(title: str, description: str = "") -> bytes:
    return hashlib.sha256(embedding_text(title, description).encode("utf-8")).digest()


def category_key(path: list[str] | tuple[str, ...]) -> str:
    """A category node's key: its full path, so equal leaf names under different parents differ."""
    return " > ".join(path)


def review_text(title: str | None, body: str) -> str:
    """The one string the sentiment model sees for a review: title as a first sentence, then
    the body, whitespace collapsed.

    The title goes first because truncation cuts the end: a short title is often the densest
    statement of polarity ("Waste of money").
    """
    title, body = " ".join((title or "").split()), " ".join(body.split())
    if title and title[-1] not in ".!?":
        title += "."
    return f"{title} {body}".strip()
