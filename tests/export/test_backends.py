"""Plain logic of the Python-backend models, outside Triton."""

from __future__ import annotations

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
