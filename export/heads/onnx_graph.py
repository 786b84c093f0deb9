"""Exporting heads to ONNX with the conventions every graph in the model repository follows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from export.encoder import INPUT_NAMES, OPSET

# Token-level inputs carry a dynamic sequence axis too; everything else only a dynamic batch.
TOKEN_INPUTS = frozenset(INPUT_NAMES)


def export_named(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> Path:
    """Legacy-exporter ONNX at opset 17 with named tensors and a dynamic batch axis."""
    axes: dict[str, dict[int, str]] = {}
    for name in [*input_names, *output_names]:
        axes[name] = {0: "batch", 1: "sequence"} if name in TOKEN_INPUTS else {0: "batch"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            module.eval(),
            example_inputs,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    check_names(path, input_names, output_names)
    return path


def check_names(path: Path, input_names: Sequence[str], output_names: Sequence[str]) -> None:
    """Fail loudly when the exporter dropped or renamed a tensor (e.g. an unused input)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    found = ([i.name for i in graph.input], [o.name for o in graph.output])
    if found != (list(input_names), list(output_names)):
        raise RuntimeError(f"{path}: ONNX tensors {found}, expected {(list(input_names), list(output_names))}")


def export_token_model(module: torch.nn.Module, path: Path, output_names: Sequence[str]) -> Path:
    """A graph over the encoder's token inputs ``(input_ids, attention_mask)``, traced on a small padded batch."""
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.int64)
    return export_named(module, (ids, (ids != 0).to(torch.int64)), path, INPUT_NAMES, output_names)
