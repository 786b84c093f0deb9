"""Loading catalogs, events and reviews into Postgres: the standard CSV/JSONL format
(docs/data-format.md) and adapters for the datasets in ../shared/data.

    from workers.loading import load, rich_progress
    with rich_progress("homedepot") as hook:
        report = load("homedepot", path, database_url, progress=hook)
"""

from workers.loading.loader import BATCH_ROWS, KINDS, load
from workers.loading.progress import LoadProgress, ProgressHook, rich_progress
from workers.loading.report import LoadError, LoadReport, RowError, TableCounts

__all__ = [
    "BATCH_ROWS", "KINDS", "LoadError", "LoadProgress", "LoadReport", "ProgressHook", "RowError",
    "TableCounts", "load", "rich_progress",
]
