"""Process logging: text for people, one JSON object per line for log pipelines, and the id of
the request being served in every line logged while serving it.

    from core import logs
    logs.configure(settings.log_format)
    with logs.request_scope("6f1c..."):
        log.info("...")            # carries request_id=6f1c...

The request id lives in a :class:`contextvars.ContextVar`, so it follows the request through
``await`` and into tasks it starts (asyncio copies the context), and never leaks into another
request served concurrently.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TextIO

# The request being served (None outside a request).
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("aisle_request_id", default=None)

# A client-chosen request id is kept when it looks like one (no spaces, quotes or control
# characters that could forge log lines), else the server makes its own.
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

# LogRecord attributes that are not "extra" fields.
# (rid and extras are the text formatter's own.)
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "request_id", "rid", "extras",
}

_HANDLER_NAME = "aisle"


def new_request_id(client_value: str | None = None) -> str:
    """The client's id when it is a plausible one, else a fresh random one."""
    if client_value and _CLIENT_ID.fullmatch(client_value):
        return client_value
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return _request_id.get()


@contextmanager
def request_scope(request_id: str) -> Iterator[str]:
    token = _request_id.set(request_id)
    try:
        yield request_id
    finally:
        _request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Stamps every record with the current request id (or None)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, the record's extra
    fields, and the traceback (as one string) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2024-01-01T00:00:00.000Z INFO logger [request id] message key=value ...``"""

    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s%(rid)s %(message)s%(extras)s", "%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None)
        record.rid = f" [{rid}]" if rid else ""
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        record.extras = "".join(f" {k}={v}" for k, v in extras.items())
        return super().format(record)


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return TextFormatter()
    raise ValueError(f"unknown log format {log_format!r}: text or json")


def configure(log_format: str = "text", level: int | str = logging.INFO, stream: TextIO | None = None) -> logging.Handler:
    """Route the root logger to ``stream`` (stderr) in ``log_format``; idempotent (replaces the
    handler an earlier call installed, leaves handlers others installed alone)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter(log_format))
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(level)
    return handler
