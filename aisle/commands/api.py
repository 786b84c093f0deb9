"""`aisle search`, `aisle recommend`, `aisle similar`, `aisle track`: call the running gateway."""

from __future__ import annotations

import json

import grpc
import typer
from rich.console import Console
from rich.table import Table

from aisle.errors import fail


def _client(api_key: str | None):
    from aisle.stack import stack_settings
    from core.settings import get_settings
    from gateway.client import AisleClient

    settings = stack_settings(get_settings())
    if not settings.gateway_address:
        fail("no gateway: set AISLE_GATEWAY_ADDRESS or start the local stack with `aisle up`")
    key = api_key or (settings.api_keys[0] if settings.api_keys else None)
    return AisleClient(settings.gateway_address, api_key=key, timeout_s=10.0)


def _call(fn):
    try:
        return fn()
    except grpc.RpcError as exc:
        fail(f"{exc.code().name}: {exc.details()}")


def _show(response, as_json: bool, explain: bool) -> None:
    if as_json:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps(MessageToDict(response, preserving_proto_field_name=True)))
        return
    console = Console()
    if getattr(response, "degraded", False):
        console.print(f"[yellow]degraded:[/yellow] {response.degraded_reason}", highlight=False)
    for exp in getattr(response, "expansions", []):
        console.print(f"expanded {exp.matched!r} → {', '.join(exp.labels)}", highlight=False)
    table = Table("#", "id", "title", "brand", "category", "score")
    for n, item in enumerate(response.items, start=1):
        table.add_row(str(n), item.id, item.title[:70], item.brand, " > ".join(item.category_path)[:40], f"{item.score:.3f}")
    console.print(table)
    if explain and response.items:
        first = response.items[0].explanation
        retrievers = ", ".join(f"{r.name} #{r.rank}" for r in first.retrievers)
        console.print(f"#1 found by: {retrievers}; ranker score {first.ranker_score:.3f}", highlight=False)
        if response.stage_ms:
            console.print("stages (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in response.stage_ms.items()), highlight=False)


def search(
    query: str,
    user: str = typer.Option("", help="Personalise for this user id."),
    page_size: int = typer.Option(10, help="Results per page (1-100)."),
    category: list[str] = typer.Option([], help="Only items in this category (any level; repeatable)."),
    brand: list[str] = typer.Option([], help="Only items of this brand (repeatable)."),
    explain: bool = typer.Option(False, help="Show why each item was found."),
    as_json: bool = typer.Option(False, "--json"),
    api_key: str = typer.Option(None, envvar="AISLE_API_KEY", help="API key (default: the first of AISLE_API_KEYS)."),
) -> None:
    """Search the catalog through the gateway."""
    with _client(api_key) as client:
        response = _call(lambda: client.search(query, user_id=user, page_size=page_size, categories=category,
                                               brands=brand, explain=explain))
    _show(response, as_json, explain)


def recommend(
    user: str,
    k: int = typer.Option(10, help="How many (1-100)."),
    context: list[str] = typer.Option([], help="Item ids the user is looking at (repeatable)."),
    explain: bool = typer.Option(False),
    as_json: bool = typer.Option(False, "--json"),
    api_key: str = typer.Option(None, envvar="AISLE_API_KEY"),
) -> None:
    """Recommendations for a user through the gateway."""
    with _client(api_key) as client:
        response = _call(lambda: client.recommend(user, context_item_ids=context, k=k, explain=explain))
    _show(response, as_json, explain)


def similar(
    item: str,
    k: int = typer.Option(10, help="How many (1-100)."),
    as_json: bool = typer.Option(False, "--json"),
    api_key: str = typer.Option(None, envvar="AISLE_API_KEY"),
) -> None:
    """Items similar to ITEM through the gateway."""
    with _client(api_key) as client:
        response = _call(lambda: client.similar_items(item, k=k))
    _show(response, as_json, False)


def track(
    user: str,
    item: str,
    event: str = typer.Argument(..., help="view, click, cart, purchase or review."),
    api_key: str = typer.Option(None, envvar="AISLE_API_KEY"),
) -> None:
    """Record an event (the user's next recommendations reflect it at once)."""
    with _client(api_key) as client:
        try:
            _call(lambda: client.track_event(user, item, event))
        except ValueError as exc:
            fail(str(exc))
    print(f"recorded {event} of {item} by {user}")
