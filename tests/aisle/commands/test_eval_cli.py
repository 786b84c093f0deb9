"""`aisle eval search` and `aisle eval recommend` on bad input: a message naming the problem and
exit status 2, never a traceback, whether or not a stack runs (the input is read first)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aisle.cli import app

REPO = Path(__file__).resolve().parents[3]


def run(*args: str):
    result = CliRunner().invoke(app, ["eval", *args])
    # typer.Exit(2) from aisle.errors.fail, not an exception escaping the command.
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {
        "queries": write(tmp_path / "queries.csv", "query_id,query\n1,cordless drill\n2,angle bracket\n"),
        "qrels": write(tmp_path / "qrels.csv", "query_id,product_uid,relevance\n1,100001,3\n2,100002,2.33\n"),
        "interactions": write(
            tmp_path / "interactions.csv",
            "user_idx,reviewer_id,position,item_idx,asin,loo_split\n0,U1,0,0,A,train\n0,U1,1,1,B,valid\n",
        ),
        "items": write(tmp_path / "items.csv", "item_idx,asin,text\n0,A,Thing A\n1,B,Thing B\n"),
        "wrong": write(tmp_path / "wrong.csv", "a,b\n1,2\n"),
        "empty": write(tmp_path / "empty.csv", ""),
    }


def test_search_missing_file(files, tmp_path):
    out = run("search", "--queries", str(tmp_path / "nope.csv"), "--qrels", str(files["qrels"]))
    assert "nope.csv: no such file" in out


@pytest.mark.parametrize("which, expected", [
    ("queries", "expected columns query_id, query"),
    ("qrels", "expected columns query_id, product_uid, relevance"),
])
def test_search_wrong_columns(files, which, expected):
    args = {"queries": files["queries"], "qrels": files["qrels"], which: files["wrong"]}
    out = run("search", "--queries", str(args["queries"]), "--qrels", str(args["qrels"]))
    assert expected in out


def test_search_empty_file(files):
    assert "expected columns query_id, query" in run("search", "--queries", str(files["empty"]), "--qrels", str(files["qrels"]))


def test_search_relevance_not_a_number(files, tmp_path):
    qrels = write(tmp_path / "q.csv", "query_id,product_uid,relevance\n1,100001,high\n")
    out = run("search", "--queries", str(files["queries"]), "--qrels", str(qrels))
    assert "q.csv:2: relevance 'high' is not a number" in out


def test_search_no_judged_query(files, tmp_path):
    qrels = write(tmp_path / "q.csv", "query_id,product_uid,relevance\n99,100001,3\n")
    assert "has judgements" in run("search", "--queries", str(files["queries"]), "--qrels", str(qrels))


def test_search_binary_file(files, tmp_path):
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(b"\xff\xfe\x00\x01query_id\x00")
    run("search", "--queries", str(garbage), "--qrels", str(files["qrels"]))


def test_recommend_missing_items_file(files, tmp_path):
    out = run("recommend", "--interactions", str(files["interactions"]), "--test", str(files["interactions"]),
              "--items", str(tmp_path / "nope.csv"))
    assert "nope.csv: no such file" in out


def test_recommend_wrong_columns(files):
    out = run("recommend", "--interactions", str(files["wrong"]), "--test", str(files["interactions"]),
              "--items", str(files["items"]))
    assert "expected columns reviewer_id, position, asin" in out


def test_recommend_position_not_an_integer(files, tmp_path):
    bad = write(tmp_path / "i.csv", "reviewer_id,position,asin,loo_split\nU1,first,A,train\n")
    out = run("recommend", "--interactions", str(bad), "--test", str(bad), "--items", str(files["items"]))
    assert "i.csv:2: position 'first' is not an integer" in out


def test_recommend_no_rows(files, tmp_path):
    header_only = write(tmp_path / "h.csv", "reviewer_id,position,asin,loo_split\n")
    out = run("recommend", "--interactions", str(header_only), "--test", str(header_only), "--items", str(files["items"]))
    assert "no interactions" in out


@pytest.mark.parametrize("command", ["search", "recommend"])
def test_valid_input_without_a_stack_says_what_is_missing(files, tmp_path, command):
    # The real entry point in a fresh process: no stack recorded in its run dir, no URLs set.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISLE_")}
    env["AISLE_RUN_DIR"] = str(tmp_path / "run")
    args = (["--queries", str(files["queries"]), "--qrels", str(files["qrels"])] if command == "search" else
            ["--interactions", str(files["interactions"]), "--test", str(files["interactions"]),
             "--items", str(files["items"])])
    proc = subprocess.run([sys.executable, "-m", "aisle.cli", "eval", command, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "needs the local stack" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_search_uses_the_stack_gateway_only_for_the_stack_database(monkeypatch, tmp_path):
    import json

    import psutil

    from aisle.commands.models import _gateway_of_database
    from core.settings import get_settings

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    me = psutil.Process()
    # A live "gateway" of a recorded stack (this process stands in for it).
    (run_dir / "stack.json").write_text(json.dumps({"gateway": {
        "name": "gateway", "address": "127.0.0.1:50051", "pid": me.pid, "create_time": me.create_time()}}))
    for key in ("AISLE_DATABASE_URL", "AISLE_GATEWAY_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AISLE_RUN_DIR", str(run_dir))
    try:
        get_settings.cache_clear()
        assert _gateway_of_database() == "127.0.0.1:50051"
        # Another database: the stack's gateway serves another catalog, so none (in-process).
        monkeypatch.setenv("AISLE_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/other")
        get_settings.cache_clear()
        assert _gateway_of_database() is None
        monkeypatch.setenv("AISLE_GATEWAY_ADDRESS", "10.0.0.1:50051")
        get_settings.cache_clear()
        assert _gateway_of_database() == "10.0.0.1:50051"
    finally:
        get_settings.cache_clear()


def test_sigterm_drops_the_scratch_database(files, postgres_server, triton_url, tmp_path):
    import signal
    import time

    import psycopg

    def scratch_databases() -> set[str]:
        with psycopg.connect(postgres_server.url, autocommit=True) as conn:
            return {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'aisle_eval_%'")}

    # Given `aisle eval recommend` running against the session's Postgres and Triton
    before = scratch_databases()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISLE_")}
    env.update(AISLE_RUN_DIR=str(tmp_path / "run"), AISLE_DATABASE_URL=postgres_server.url, AISLE_TRITON_URL=triton_url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "aisle.cli", "eval", "recommend", "--interactions", str(files["interactions"]),
         "--test", str(files["interactions"]), "--items", str(files["items"])],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # when it is sent SIGTERM once its scratch database exists
    deadline = time.monotonic() + 60
    while not (created := scratch_databases() - before) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert created, "no scratch database appeared"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    # then it stops without a traceback and drops the database, as on Ctrl-C
    assert proc.returncode != 0
    assert "Traceback" not in err, err
    assert not created & scratch_databases()
