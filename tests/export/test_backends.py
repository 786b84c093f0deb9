"""Plain logic of the Python-backend models, outside Triton."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from export.backends.onnx_runner import length_buckets

sorted_lengths = st.lists(st.integers(min_value=1, max_value=256), min_size=1, max_size=300).map(sorted)


def _padded_tokens(lengths, spans, call_cost):
    return sum((end - start) * lengths[end - 1] + call_cost for start, end in spans)


@given(lengths=sorted_lengths, max_rows=st.integers(1, 80), call_cost=st.integers(0, 500))
def test_buckets_cover_every_row_once_in_order_within_the_row_cap(lengths, max_rows, call_cost):
    # when
    spans = length_buckets(lengths, max_rows, call_cost)
    # then
    assert spans[0][0] == 0 and spans[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all(0 < end - start <= max_rows for start, end in spans)


@given(lengths=sorted_lengths, max_rows=st.integers(1, 80), call_cost=st.integers(0, 500))
def test_buckets_never_cost_more_than_fixed_size_buckets(lengths, max_rows, call_cost):
    # given: the fixed split the runner used before
    fixed = [(b, min(b + max_rows, len(lengths))) for b in range(0, len(lengths), max_rows)]
    # when
    spans = length_buckets(lengths, max_rows, call_cost)
    # then
    assert _padded_tokens(lengths, spans, call_cost) <= _padded_tokens(lengths, fixed, call_cost)


def test_a_length_jump_starts_a_new_bucket():
    # given: 10 short titles and 10 long ones, room for all 20 in one bucket
    lengths = [8] * 10 + [40] * 10
    # when
    spans = length_buckets(lengths, max_rows=64, call_cost_tokens=50)
    # then: 10x8 + 10x40 + 2 calls beats 20x40 + 1 call
    assert spans == [(0, 10), (10, 20)]


def test_a_small_jump_is_not_worth_a_call():
    # given
    lengths = [10] * 10 + [11] * 10
    # when
    spans = length_buckets(lengths, max_rows=64, call_cost_tokens=50)
    # then: 10 padded tokens cost less than a second onnxruntime call
    assert spans == [(0, 20)]


# --- sentiment_postprocess: the lexical model's features and the average ---------------------

def test_review_buckets_are_the_crc32_of_each_word_and_word_pair():
    import zlib

    from export.backends.sentiment_postprocess import BUCKETS, review_buckets

    # given a review with case, punctuation, a one-letter word and a repeated word
    text = "Great pan, a GREAT price!"
    # when its features are hashed
    buckets = review_buckets(text)
    # then they are the lowercased words of two or more characters and their adjacent pairs,
    # once each, by CRC-32 (the contract the committed lexicon was trained on)
    grams = ["great", "pan", "great", "price", "great pan", "pan great", "great price"]
    assert buckets.tolist() == sorted({zlib.crc32(g.encode()) % BUCKETS for g in grams})
    assert review_buckets("").size == 0


@given(text=st.text(max_size=200))
def test_the_lexical_probability_is_the_sigmoid_of_the_summed_bucket_weights(text):
    from export.backends.sentiment_postprocess import lexical_positive, review_buckets

    # given weights that differ per bucket
    weights = np.sin(np.arange(1 << 12, dtype=np.float32))
    # when one review is scored
    (p,) = lexical_positive([text], weights, 0.25)
    # then it is the sigmoid of the bias plus the weights of its distinct buckets
    logit = 0.25 + weights[review_buckets(text, len(weights))].sum()
    assert abs(p - 1 / (1 + np.exp(-logit))) < 1e-5


def test_fuse_averages_the_two_models_and_labels_by_the_average():
    from export.backends.sentiment_postprocess import fuse

    # given a review the transformer calls mildly positive and the lexicon clearly negative
    probs = np.array([[0.4, 0.6], [0.1, 0.9]], dtype=np.float32)
    lexical = np.array([0.1, 0.8], dtype=np.float32)
    # when they are averaged
    labels, p = fuse(probs, lexical, 0.5)
    # then the first turns negative and the second stays positive, each with the average's probability
    assert labels.tolist() == ["negative", "positive"]
    np.testing.assert_allclose(p, [0.65, 0.85], atol=1e-6)
    # and without the lexicon the transformer decides alone
    labels, p = fuse(probs, None, 0.5)
    assert labels.tolist() == ["positive", "positive"]
    np.testing.assert_allclose(p, [0.6, 0.9], atol=1e-6)


def test_a_lexicon_trained_on_one_label_only_predicts_its_smoothed_share():
    from export.heads import sentiment_lexicon

    # given training reviews that are all positive
    weights, bias = sentiment_lexicon.fit(["works well", "great pan", "love it"], np.ones(3))
    # then no word weighs anything and every review gets the smoothed share (3 + 1) / (3 + 2)
    assert not weights.any()
    np.testing.assert_allclose(sentiment_lexicon.predict(["awful", ""], weights, bias), [0.8, 0.8], atol=1e-6)


# --- classifier_postprocess: the lexical model's features and the average --------------------

def test_name_buckets_are_the_crc32_of_words_word_pairs_and_character_grams():
    import zlib

    from export.backends.classifier_postprocess import CHAR_BUCKETS, WORD_BUCKETS, name_buckets

    # given a product name with case, punctuation and a repeated word
    name = "Milk, 2% MILK"
    # when its features are hashed
    buckets = name_buckets(name)
    # then the lowercased words and their pairs take the first range, and the character 2-5 grams
    # of the words joined by one space, padded by one space, the second (the committed contract)
    words = ["milk", "2", "milk", "milk 2", "2 milk"]
    padded = " milk 2 milk "
    chars = [padded[i : i + n] for n in range(2, 6) for i in range(len(padded) - n + 1)]
    expected = {zlib.crc32(g.encode()) % WORD_BUCKETS for g in words}
    expected |= {WORD_BUCKETS + zlib.crc32(c.encode()) % CHAR_BUCKETS for c in chars}
    assert buckets.tolist() == sorted(expected)
    assert name_buckets("Milk 2% milk").tolist() == buckets.tolist()


def _toy_lexicon(aisles: int = 6):
    from export.backends.classifier_postprocess import BUCKETS

    rng = np.random.default_rng(0)
    return {
        "weights": rng.integers(-127, 128, size=(BUCKETS, aisles)).astype(np.int8),
        "scale": rng.uniform(0.001, 0.05, size=aisles).astype(np.float32),
        "bias": rng.normal(size=aisles).astype(np.float32),
        "idf": rng.uniform(1.0, 10.0, size=BUCKETS).astype(np.float32),
        "temperature": 4.0,
        "department_of_aisle": np.array([0, 0, 1, 1, 1, 2][:aisles]),
    }


@given(name=st.text(min_size=1, max_size=120))
def test_the_lexical_aisle_probabilities_are_the_tempered_softmax_of_the_tfidf_scores(name):
    from export.backends.classifier_postprocess import lexical_aisle_probs, name_buckets

    # given int8 weights that differ per bucket and aisle, and an IDF per bucket
    lexicon = _toy_lexicon()
    # when one name, and the same name among others, are scored
    (probs,) = lexical_aisle_probs([name], lexicon)
    batched = lexical_aisle_probs(["cat food", name, "red wine"], lexicon)[1]
    # then it is the softmax, at the temperature, of the bias plus the scaled weights times the
    # name's distinct buckets' IDFs, L2-normalised; and its batch does not change it
    buckets = name_buckets(name)
    x = lexicon["idf"][buckets].astype(np.float64)
    x /= np.linalg.norm(x)
    scores = lexicon["bias"] + lexicon["scale"] * (lexicon["weights"][buckets].astype(np.float64).T @ x)
    logits = lexicon["temperature"] * scores
    expected = np.exp(logits - logits.max())
    np.testing.assert_allclose(probs, expected / expected.sum(), atol=1e-6)
    np.testing.assert_array_equal(batched, probs)


def test_classifier_fuse_averages_aisles_and_sums_the_lexicons_aisles_per_department():
    from export.backends.classifier_postprocess import fuse

    # given the transformer's distributions for one name (departments summed from its aisles)
    # and a lexicon sure of aisle 4, which sits in department 1
    department_of_aisle = np.array([0, 0, 1, 1, 1, 2])
    aisle = np.array([[0.5, 0.2, 0.1, 0.1, 0.0, 0.1]], dtype=np.float32)
    probs = {"department": np.array([[0.7, 0.2, 0.1]], dtype=np.float32), "aisle": aisle}
    lexical = np.array([[0.0, 0.0, 0.0, 0.1, 0.9, 0.0]], dtype=np.float32)
    # when they are averaged
    fused = fuse(probs, lexical, department_of_aisle, 0.5)
    # then aisle 4 wins, department 1 wins, and the departments are still the aisles' sums
    np.testing.assert_allclose(fused["aisle"], [[0.25, 0.1, 0.05, 0.1, 0.45, 0.05]], atol=1e-6)
    np.testing.assert_allclose(fused["department"], [[0.35, 0.6, 0.05]], atol=1e-6)
    # and without the lexicon the transformer decides alone
    assert fuse(probs, None, department_of_aisle, 0.5) is probs


def test_a_classifier_lexicon_saves_as_int8_and_serves_what_was_fitted(tmp_path):
    from export.heads import classifier_lexicon

    # given names of three of four aisles
    names = ["whole milk", "skim milk", "organic milk", "dog food", "cat food", "puppy food", "red wine", "white wine"]
    aisles = np.array([0, 0, 0, 1, 1, 1, 3, 3])
    weights, bias, idf = classifier_lexicon.fit(names, aisles, n_aisles=4)
    # when it is saved (int8) and loaded as the post-processing does
    lexicon = classifier_lexicon.save(weights, bias, idf, np.array([0, 1, 1, 2]), tmp_path)
    served = classifier_lexicon.predict(["2% milk", "dry dog food", "wine"], lexicon)
    # then the weights are int8 and predict the aisles the float model predicts
    assert lexicon["weights"].dtype == np.int8 and lexicon["weights"].shape == (classifier_lexicon.BUCKETS, 4)
    floats = np.asarray(classifier_lexicon.features(["2% milk", "dry dog food", "wine"], idf) @ weights.T) + bias
    assert served.argmax(1).tolist() == floats.argmax(1).tolist() == [0, 1, 3]
    # and each bucket weighs by its smoothed IDF over the names: "wine" is in 2 of 8, "food" in 3
    import zlib

    from export.backends.classifier_postprocess import WORD_BUCKETS

    word = lambda w: zlib.crc32(w.encode()) % WORD_BUCKETS
    np.testing.assert_allclose(idf[[word("wine"), word("food")]], np.log(9 / np.array([3, 4])) + 1, rtol=1e-6)
    # and the aisle without names gets no weight and stays the least likely
    assert not weights[2].any()
    assert (served[:, 2] < served[:, [0, 1, 3]].min(axis=1)).all()
    # and the same fit writes the same bytes
    again = tmp_path / "again"
    again.mkdir()
    classifier_lexicon.save(*classifier_lexicon.fit(names, aisles, n_aisles=4), np.array([0, 1, 1, 2]), again)
    for name in (classifier_lexicon.LEXICON_WEIGHTS, classifier_lexicon.LEXICON_META):
        assert (tmp_path / name).read_bytes() == (again / name).read_bytes()
