"""Ranking models (features → score) to ONNX: gradient-boosted trees from LightGBM.

The committed weights are LightGBM's text dump (``model.txt``) and ``meta.json`` (the feature
names it was trained on, which must equal core.features.FEATURE_NAMES at export time). The
graph takes ``features`` (float32 [batch, n_features]) and returns ``score`` (float32 [batch, 1]).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

INPUT_NAME = "features"
OUTPUT_NAME = "score"
# onnxmltools' TreeEnsemble converter targets ai.onnx.ml opset 3 with ONNX opset 15; both run
# on onnxruntime 1.16+ (Triton 24.x ships 1.19).
TARGET_OPSET = 15


class RankerError(ValueError):
    pass


def save(booster, feature_names: tuple[str, ...], out_dir: Path, metrics: dict | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out_dir / "model.txt"))
    meta = {"feature_names": list(feature_names), "metrics": metrics or {}}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    return out_dir


def load_booster(weights_dir: Path):
    import lightgbm as lgb

    return lgb.Booster(model_file=str(weights_dir / "model.txt"))


def feature_names(weights_dir: Path) -> tuple[str, ...]:
    return tuple(json.loads((weights_dir / "meta.json").read_text())["feature_names"])


def to_onnx(weights_dir: Path, out_path: Path, expected_features: tuple[str, ...] | None = None) -> Path:
    """Convert the committed LightGBM ranker to ONNX with named input/output and a dynamic batch."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    names = feature_names(weights_dir)
    if expected_features is None:
        from core.features import FEATURE_NAMES

        expected_features = FEATURE_NAMES
    if names != tuple(expected_features):
        raise RankerError(
            f"{weights_dir} was trained on features {list(names)}, but serving computes {list(expected_features)}: "
            "retrain with `aisle train ranker`"
        )
    booster = load_booster(weights_dir)
    model = convert_lightgbm(
        booster,
        initial_types=[(INPUT_NAME, FloatTensorType([None, len(names)]))],
        target_opset=TARGET_OPSET,
        zipmap=False,
    )
    _rename_output(model, OUTPUT_NAME)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return out_path


def _rename_output(model: onnx.ModelProto, name: str) -> None:
    graph = model.graph
    if len(graph.output) != 1:
        raise RankerError(f"expected one output, the converter made {[o.name for o in graph.output]}")
    old = graph.output[0].name
    for node in graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
    graph.output[0].name = name


def predict_reference(weights_dir: Path, features: np.ndarray) -> np.ndarray:
    """LightGBM's own scores, for parity checks."""
    return load_booster(weights_dir).predict(features.astype(np.float64)).astype(np.float32)
