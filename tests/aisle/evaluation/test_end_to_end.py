"""Both evaluations end to end on a few hundred real items: real Postgres and Triton (the
session fixtures), the real loaders and refresh jobs, a real in-process gateway, the CLI.

Small on purpose (about a minute on two shared cores): the numbers are not the point, the
plumbing is. The full runs are `aisle eval search|recommend` on ../shared/data.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.datasets import data_file

pytestmark = pytest.mark.data

# Judged queries whose products make up the search catalog (with their ~6 judged products
# each, plus as many unjudged ones as distractors: about 250 items).
SEARCH_QUERIES = 20
DISTRACTORS = 120
# Scientific items with item_idx below this, and the purchase histories on them.
SCIENTIFIC_ITEMS = 250
# Test users asked for recommendations.
RECOMMEND_USERS = 60


@pytest.fixture
def cli_env(monkeypatch, tmp_path, postgres_server, triton_url):
    """The CLI pointed at the session's servers (and at no local stack)."""
    from core.settings import get_settings

    def point(database_url: str) -> None:
        monkeypatch.setenv("AISLE_DATABASE_URL", database_url)
        monkeypatch.setenv("AISLE_TRITON_URL", triton_url)
        monkeypatch.setenv("AISLE_RUN_DIR", str(tmp_path / "run"))
        monkeypatch.delenv("AISLE_GATEWAY_ADDRESS", raising=False)
        monkeypatch.delenv("AISLE_API_KEYS", raising=False)
        get_settings.cache_clear()

    yield point
    get_settings.cache_clear()


def invoke_json(*args: str) -> dict:
    from aisle.cli import app

    result = CliRunner().invoke(app, ["eval", *args, "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _rows(path: Path, every: int) -> tuple[list[str], list[dict]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)[::every]


def _write(path: Path, fields: list[str], rows: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def search_files(tmp_path) -> tuple[Path, Path, Path]:
    """The first judged queries, their qrels, and a catalog of their judged products plus the
    first unjudged products of products.csv."""
    with open(data_file("homedepot", "queries_dev.csv"), encoding="utf-8", newline="") as f:
        queries = list(csv.DictReader(f))
    with open(data_file("homedepot", "qrels_dev.csv"), encoding="utf-8", newline="") as f:
        qrels = list(csv.DictReader(f))
    judged_queries = {r["query_id"] for r in qrels}
    keep = [q for q in queries if q["query_id"] in judged_queries][:SEARCH_QUERIES]
    ids = {q["query_id"] for q in keep}
    kept_qrels = [r for r in qrels if r["query_id"] in ids]
    products = {r["product_uid"] for r in kept_qrels}
    with open(data_file("homedepot", "products.csv"), encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    extra = [r for r in rows if r["product_uid"] not in products][:DISTRACTORS]
    catalog = [r for r in rows if r["product_uid"] in products] + extra
    paths = tmp_path / "queries.csv", tmp_path / "qrels.csv", tmp_path / "products.csv"
    for path, data, fields in ((paths[0], keep, ["query_id", "query"]),
                               (paths[1], kept_qrels, ["query_id", "product_uid", "relevance"]),
                               (paths[2], catalog, ["product_uid", "product_title"])):
        _write(path, fields, data)
    return paths


def test_eval_search_through_an_in_process_gateway(search_files, postgres_server, triton_url, cli_env):
    from aisle.evaluation.scratch import refresh_all, scratch_database
    from core.settings import load_settings
    from workers.loading import load

    queries, qrels, products = search_files
    with scratch_database(postgres_server.url, prefix="aisle_evalsearch") as url:
        assert not load("homedepot", products, url).rejected
        refresh_all(load_settings(database_url=url, triton_url=triton_url))
        cli_env(url)
        r = invoke_json("search", "--queries", str(queries), "--qrels", str(qrels))

    assert r["system"]["queries"] == SEARCH_QUERIES
    assert r["judged_products_in_catalog"] == r["judged_products"]
    assert r["system_calls"]["errors"] == 0 and r["system_calls"]["gateway"] == "in-process"
    for run in ("system", "bm25", "dense", "rrf"):
        for metric in ("ndcg@10", "ndcg@10_judged", "recall@100"):
            assert 0.0 <= r[run][metric] <= 1.0
    # Every judged product is in a catalog of ~250: a hundred results find most of them.
    assert r["system"]["recall@100"] > 0.5 and r["rrf"]["recall@100"] > 0.5
    assert r["system"]["ndcg@10"] > 0.1
    best = max(("bm25", "dense", "rrf"), key=lambda n: r[n]["ndcg@10"])
    assert r["ratio_to_best_baseline"]["system"]["ndcg@10"] == pytest.approx(r["system"]["ndcg@10"] / r[best]["ndcg@10"])
    assert set(r["goals"]) == {"ndcg@10_vs_rrf", "recall@100"}


@pytest.fixture
def scientific_files(tmp_path) -> tuple[Path, Path]:
    from tests.gateway.conftest import scientific_subset

    return scientific_subset(tmp_path, SCIENTIFIC_ITEMS)


def test_eval_recommend_on_a_scratch_database(scientific_files, postgres_server, cli_env):
    items, interactions = scientific_files
    cli_env(postgres_server.url)
    r = invoke_json("recommend", "--interactions", str(interactions), "--test", str(interactions),
                    "--items", str(items), "--users", str(RECOMMEND_USERS))

    assert r["users"] == RECOMMEND_USERS and r["target_split"] == "valid"
    assert r["blend_tuning"]["tuned_on_targets"]
    assert r["system_calls"]["errors"] == 0
    for run in ("system", "popularity", "cooccurrence", "blend"):
        assert r[run]["users"] == RECOMMEND_USERS
        for metric in ("recall@10", "recall@20", "ndcg@10", "ndcg@20"):
            assert 0.0 <= r[run][metric] <= 1.0
        assert r[run]["recall@10"] <= r[run]["recall@20"]
    # With 250 items some next items are found by anything better than chance.
    assert r["system"]["recall@20"] > 0 and r["popularity"]["recall@20"] > 0
    assert r["blend_weight"] in r["blend_tuning"]["ndcg@10_by_weight"] or str(r["blend_weight"]) in r["blend_tuning"]["ndcg@10_by_weight"]
    # The scratch database is gone.
    import psycopg

    with psycopg.connect(postgres_server.url) as conn:
        assert not conn.execute("SELECT 1 FROM pg_database WHERE datname LIKE 'aisle_eval%%'").fetchone()


def test_eval_sentiment_scores_a_rating_file_through_the_served_ensemble(cli_env, database_url, monkeypatch, tmp_path):
    # given real reviews in the held-out format with star ratings instead of labels, 3 stars included
    fields, rows = _rows(data_file("sentiment", "reviews_train.csv"), 50)
    for n, r in enumerate(rows):
        r["rating"] = "3" if n % 10 == 0 else r["rating"]
    test = _write(tmp_path / "reviews.csv", [f for f in fields if f != "label"], rows)
    # and a Triton timeout far below what a request of 128 reviews takes
    cli_env(database_url)
    monkeypatch.setenv("AISLE_TRITON_TIMEOUT_S", "0.001")
    # when the CLI evaluates them
    result = invoke_json("sentiment", "--test", str(test))
    # then 3-star reviews are dropped, the balance is printed, and the scores are those of a working model
    assert result["reviews"] == sum(1 for r in rows if r["rating"] != "3")
    assert set(result["class_balance"]) == {"negative", "positive"}
    assert result["accuracy"] > 0.85 and result["macro_f1"] > 0.85


def test_eval_classifier_scores_instacart_rows_through_the_served_ensemble(cli_env, database_url, tmp_path):
    # given real Instacart rows, the unlabelled departments among them
    fields, rows = _rows(data_file("instacart", "products_train.csv"), 200)
    test = _write(tmp_path / "products.csv", fields, rows)
    cli_env(database_url)
    # when the CLI evaluates them
    result = invoke_json("classifier", "--test", str(test))
    # then only labelled rows count, and department and aisle scores are a working model's
    assert result["products"] == sum(1 for r in rows if r["department"] not in ("missing", "other"))
    assert result["department"]["accuracy"] > 0.8 and result["aisle"]["accuracy"] > 0.7
