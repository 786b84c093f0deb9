"""Raw rows of a CSV or JSONL file with the line each starts on.

Rows are yielded as dictionaries (CSV: column -> string; JSONL: the line's object) or as a
``RowError`` when the row itself is broken (bytes that are not UTF-8, wrong column count, invalid
JSON). Problems with the whole file (missing, unreadable, no header) raise ``LoadError``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from workers.loading.fields import strict_json
from workers.loading.report import LoadError, RowError

CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")

Row = tuple[int, dict[str, Any]]


def open_binary(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise LoadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise LoadError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise LoadError(f"{path}: cannot be read ({exc.strerror or exc})") from None


class RowFile:
    """One open CSV/JSONL file; ``position``/``size`` in bytes drive the progress bar."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = str(path)
        # Data rows produced so far (broken ones included, blank lines not), and rows an adapter
        # chose not to load (a split filter): the report's ``read`` and ``skipped``.
        self.rows_read = 0
        self.skipped = 0
        self._binary = open_binary(path)
        try:
            self.size = path.stat().st_size
        except OSError:
            self.size = 0

    @property
    def position(self) -> int:
        try:
            return self._binary.tell()
        except (OSError, ValueError):
            return self.size

    def close(self) -> None:
        self._binary.close()

    def __enter__(self) -> RowFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def error(self, line: int, reason: str) -> RowError:
        return RowError(self.label, line, reason)

    def csv_rows(self, required: Sequence[str] = ()) -> Iterator[Row | RowError]:
        """Rows of a CSV file with a header row; every column in ``required`` must be present."""
        # surrogateescape keeps reading past bytes that are not UTF-8 so only their row is lost;
        # utf-8-sig drops the byte-order mark spreadsheet programs write.
        text = io.TextIOWrapper(self._binary, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise LoadError(f"{self.label}: the file is empty; expected a header row") from None
        except (csv.Error, UnicodeError) as exc:
            raise LoadError(f"{self.label}:1: cannot read the header row ({exc})") from None
        columns = [name.strip() for name in header]
        if not _is_utf8("".join(columns)):
            raise LoadError(f"{self.label}:1: the header row is not valid UTF-8")
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        if duplicated:
            raise LoadError(f"{self.label}:1: duplicated columns {duplicated}")
        missing = [c for c in required if c not in columns]
        if missing:
            raise LoadError(
                f"{self.label}:1: missing required columns {missing} (header has {columns})"
            )
        width = len(columns)
        end = reader.line_num
        while True:
            start = end + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                end = reader.line_num
                self.rows_read += 1
                yield self.error(start, f"malformed CSV ({exc})")
                continue
            end = reader.line_num
            if not values:
                continue  # a blank line
            self.rows_read += 1
            if len(values) != width:
                yield self.error(start, f"expected {width} fields as in the header, found {len(values)}")
                continue
            if not _is_utf8("".join(values)):
                yield self.error(start, "bytes that are not valid UTF-8")
                continue
            yield start, dict(zip(columns, values, strict=True))

    def jsonl_rows(self) -> Iterator[Row | RowError]:
        """One JSON object per line."""
        for number, raw in enumerate(self._binary, start=1):
            if not raw.strip():
                continue
            self.rows_read += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield self.error(number, "bytes that are not valid UTF-8")
                continue
            if number == 1:
                line = line.removeprefix("\ufeff")
            try:
                value = strict_json(line)
            except (ValueError, RecursionError) as exc:
                yield self.error(number, f"invalid JSON ({exc})")
                continue
            if not isinstance(value, dict):
                yield self.error(number, f"expected a JSON object, found {type(value).__name__}")
                continue
            yield number, value


def rows(file: RowFile, required: Sequence[str] = ()) -> Iterator[Row | RowError]:
    """The rows of ``file``, CSV or JSONL by its extension."""
    suffix = file.path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return file.csv_rows(required)
    if suffix in JSONL_SUFFIXES:
        return file.jsonl_rows()
    raise LoadError(
        f"{file.label}: unknown file type {suffix or '(no extension)'!r}; "
        f"expected one of {list(CSV_SUFFIXES + JSONL_SUFFIXES)}"
    )


def _is_utf8(text: str) -> bool:
    # Undecodable bytes arrive as lone surrogates (surrogateescape), which do not encode.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
