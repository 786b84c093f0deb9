"""Progress of a load, and a rich progress bar that shows it (bytes of the file, rows/s)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)


@dataclass(frozen=True)
class LoadProgress:
    """Sent after every stored batch and once at the end (``done``)."""

    rows: int  # data rows read so far
    bytes_read: int
    bytes_total: int
    seconds: float
    done: bool = False

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


ProgressHook = Callable[[LoadProgress], None]


@contextmanager
def rich_progress(description: str, console: Console | None = None) -> Iterator[ProgressHook]:
    """``with rich_progress("items") as hook: load(..., progress=hook)``."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[rows]:,} rows  {task.fields[rate]:,.0f} rows/s"),
        TimeElapsedColumn(),
    )
    started = time.monotonic()
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=None, rows=0, rate=0.0)

        def hook(p: LoadProgress) -> None:
            elapsed = max(time.monotonic() - started, 1e-9)
            bar.update(task, completed=p.bytes_read, total=p.bytes_total or None, rows=p.rows,
                       rate=p.rows / elapsed)

        yield hook
