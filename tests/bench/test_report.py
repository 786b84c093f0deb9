"""bench/report.py on small fake results: the newest file of each kind is reported with its
goals and plots, and what is missing or unreadable is "not measured", never an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write(folder: Path, name: str, data) -> Path:
    path = folder / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def gateway_result(qps_at_16: float) -> dict:
    def row(c, qps, p99):
        return {"concurrency": c, "gateway": {"qps": qps, "p50_ms": p99 / 3, "p99_ms": p99, "errors": 0},
                "in_process": {"qps": qps * 1.2, "p99_ms": p99 * 0.8},
                "ratios": {"qps_gateway_over_in_process": 1 / 1.2}}

    return {
        "machine": {"cpus": 2, "platform": "Linux-test"},
        "search": [row(1, 30.0, 40.0), row(4, 80.0, 55.0), row(16, qps_at_16, 120.0)],
        "recommend": [row(1, 50.0, 20.0), row(4, 120.0, 35.0)],
        "goals": {"search_qps_at_c16": {"goal": ">= 100.0", "value": qps_at_16, "pass": qps_at_16 >= 100}},
    }


SOAK = {
    "minutes": 2, "qps": 20.0, "sent": 2400, "answered": 2399, "failed": 1, "degraded": 10,
    "per_minute": [{"minute": 1, "sent": 1200, "failed": 1, "degraded": 6, "p50_ms": 20.0, "p99_ms": 80.0},
                   {"minute": 2, "sent": 1200, "failed": 0, "degraded": 4, "p50_ms": 21.0, "p99_ms": 84.0}],
    "samples": [{"minute": 1, "rss_mb": {"gateway": 300.0, "tritonserver": 900.0}},
                {"minute": 2, "rss_mb": {"gateway": 310.0, "tritonserver": 905.0}}],
    "goals": {"no_failed_requests": {"goal": "== 0", "value": 1, "pass": False},
              "p99_drift_first_to_last_minute": {"goal": "<= 0.2", "value": 0.05, "pass": True}},
}

CHAOS = {"machine": {"cpus": 2}, "tests": {
    "tests/chaos/test_triton_killed.py::test_kill": {"outcome": "passed", "seconds": 30.1,
                                                     "measured": {"recovery_s": 1.7, "by_outcome": {"OK": 3}}},
    "tests/chaos/test_broker_restart.py::test_broker": {"outcome": "failed", "seconds": 18.0, "measured": {}},
}}


@pytest.fixture
def results(tmp_path) -> Path:
    folder = tmp_path / "results"
    folder.mkdir()
    return folder


def test_given_gateway_soak_and_chaos_results_when_reported_then_each_has_its_table_goals_and_plots(results):
    # Given an older and a newer gateway run, a soak and a chaos summary
    write(results, "gateway-20260101-100000.json", gateway_result(qps_at_16=50.0))
    write(results, "gateway-20260102-100000.json", gateway_result(qps_at_16=150.0))
    write(results, "soak-20260102-110000.json", SOAK)
    write(results, "chaos-20260102-120000.json", CHAOS)

    # When the report is built
    path = report.build(results)

    # Then it is REPORT.md in the results folder, reporting the newest gateway run
    assert path == results / "REPORT.md"
    text = path.read_text()
    assert "gateway-20260102-100000.json" in text and "gateway-20260101-100000.json" not in text
    assert "| search_qps_at_c16 | 150 | >= 100.0 | pass |" in text
    # with the soak's failed goal and per-minute table, and the chaos outcomes
    assert "| no_failed_requests | 1 | == 0 | FAIL |" in text
    assert "| 2 | 1200 | 0 | 4 | 21 | 84 | 310 | 905 |" in text
    assert "| test_broker | failed | 18 |" in text and "1 of 2 tests passed" in text
    assert "recovery_s 1.7, by_outcome {OK: 3}" in text
    # and the plots it links exist as PNG files
    for name in ("report-gateway-qps.png", "report-soak-latency.png", "report-ratios.png"):
        assert f"]({name})" in text
        assert (results / name).read_bytes()[:8] == PNG_MAGIC


def test_given_no_results_when_reported_then_every_input_is_not_measured(results):
    # Given an empty results folder
    # When the report is built
    text = report.build(results).read_text()
    # Then every kind is listed as not measured, and no plot is linked
    for kind in report.KINDS:
        assert f"| {kind} | – | not measured |" in text
    assert text.count("not measured") >= 2 * len(report.KINDS)
    assert ".png" not in text


def test_given_an_unreadable_and_a_quality_file_when_reported_then_one_is_named_and_the_other_tabled(results, tmp_path):
    # Given a truncated encoder result and an `aisle eval search --json` result saved by hand
    write(results, "encoder-20260101-100000.json", '{"titles": 2000, "ensem')
    write(results, "eval-search-20260101-100000.json",
          {"ndcg@10": 0.41, "recall@100": 0.9, "ratio_vs_fusion": 1.2, "machine": {"cpus": 2}})
    # When the report is written elsewhere
    out = tmp_path / "out"
    text = report.build(results, out).read_text()
    # Then the encoder is not measured, with the file and why
    assert "| encoder | encoder-20260101-100000.json | not measured (unreadable:" in text
    # the quality numbers are tabled, and their ratio to the baseline is plotted
    assert "| ndcg@10 | 0.41 |" in text and "| recall@100 | 0.9 |" in text
    assert (out / "report-ratios.png").read_bytes()[:8] == PNG_MAGIC
    # and a kind whose name extends another's is not mistaken for it
    assert "| eval-search | eval-search-20260101-100000.json | no goals |" in text


def test_given_a_longer_kind_name_when_picking_the_latest_then_it_is_not_taken_for_the_shorter(results):
    write(results, "eval-search-extra-20260101-100000.json", {"x": 1})
    assert report.latest(results, "eval-search").path is None


def test_bare_thresholds_are_judged_as_floors_for_ratios_and_ceilings_for_shares():
    from bench.report import goals_rows

    # given benchmark JSON with bare thresholds, one value under ratio_<name>
    data = {
        "ratio_vs_onnxruntime": 0.7,
        "incremental_share_of_full": 0.01,
        "goals": {"vs_onnxruntime": 0.85, "incremental_share_of_full": 0.03, "missing": 1.0},
    }
    # when the goals are tabulated
    verdicts = {row[0]: row[3] for row in goals_rows(data)}
    # then a low ratio fails, a small share passes, and an absent value is not measured
    assert verdicts == {"vs_onnxruntime": "FAIL", "incremental_share_of_full": "pass", "missing": "not measured"}
