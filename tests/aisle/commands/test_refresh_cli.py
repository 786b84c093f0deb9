"""`aisle refresh recommendations` when it cannot warm anything: a message naming why and exit
status 2, never a traceback; inside `aisle refresh all` the step is skipped instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def refresh(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AISLE_")}
    # A database URL is all the command reads before it looks for a gateway (no stack runs in
    # this run directory); nothing connects to it on these paths.
    clean.update(AISLE_RUN_DIR=str(tmp_path), AISLE_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none", **env)
    return subprocess.run([sys.executable, "-m", "aisle.cli", "refresh", *args], cwd=REPO, env=clean,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(("env", "message"), [
    ({}, "no gateway: set AISLE_GATEWAY_ADDRESS"),
    ({"AISLE_GATEWAY_ADDRESS": "127.0.0.1:1", "AISLE_RECOMMEND_CACHE_TTL_S": "0"}, "the cache is off"),
])
def test_refresh_recommendations_without_a_gateway_or_cache_says_why(tmp_path, env, message):
    proc = refresh(tmp_path, "recommendations", **env)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in " ".join((proc.stdout + proc.stderr).split())
    assert "Traceback" not in proc.stderr
