"""`aisle train query-encoder` on bad input: a message naming the problem and exit status 2,
before any model is loaded."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from aisle.cli import app


def run(*args: str) -> str:
    result = CliRunner().invoke(app, ["train", "query-encoder", *args])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


def files(tmp_path: Path, queries: str, qrels: str, products: str) -> list[str]:
    paths = []
    for name, text in (("queries", queries), ("qrels", qrels), ("products", products)):
        (tmp_path / f"{name}.csv").write_text(text, encoding="utf-8")
        paths += [f"--{name}", str(tmp_path / f"{name}.csv")]
    return paths + ["--out", str(tmp_path / "out")]


def test_a_missing_column_is_named(tmp_path):
    out = run(*files(tmp_path, "query_id,query\n1,drill\n", "query_id,product_uid\n1,100001\n",
                     "product_uid,product_title\n100001,Cordless Drill\n"))
    assert "missing column 'relevance'" in out
    assert not (tmp_path / "out").exists()


def test_a_relevance_that_is_not_a_number_is_named(tmp_path):
    out = run(*files(tmp_path, "query_id,query\n1,drill\n", "query_id,product_uid,relevance\n1,100001,high\n",
                     "product_uid,product_title\n100001,Cordless Drill\n"))
    assert "high" in out


def test_judgements_of_another_catalog_are_refused(tmp_path):
    out = run(*files(tmp_path, "query_id,query\n1,drill\n", "query_id,product_uid,relevance\n1,999,3\n",
                     "product_uid,product_title\n100001,Cordless Drill\n"))
    assert "no judged product of a query in" in out


def test_a_missing_file_is_named(tmp_path):
    result = CliRunner().invoke(app, ["train", "query-encoder", "--queries", str(tmp_path / "nope.csv")])
    assert result.exit_code == 2 and "nope.csv" in " ".join(result.output.split())
