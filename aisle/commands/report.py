"""`aisle report`: bench/report.py from the CLI (the latest results as one Markdown page)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from aisle.errors import fail, say


def report(
    results: Path = typer.Option(None, help="Folder of the benchmark JSON files (default: bench/results)."),
    out: Path = typer.Option(None, help="Where REPORT.md and its plots go (default: the results folder)."),
) -> None:
    """Gather the latest benchmark, soak, chaos and quality JSON into REPORT.md with plots."""
    from core.settings import REPO_ROOT

    # bench/ ships with the source checkout, not the installed package.
    if not (REPO_ROOT / "bench" / "report.py").exists():
        fail(f"no bench/report.py under {REPO_ROOT}: `aisle report` runs from a source checkout")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        fail("the report's plots need matplotlib: pip install -e '.[bench]'")
    sys.path.insert(0, str(REPO_ROOT))
    from bench.report import RESULTS, build

    say(f"wrote {build(results or RESULTS, out)}")
