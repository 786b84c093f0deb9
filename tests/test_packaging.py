"""The installable package, as the container images install it (`pip install /src`,
docker/*.Dockerfile): it must carry every committed file the code reads at run time."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Committed data files read at run time: export's trained weights (the images export the model
# repository from them), the migrations and the Triton backends.
RUNTIME_FILES = ("export/weights", "core/migrations", "export/backends")


def test_the_wheel_carries_every_committed_weight_migration_and_backend(tmp_path):
    # given the committed files the code reads at run time
    tracked = subprocess.run(
        ["git", "ls-files", *RUNTIME_FILES], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert any(name.endswith(".npy") for name in tracked)
    # when the package is built from a copy of the working tree as `pip install /src` builds it
    # (a copy: setuptools reuses the build/ folder of an earlier build in place)
    source = tmp_path / "src"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    # then every one of them is in the wheel (a lexicon left out broke the images' export)
    packaged = set(zipfile.ZipFile(wheel).namelist())
    assert sorted(set(tracked) - packaged) == []
