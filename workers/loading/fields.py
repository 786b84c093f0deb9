"""Parsers for one field of a row: each returns the clean value or raises ``Rejected`` with a
reason the user can act on. Values come as CSV strings or JSON values; an empty CSV string and a
JSON null both mean "absent"."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from core.settings import EVENT_TYPES
from workers.loading.report import Rejected

# items.price is numeric(12, 2): ten integer digits.
PRICE_LIMIT = Decimal("1e10")
CENT = Decimal("0.01")
# Nesting allowed in attributes. jsonb's own limit is max_stack_depth (thousands of levels); no
# dataset here has nested attributes at all, so 100 only stops pathological input early.
MAX_JSON_DEPTH = 100
# CSV category paths are written "Tools > Power Tools > Drills".
CATEGORY_SEPARATOR = ">"
# Epoch seconds Python's datetime can represent (years 1..9999); Postgres' range is wider.
EPOCH_MIN, EPOCH_MAX = -62_135_596_800, 253_402_300_799


def present(row: dict[str, Any], name: str) -> Any:
    """The value of ``name``, or None when absent, null or an empty string."""
    value = row.get(name)
    if value is None or (isinstance(value, str) and value == ""):
        return None
    return value


def text(row: dict[str, Any], name: str) -> str | None:
    """An optional text field, stored as given (no trimming: spacing and SQL metacharacters are data)."""
    value = present(row, name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Rejected(f"{name} must be a string, not {_json_type(value)}")
    check_text(value, name)
    return value


def required_text(row: dict[str, Any], name: str) -> str:
    value = text(row, name)
    if value is None:
        raise Rejected(f"{name} is required")
    if not value.strip():
        raise Rejected(f"{name} must not be blank")
    return value


def optional_identifier(row: dict[str, Any], name: str) -> str | None:
    """An external id: a string (JSON integers are accepted and written in decimal)."""
    value = present(row, name)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and not value.strip():
        raise Rejected(f"{name} must not be blank")
    return text(row, name)


def identifier(row: dict[str, Any], name: str) -> str:
    value = optional_identifier(row, name)
    if value is None:
        raise Rejected(f"{name} is required")
    return value


def check_text(value: str, name: str) -> None:
    # Postgres text cannot hold NUL, and lone surrogates (from \ud800 in JSON) are not UTF-8.
    if "\x00" in value:
        raise Rejected(f"{name} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Rejected(f"{name} is not valid Unicode (lone surrogate)") from None


def price(row: dict[str, Any], name: str = "price") -> Decimal | None:
    value = present(row, name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Rejected(f"{name} must be a number, not {_json_type(value)}")
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else str(value))
    except InvalidOperation:
        raise Rejected(f"{name} {value!r} is not a number") from None
    if not amount.is_finite():
        raise Rejected(f"{name} {value!r} is not a finite number")
    if amount < 0:
        raise Rejected(f"{name} {value!r} is negative")
    # Rounded here as Postgres would, so what is compared on the next load is what was stored.
    amount = amount.quantize(CENT, rounding=ROUND_HALF_UP)
    if amount >= PRICE_LIMIT:
        raise Rejected(f"{name} {value!r} is too large (at most 9999999999.99)")
    return amount


def rating(row: dict[str, Any], name: str = "rating") -> float | None:
    value = present(row, name)
    if value is None:
        return None
    number = _float(value, name)
    if not 0 <= number <= 5:
        raise Rejected(f"{name} {value!r} is outside 0..5")
    return number


def timestamp(row: dict[str, Any], name: str) -> datetime | None:
    """ISO-8601 (a time without zone is UTC) or epoch seconds, as an aware UTC datetime."""
    value = present(row, name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Rejected(f"{name} must be a string or a number, not {_json_type(value)}")
    if isinstance(value, str):
        stripped = value.strip()
        if _looks_numeric(stripped):
            return _from_epoch(_float(stripped, name), value, name)
        try:
            moment = datetime.fromisoformat(stripped)
        except ValueError:
            raise Rejected(f"{name} {value!r} is neither ISO-8601 nor epoch seconds") from None
        if moment.tzinfo is None:
            return moment.replace(tzinfo=timezone.utc)
        try:
            return moment.astimezone(timezone.utc)
        except OverflowError:
            raise Rejected(f"{name} {value!r} is out of range") from None
    return _from_epoch(float(value), value, name)


def required_timestamp(row: dict[str, Any], name: str) -> datetime:
    value = timestamp(row, name)
    if value is None:
        raise Rejected(f"{name} is required")
    return value


def event_type(row: dict[str, Any], name: str = "type") -> str:
    value = required_text(row, name)
    if value not in EVENT_TYPES:
        raise Rejected(f"{name} {value!r} is not one of {', '.join(EVENT_TYPES)}")
    return value


def category(row: dict[str, Any], name: str = "category") -> tuple[str, ...]:
    """A category path, root first: "A > B > C" or a JSON list; levels are trimmed."""
    value = present(row, name)
    if value is None:
        return ()
    if isinstance(value, str):
        levels = value.split(CATEGORY_SEPARATOR)
    elif isinstance(value, list):
        levels = value
        for level in levels:
            if not isinstance(level, str):
                raise Rejected(f"{name} levels must be strings, not {_json_type(level)}")
    else:
        raise Rejected(f"{name} must be a string or a list, not {_json_type(value)}")
    path = tuple(level.strip() for level in levels)
    if any(not level for level in path):
        raise Rejected(f"{name} {value!r} has an empty level")
    for level in path:
        check_text(level, name)
    return path


def attributes(row: dict[str, Any], name: str = "attributes") -> str:
    """A JSON object (in CSV, its JSON text) as canonical JSON text for jsonb."""
    value = present(row, name)
    if value is None:
        return "{}"
    if isinstance(value, str):
        try:
            value = strict_json(value)
        except (ValueError, RecursionError) as exc:
            raise Rejected(f"{name} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise Rejected(f"{name} must be a JSON object, not {_json_type(value)}")
    _check_json(value, name)
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, sort_keys=True)
    except (ValueError, RecursionError) as exc:
        raise Rejected(f"{name} cannot be stored ({exc})") from None


def _check_json(value: Any, name: str, depth: int = 0) -> None:
    # jsonb refuses \u0000 anywhere, keys included.
    if depth > MAX_JSON_DEPTH:
        raise Rejected(f"{name} is nested too deeply")
    if isinstance(value, str):
        check_text(value, name)
    elif isinstance(value, float) and not math.isfinite(value):
        raise Rejected(f"{name} holds a non-finite number")
    elif isinstance(value, dict):
        for key, inner in value.items():
            check_text(key, name)
            _check_json(inner, name, depth + 1)
    elif isinstance(value, list):
        for inner in value:
            _check_json(inner, name, depth + 1)


def _float(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise Rejected(f"{name} must be a number, not a boolean")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise Rejected(f"{name} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise Rejected(f"{name} {value!r} is not a finite number")
    return number


def _looks_numeric(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _from_epoch(seconds: float, raw: Any, name: str) -> datetime:
    if not math.isfinite(seconds) or not EPOCH_MIN <= seconds <= EPOCH_MAX:
        raise Rejected(f"{name} {raw!r} is out of range for epoch seconds")
    try:
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise Rejected(f"{name} {raw!r} is out of range for epoch seconds") from None


def strict_json(text: str) -> Any:
    """json.loads without NaN/Infinity, which JSON, Postgres numerics and jsonb all refuse."""
    return json.loads(text, parse_constant=_reject_constant)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )
