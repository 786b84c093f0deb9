"""The `aisle` command line: composes export/, workers/, gateway/ and the local stack."""

from __future__ import annotations

import sys

import typer

from aisle import processes
from aisle.commands import api, data, models, report, services, stack
from aisle.errors import EXIT_USAGE, UserError, console
from core.settings import ConfigurationError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__, pretty_exceptions_enable=False)

app.command()(stack.up)
app.command()(stack.down)
app.command()(stack.status)
app.command()(models.export)
app.add_typer(models.train_app, name="train")
app.add_typer(models.eval_app, name="eval")
app.add_typer(data.db_app, name="db")
app.command()(data.load)
app.command()(data.refresh)
app.command()(api.search)
app.command()(api.recommend)
app.command()(api.similar)
app.command()(api.track)
app.command()(services.worker)
app.command()(services.beat)
app.command()(services.serve)
app.command()(report.report)


def main() -> None:
    # `timeout`, kill and a CI job's end stop a command as Ctrl-C does: scratch databases are
    # dropped and half-started stacks taken down. Servers (`serve`, `worker`, `beat`) replace
    # this with their own graceful SIGTERM.
    processes.interrupt_on_sigterm()
    try:
        app()
    except (ConfigurationError, UserError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
