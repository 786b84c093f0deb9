"""How the CLI reports problems the user can fix: a message and exit status 2, no traceback."""

from __future__ import annotations

import typer
from rich.console import Console

# Exit status for bad input or configuration (a usage error, like typer's own).
EXIT_USAGE = 2
# Exit status when a command finished but left rows behind (rejected rows of a load).
EXIT_PARTIAL = 1

console = Console(stderr=True)


class UserError(Exception):
    """A problem the user can fix; printed without a traceback, exit status 2."""


def fail(message: str, code: int = EXIT_USAGE) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def say(message: str) -> None:
    console.print(message, highlight=False)
