"""`aisle export`: write a Triton model repository for a target from export/spec.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from export import artifacts
from export.configs import render, warmup_bytes, warmup_file_name
from export.spec import ModelSpec, Target, repository

BACKENDS = Path(__file__).resolve().parent / "backends"


def export_repository(
    out: Path, target: Target = "portable", tensorrt: bool = False, force: bool = False, configs_only: bool = False
) -> list[ModelSpec]:
    """Write every model's config.pbtxt, version folder, code, graph and files under ``out``.

    The portable target links each Python-backend ``model.py`` to its single source in
    export/backends/ (Triton follows the link); the ngc target copies it, because that
    repository is shipped into an image on its own.
    """
    specs = repository(target)
    out.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        model_dir = out / spec.name
        version = model_dir / str(spec.version)
        version.mkdir(parents=True, exist_ok=True)
        (model_dir / "config.pbtxt").write_text(render(spec, target, tensorrt))
        if spec.kind == "ensemble":
            # Triton needs the (empty) version folder; git keeps it through this file.
            (version / ".gitkeep").touch()
            continue
        if configs_only:
            continue
        if spec.kind == "python" or target == "portable":
            code = BACKENDS / f"{spec.source if spec.kind == 'python' else 'onnx_runner'}.py"
            _place(code, version / "model.py", link=target == "portable")
        if spec.kind == "onnx":
            _place(artifacts.onnx(spec.source, force=force), version / "model.onnx", link=False)
        for name in spec.files:
            artifacts.write_file(name, version / name)
        warm = model_dir / "warmup"
        warm.mkdir(exist_ok=True)
        for tensor in spec.inputs:
            if tensor.dtype == "STRING" or tensor.name == "attention_mask":
                (warm / warmup_file_name(tensor)).write_bytes(warmup_bytes(tensor))
    _remove_stale(out, {s.name for s in specs})
    return specs


def _place(src: Path, dest: Path, link: bool) -> None:
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    if link:
        dest.symlink_to(os.path.relpath(src, dest.parent))
    else:
        # A hard link when on the same file system: the encoder graph is 90 MB.
        try:
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)


def _remove_stale(out: Path, names: set[str]) -> None:
    """Drop model folders the spec no longer has (a renamed model must not linger and load)."""
    for child in out.iterdir():
        if child.is_dir() and (child / "config.pbtxt").exists() and child.name not in names:
            shutil.rmtree(child)


def config_drift(out: Path, target: Target = "portable") -> list[str]:
    """Differences between the configs under ``out`` and what the spec renders (empty: none)."""
    problems = []
    specs = repository(target)
    for spec in specs:
        path = out / spec.name / "config.pbtxt"
        if not path.exists():
            problems.append(f"{path}: missing")
        elif path.read_text() != render(spec, target):
            problems.append(f"{path}: differs from export/spec.py (run `aisle export`)")
    names = {s.name for s in specs}
    for path in sorted(out.glob("*/config.pbtxt")):
        if path.parent.name not in names:
            problems.append(f"{path}: not in the spec")
    return problems
