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


# Least time a request of `aisle eval classifier|sentiment` may take. They send a whole file, four
# requests of 128 texts in flight, and each request's timeout covers its wait behind the other
# three. On 2 cores shared with a training run, the sentiment model scored ~15 reviews a second,
# and 643 held-out reviews failed at the default 30 s ("Deadline Exceeded"); idle, they take 17 s
# (2026-12-07). An evaluation is a batch job: it waits rather than fails.
EVAL_TRITON_TIMEOUT_S = 600.0


def _triton_client(min_timeout_s: float = 0.0):
    from core.triton import TritonClient

    settings = _stack_settings()
    if not settings.triton_url:
        fail("no Triton: set AISLE_TRITON_URL or start the local stack with `aisle up`")
    return TritonClient(settings.triton_url, max(settings.triton_timeout_s, min_timeout_s))


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

    client = _triton_client(EVAL_TRITON_TIMEOUT_S)
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

    client = _triton_client(EVAL_TRITON_TIMEOUT_S)
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


# Errors an evaluation's input or its data can raise that the user fixes: reported as a message
# and exit status 2 (csv.Error: a malformed CSV; UnicodeDecodeError is a ValueError).
def _input_errors():
    import csv

    from workers.loading import LoadError

    return (ValueError, KeyError, csv.Error, LoadError, OSError)


def _ranking_table(r: dict, runs: list[str], metrics: tuple[str, ...]) -> list[str]:
    """One row per run: each metric and its ratio to the best baseline at that metric."""
    width = max(len(n) for n in runs)
    lines = [" " * width + "".join(f"  {m:>17}" for m in metrics)]
    for name in runs:
        cells = []
        for m in metrics:
            ratio = r["ratio_to_best_baseline"][name][m]
            cells.append(f"  {r[name][m]:.4f} ({ratio:.2f}x)" if ratio is not None else f"  {r[name][m]:.4f} (  -  )")
        lines.append(f"{name:<{width}}" + "".join(f"{c:>19}" for c in cells))
    lines.append("(x: ratio to the best baseline at that metric)")
    return lines


def _goal_lines(goals: dict) -> list[str]:
    return [
        f"goal {name} >= {g['goal']}: {g['value']:.3f} {'PASS' if g['pass'] else 'FAIL'}"
        if g["value"] is not None else f"goal {name} >= {g['goal']}: n/a FAIL"
        for name, g in goals.items()
    ]


def _calls_line(stats: dict) -> str:
    line = f"gateway {stats['gateway']}: p50 {stats['p50_ms']:.1f} ms, {stats['degraded']} degraded, {stats['errors']} failed"
    if stats["degraded_reasons"]:
        line += f"; degraded because: {next(iter(stats['degraded_reasons']))}"
    if stats["error_reasons"]:
        line += f"; failed with: {next(iter(stats['error_reasons']))}"
    return line


@eval_app.command("search")
def eval_search(
    queries: Path = typer.Option(..., help="CSV with query_id, query (the Home Depot format)."),
    qrels: Path = typer.Option(..., help="CSV with query_id, product_uid, relevance (1-3)."),
    gateway: str = typer.Option(None, help="Gateway host:port serving the same database (default: AISLE_GATEWAY_ADDRESS, else the stack's when the database is the stack's, else one in this process)."),
    limit: int = typer.Option(None, min=1, help="Only the first N judged queries."),
    concurrency: int = typer.Option(8, min=1, help="Searches in flight at once."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """NDCG@10 and Recall@100 of Search through the gateway, against BM25, dense and their RRF.

    Full-catalog and judged-pool NDCG@10 (gain = relevance - 1) and Recall@100 (relevance >= 2.5)
    of the system and of BM25-only, dense-only and their reciprocal-rank fusion (k=60) over the
    same catalog, each with its ratio to the best baseline. Needs the catalog loaded and refreshed in the stack's database (`aisle up`, `aisle load
    homedepot …`, `aisle refresh all`) or AISLE_DATABASE_URL and AISLE_TRITON_URL."""
    from aisle.evaluation.search import GatewayCallError, evaluate_search, load_judged

    # The input first: a wrong file is reported whether or not a stack runs.
    _readable(queries)
    _readable(qrels)
    try:
        judged, judgements = load_judged(queries, qrels, limit)
    except _input_errors() as exc:
        fail(str(exc))
    settings = _stack_settings()
    if not settings.database_url or not settings.triton_url:
        fail("needs the local stack (`aisle up`) or AISLE_DATABASE_URL and AISLE_TRITON_URL")
    try:
        r = evaluate_search(settings, judged, judgements, gateway or _gateway_of_database(), concurrency,
                            say=lambda m: None if as_json else say(m))
    except _evaluation_errors() + (GatewayCallError,) as exc:
        fail(str(exc))
    _emit(r, as_json, [
        (f"{r['system']['queries']} queries on a catalog of {r['catalog_items']} items "
         f"({r['judged_products_in_catalog']}/{r['judged_products']} judged products in it)"),
        *_ranking_table(r, ["system", "bm25", "dense", "rrf"], ("ndcg@10", "ndcg@10_judged", "recall@100")),
        _calls_line(r["system_calls"]),
        *_goal_lines(r["goals"]),
    ])


def _gateway_of_database() -> str | None:
    """The gateway that serves the database the evaluation reads: AISLE_GATEWAY_ADDRESS, else
    the local stack's live gateway when the database is the stack's too (with AISLE_DATABASE_URL
    set, the stack's gateway may serve another catalog), else None (one in this process)."""
    from aisle.stack import read_state
    from core.settings import get_settings

    base = get_settings()
    if base.gateway_address:
        return base.gateway_address
    if base.database_url:
        return None
    component = read_state(base).get("gateway")
    return component.address if component is not None and component.alive() else None


def _evaluation_errors():
    """What a running evaluation raises that is the data's or the environment's fault."""
    import psycopg

    from aisle.evaluation.served import GatewayUnavailable
    from core.triton import TritonError

    return _input_errors() + (psycopg.Error, TritonError, GatewayUnavailable, LookupError)


@eval_app.command("recommend")
def eval_recommend(
    interactions: Path = typer.Option(..., help="CSV with reviewer_id, position, asin, loo_split: everyone's history."),
    test: Path = typer.Option(..., help="Held-out rows, same format (`test` rows, else `valid`, else each user's last)."),
    items: Path = typer.Option(DATA / "scientific" / "items.csv", help="Items of the interactions (Scientific format)."),
    users: int = typer.Option(None, min=1, help="Only the first N test users."),
    concurrency: int = typer.Option(8, min=1, help="Recommend calls in flight at once."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Recall and NDCG@10/20 of Recommend's next item, against popularity, co-occurrence, blend.

    Full ranking, history excluded, through a gateway on a scratch database that holds exactly
    each user's history; baselines on the same history: popularity, item co-occurrence from the
    recent items, and co-occurrence blended with text-embedding similarity (weight tuned on the
    `valid` rows). Needs the stack's Postgres and Triton (`aisle up`) or AISLE_DATABASE_URL and AISLE_TRITON_URL."""
    from aisle.evaluation.recommend import evaluate_recommend, load_split
    from aisle.evaluation.search import GatewayCallError

    for path in (interactions, test, items):
        _readable(path)
    try:
        split = load_split(interactions, test, users)
    except _input_errors() as exc:
        fail(str(exc))
    settings = _stack_settings()
    if not settings.database_url or not settings.triton_url:
        fail("needs the local stack (`aisle up`) or AISLE_DATABASE_URL and AISLE_TRITON_URL")
    try:
        r = evaluate_recommend(settings, split, items, concurrency, say=lambda m: None if as_json else say(m))
    except _evaluation_errors() + (GatewayCallError,) as exc:
        fail(str(exc))
    _emit(r, as_json, [
        (f"{r['users']} users ({r['users_with_history']} with history), held-out rows: {r['target_split']}; "
         f"blend weight {r['blend_weight']} (tuned on valid rows{', the same targets' if r['blend_tuning']['tuned_on_targets'] else ''})"),
        *_ranking_table(r, ["system", "popularity", "cooccurrence", "blend"], ("recall@10", "recall@20", "ndcg@10", "ndcg@20")),
        _calls_line(r["system_calls"]),
        *_goal_lines(r["goals"]),
    ])


def _train_head(module, data: Path, out: Path, seed: int, holdout: float, as_json: bool) -> None:
    import json

    _readable(data)
    if not 0 <= holdout < 1:
        fail("--holdout must be in [0, 1)")
    try:
        metrics = module.train(data, out, seed=seed, holdout=holdout)
    except (KeyError, ValueError) as exc:
        fail(f"{data}: {exc}")
    if as_json:
        print(json.dumps(metrics))
    else:
        say(f"wrote {out}")


@train_app.command("classifier")
def train_classifier(
    data: Path = typer.Option(DATA / "instacart" / "products_train.csv", help="CSV with product_name, department, aisle."),
    out: Path = typer.Option(REPO_ROOT / "export" / "weights" / "product_classifier"),
    seed: int = typer.Option(0),
    holdout: float = typer.Option(0.1, help="Share of rows held out (stratified by aisle) for the printed accuracy; 0 trains on all."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Train the product classifier (LoRA on MiniLM; deterministic for a seed and thread count)."""
    from export.heads import product_classifier

    _train_head(product_classifier, data, out, seed, holdout, as_json)


@train_app.command("sentiment")
def train_sentiment(
    data: Path = typer.Option(DATA / "sentiment" / "reviews_train.csv", help="CSV with title, review_text and label or rating."),
    out: Path = typer.Option(REPO_ROOT / "export" / "weights" / "sentiment"),
    seed: int = typer.Option(0),
    holdout: float = typer.Option(0.1, help="Share of products held out (split by asin) for the printed metrics; 0 trains on all."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Train the review sentiment model (LoRA on MiniLM's top layers; deterministic for a seed)."""
    from export.heads import sentiment

    _train_head(sentiment, data, out, seed, holdout, as_json)


@train_app.command("query-encoder")
def train_query_encoder(
    queries: Path = typer.Option(DATA / "homedepot" / "queries_dev.csv", help="CSV with query_id, query."),
    qrels: Path = typer.Option(DATA / "homedepot" / "qrels_dev.csv", help="CSV with query_id, product_uid, relevance (1-3)."),
    products: Path = typer.Option(DATA / "homedepot" / "products.csv", help="CSV with product_uid, product_title: the catalog."),
    out: Path = typer.Option(REPO_ROOT / "export" / "weights" / "query_encoder"),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Train query-side LoRA adapters for Search against the catalog's fixed item embeddings.

    Trains on the queries outside the ranker's held-out 20 % and prints dense-only NDCG@10 and
    Recall@100 of the base and the adapted encoder on both sides (~3 min on 2 cores, plus ~8 min
    the first time to embed the catalog, cached under build/query_encoder/)."""
    import json

    from export.heads import query_encoder

    for path in (queries, qrels, products):
        _readable(path)
    try:
        metrics = query_encoder.train(queries, qrels, products, out, seed=seed, cache_dir=REPO_ROOT / "build" / "query_encoder")
    except KeyError as exc:
        fail(f"missing column {exc} (queries: query_id, query; qrels: query_id, product_uid, relevance; products: product_uid, product_title)")
    except ValueError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(metrics))
        return
    for side in ("held_out", "trained"):
        b, a = metrics["base"][side], metrics["adapted"][side]
        say(f"{side} ({a['queries']} queries): NDCG@10 {b['ndcg@10']} -> {a['ndcg@10']}, "
            f"Recall@100 {b['recall@100']} -> {a['recall@100']} (dense only, base -> adapted)")
    say(f"wrote {out}")


@train_app.command("ranker")
def train_ranker(
    queries: Path = typer.Option(DATA / "homedepot" / "queries_dev.csv"),
    qrels: Path = typer.Option(DATA / "homedepot" / "qrels_dev.csv"),
    interactions: Path = typer.Option(DATA / "scientific" / "interactions.csv"),
    items: Path = typer.Option(DATA / "scientific" / "items.csv"),
    out: Path = typer.Option(REPO_ROOT / "export" / "weights" / "ranker"),
    seed: int = typer.Option(0),
    holdout_out: Path = typer.Option(None, help="Also write the ranker fitted without the held-out 20 % here (for evaluating on those queries)."),
) -> None:
    """Learn the ranker (LightGBM LambdaMART) on features from the serving pipeline itself.

    Needs the stack up with the Home Depot catalog loaded and embedded."""
    from aisle.ranker_training import train

    for path in (queries, qrels, interactions, items):
        _readable(path)
    settings = _stack_settings()
    if not settings.database_url or not settings.triton_url:
        fail("needs the local stack (`aisle up`) or AISLE_DATABASE_URL and AISLE_TRITON_URL")
    metrics = train(settings, queries, qrels, interactions, items, out, seed=seed, say=lambda m: say(m),
                    holdout_out=holdout_out)
    say(f"wrote {out}; held-out: {metrics['holdout']}")
