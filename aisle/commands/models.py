"""`aisle export`, `aisle train …`, `aisle eval …`: the models and their quality."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from aisle.errors import fail, say
from core.settings import REPO_ROOT, load_settings

train_app = typer.Typer(no_args_is_help=True, help="Train the models whose small weights are committed.")
eval_app = typer.Typer(no_args_is_help=True, help="Measure quality through the served models.")

DATA = REPO_ROOT.parent / "shared" / "data"


class Target(str, Enum):
    portable = "portable"
    ngc = "ngc"


def export(
    target: Target = typer.Option(Target.portable, help="portable: onnxruntime in Python-backend models (pip tritonserver); ngc: native onnxruntime on NVIDIA's container."),
    output: Path = typer.Option(None, help="Repository folder (default: model_repository/ for portable, build/model_repository_ngc for ngc)."),
    tensorrt: bool = typer.Option(False, help="ngc only: TensorRT FP16 acceleration for the ONNX models."),
    force: bool = typer.Option(False, help="Rebuild ONNX graphs even when the cache is current."),
    check: bool = typer.Option(False, help="Only check that the configs under OUTPUT match the spec (exit 1 on drift)."),
) -> None:
    """Build the Triton model repository from the spec, the base model and committed weights."""
    from export import build

    if tensorrt and target != Target.ngc:
        fail("--tensorrt applies to --target ngc only")
    out = output or (
        load_settings().model_repository if target == Target.portable else REPO_ROOT / "build" / "model_repository_ngc"
    )
    if check:
        drift = build.config_drift(out, target.value)
        for line in drift:
            say(line)
        raise typer.Exit(1 if drift else 0)
    specs = build.export_repository(out, target.value, tensorrt=tensorrt, force=force)
    say(f"wrote {len(specs)} models to {out}: " + ", ".join(s.name for s in specs))
