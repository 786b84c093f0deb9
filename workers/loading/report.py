"""What a load did: counts per table, the rows it rejected and why, and the errors it raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# Rejections kept with their reason; beyond this only the count grows. A file of the wrong kind
# (say, interactions whose items were never loaded) rejects every row: 50,942 messages help no one.
MAX_KEPT_ERRORS = 10_000


class LoadError(Exception):
    """The file cannot be loaded at all (missing, unreadable, unknown kind, no usable header)."""


class Rejected(ValueError):
    """One row is malformed; the message is the reason shown to the user."""


@dataclass(frozen=True)
class RowError:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class TableCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


@dataclass
class LoadReport:
    """Counts of one load. ``read`` counts the file's data rows; the others count records (an
    item, event or review), so a sentiment row that gives an item and a review counts in both."""

    kind: str
    path: Path
    read: int = 0
    # Rows read but left out on purpose (a split filter), neither loaded nor rejected.
    skipped: int = 0
    rejected: int = 0
    errors: list[RowError] = field(default_factory=list)
    tables: dict[str, TableCounts] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def inserted(self) -> int:
        return sum(c.inserted for c in self.tables.values())

    @property
    def updated(self) -> int:
        return sum(c.updated for c in self.tables.values())

    @property
    def unchanged(self) -> int:
        return sum(c.unchanged for c in self.tables.values())

    def table(self, name: str) -> TableCounts:
        return self.tables.setdefault(name, TableCounts())

    def reject(self, error: RowError) -> None:
        self.rejected += 1
        if len(self.errors) < MAX_KEPT_ERRORS:
            self.errors.append(error)

    def summary(self) -> str:
        parts = [f"{self.read:,} rows read"]
        for name, c in self.tables.items():
            if name == "users":  # users are only ever created by a load
                parts.append(f"users: {c.inserted:,} new")
            else:
                parts.append(f"{name}: {c.inserted:,} inserted, {c.updated:,} updated, {c.unchanged:,} unchanged")
        if self.skipped:
            parts.append(f"{self.skipped:,} skipped")
        parts.append(f"{self.rejected:,} rejected")
        return "; ".join(parts) + f" in {self.seconds:.1f} s"
