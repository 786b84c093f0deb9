"""The `aisle` command line: composes export/, workers/, gateway/ and the local stack."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from core.settings import ConfigurationError, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__, pretty_exceptions_enable=False)
console = Console(stderr=True)

# Exit status for bad input or configuration (a usage error, like typer's own).
EXIT_USAGE = 2


class UserError(Exception):
    """A problem the user can fix; printed without a traceback, exit status 2."""


def fail(message: str, code: int = EXIT_USAGE) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


class Target(str, Enum):
    portable = "portable"
    ngc = "ngc"


@app.command()
def up(no_triton: bool = typer.Option(False, help="Do not start tritonserver.")) -> None:
    """Start the local stack (Postgres+pgvector, Redis, Triton, workers, gateway)."""
    from aisle import stack

    _load_components()
    settings = load_settings()
    try:
        stack.up(settings, with_triton=not no_triton, say=lambda m: console.print(m, highlight=False))
    except stack.StackError as exc:
        console.print(str(exc), highlight=False)
        raise typer.Exit(0 if "already running" in str(exc) else EXIT_USAGE) from None
    _print_status(settings)


@app.command()
def down() -> None:
    """Stop everything `aisle up` started, and nothing else."""
    from aisle import stack

    stopped = stack.down(load_settings(), say=lambda m: console.print(m, highlight=False))
    console.print("stopped " + ", ".join(stopped) if stopped else "nothing was running")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Show each component of the local stack, its address and state."""
    from aisle import stack

    settings = load_settings()
    if as_json:
        print(json.dumps({"components": stack.status(settings)}))
        return
    _print_status(settings)


def _print_status(settings) -> None:
    from aisle import stack

    rows = stack.status(settings)
    if not rows:
        console.print("aisle is not running (`aisle up` starts it)")
        return
    table = Table("component", "address", "state", "pid", "log")
    for r in rows:
        table.add_row(r["component"], r["address"], r["state"], str(r["pid"] or ""), r["log"] or "")
    Console().print(table)


@app.command()
def export(
    target: Target = typer.Option(Target.portable, help="portable: Python-backend onnxruntime (pip tritonserver); ngc: native onnxruntime on NVIDIA's container."),
    output: Path = typer.Option(None, help="Repository folder (default: model_repository/ for portable, build/model_repository_ngc for ngc)."),
    tensorrt: bool = typer.Option(False, help="ngc only: TensorRT FP16 acceleration for the ONNX models."),
    force: bool = typer.Option(False, help="Rebuild ONNX graphs even when the cache is current."),
    check: bool = typer.Option(False, help="Only check that the committed configs match the spec (exit 1 on drift)."),
) -> None:
    """Build the Triton model repository from the spec, the base model and committed weights."""
    from core.settings import REPO_ROOT
    from export import build

    if tensorrt and target != Target.ngc:
        fail("--tensorrt applies to --target ngc only")
    out = output or (load_settings().model_repository if target == Target.portable else REPO_ROOT / "build" / "model_repository_ngc")
    if check:
        drift = build.config_drift(out, target.value)
        for line in drift:
            console.print(line, highlight=False)
        raise typer.Exit(1 if drift else 0)
    specs = build.export_repository(out, target.value, tensorrt=tensorrt, force=force)
    console.print(f"wrote {len(specs)} models to {out}: " + ", ".join(s.name for s in specs), highlight=False)


def _load_components() -> None:
    """Register the processes of later layers with `aisle up` (import side effect)."""
    for module in ("workers.stack", "gateway.stack"):
        try:
            __import__(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def main() -> None:
    try:
        app()
    except ConfigurationError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(EXIT_USAGE)
    except UserError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
