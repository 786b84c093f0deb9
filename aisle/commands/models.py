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


def _stack_settings():
    from aisle.stack import stack_settings
    from core.settings import get_settings

    return stack_settings(get_settings())


def _triton_client():
    from core.triton import TritonClient

    settings = _stack_settings()
    if not settings.triton_url:
        fail("no Triton: set AISLE_TRITON_URL or start the local stack with `aisle up`")
    return TritonClient(settings.triton_url, settings.triton_timeout_s)


def _emit(result: dict, as_json: bool, lines: list[str]) -> None:
    import json

    if as_json:
        print(json.dumps(result))
    else:
        for line in lines:
            print(line)


def _readable(path: Path) -> Path:
    if not path.is_file():
        fail(f"{path}: no such file")
    return path


@eval_app.command("classifier")
def eval_classifier(
    test: Path = typer.Option(..., help="Instacart-format CSV (product_name, aisle, department)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Department and aisle accuracy / macro-F1 of the served `classify_product` ensemble."""
    from aisle.evaluation.classification import evaluate_classifier
    from core.triton import TritonError

    client = _triton_client()
    try:
        r = evaluate_classifier(client, _readable(test))
    except (TritonError, ValueError, KeyError) as exc:
        fail(f"{test}: {exc}")
    finally:
        client.close()
    _emit(r, as_json, [
        f"{r['products']} products",
        f"department accuracy {r['department']['accuracy']:.4f}  macro-F1 {r['department']['macro_f1']:.4f}",
        f"aisle      accuracy {r['aisle']['accuracy']:.4f}  macro-F1 {r['aisle']['macro_f1']:.4f}",
    ])


@eval_app.command("sentiment")
def eval_sentiment(
    test: Path = typer.Option(..., help="Sentiment-format CSV (label, or rating: 4-5 positive, 1-2 negative, 3 dropped)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Accuracy and macro-F1 of the served `analyze_sentiment` ensemble, with the class balance."""
    from aisle.evaluation.classification import evaluate_sentiment
    from core.triton import TritonError

    client = _triton_client()
    try:
        r = evaluate_sentiment(client, _readable(test))
    except (TritonError, ValueError, KeyError) as exc:
        fail(f"{test}: {exc}")
    finally:
        client.close()
    balance = ", ".join(f"{k} {v:.1%}" for k, v in r["class_balance"].items())
    _emit(r, as_json, [
        f"{r['reviews']} reviews ({balance})",
        f"accuracy {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}",
    ])


@train_app.command("ranker")
def train_ranker(
    queries: Path = typer.Option(DATA / "homedepot" / "queries_dev.csv"),
    qrels: Path = typer.Option(DATA / "homedepot" / "qrels_dev.csv"),
    interactions: Path = typer.Option(DATA / "scientific" / "interactions.csv"),
    items: Path = typer.Option(DATA / "scientific" / "items.csv"),
    out: Path = typer.Option(REPO_ROOT / "export" / "weights" / "ranker"),
    seed: int = typer.Option(0),
) -> None:
    """Learn the ranker (LightGBM LambdaMART) on features from the serving pipeline itself.

    Needs the stack up with the Home Depot catalog loaded and embedded."""
    from aisle.ranker_training import train

    for path in (queries, qrels, interactions, items):
        _readable(path)
    settings = _stack_settings()
    if not settings.database_url or not settings.triton_url:
        fail("needs the local stack (`aisle up`) or AISLE_DATABASE_URL and AISLE_TRITON_URL")
    metrics = train(settings, queries, qrels, interactions, items, out, seed=seed, say=lambda m: say(m))
    say(f"wrote {out}; held-out: {metrics['holdout']}")
