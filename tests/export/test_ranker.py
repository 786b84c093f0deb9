"""The ranker export mechanism: a small LightGBM ranker to ONNX, scores equal to LightGBM's."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export import ranker


@pytest.fixture(scope="module")
def small_ranker(tmp_path_factory):
    import lightgbm as lgb

    # given a small ranker trained on synthetic groups where feature 0 decides relevance
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5)).astype(np.float32)
    y = (x[:, 0] > 0.5).astype(int) + (x[:, 0] > 1.2).astype(int)
    booster = lgb.train(
        {"objective": "lambdarank", "verbose": -1, "num_leaves": 7, "seed": 0, "deterministic": True},
        lgb.Dataset(x, y, group=[20] * 30),
        num_boost_round=20,
    )
    names = tuple(f"f{i}" for i in range(5))
    weights = ranker.save(booster, names, tmp_path_factory.mktemp("ranker"))
    return weights, names, x


def test_onnx_scores_equal_lightgbm(small_ranker, tmp_path):
    weights, names, x = small_ranker
    path = ranker.to_onnx(weights, tmp_path / "ranker.onnx", expected_features=names)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["features"]
    assert [o.name for o in graph.output] == ["score"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"features": x})[0].reshape(-1)
    np.testing.assert_allclose(got, ranker.predict_reference(weights, x), rtol=1e-4, atol=1e-4)
    # and it ranks by the informative feature
    assert np.corrcoef(got, x[:, 0])[0, 1] > 0.8


def test_a_ranker_trained_on_other_features_is_refused(small_ranker, tmp_path):
    weights, names, _ = small_ranker
    with pytest.raises(ranker.RankerError, match="retrain"):
        ranker.to_onnx(weights, tmp_path / "r.onnx", expected_features=names[:-1] + ("other",))
