"""The ONNX artifact cache: a build prints nothing but what the caller says about it."""

from __future__ import annotations

import warnings

import onnx

from export import artifacts


def test_a_graph_build_leaves_no_tracer_notes_or_loading_bars(tmp_path, capfd):
    # Given an empty cache
    # when the sentiment head (a MiniLM graph: tracing notes and a weight-loading bar when not
    # silenced) is built into it, with every warning recorded
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        path = artifacts.onnx("sentiment", cache=tmp_path)
    # then the graph is there, and nothing was warned or printed
    assert [i.name for i in onnx.load(str(path), load_external_data=False).graph.input] == ["input_ids", "attention_mask"]
    assert [f"{w.category.__name__}: {w.message}" for w in seen] == []
    out, err = capfd.readouterr()
    assert "Loading weights" not in out + err
