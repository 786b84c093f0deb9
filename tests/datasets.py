"""The real data of ../shared/data for tests: read in place, skipped when absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import REPO_ROOT

DATA = REPO_ROOT.parent / "shared" / "data"


def data_file(*parts: str) -> Path:
    """A file of ../shared/data, or skip the test: the data is not ours to ship."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: these tests read the real data from ../shared/data")
    return path
