"""Tokenisation exactly as Triton's tokenizer step does it, and padding into model batches.

Serving encodes one text at a time with the model directory's ``tokenizer.json``, no padding and
truncation at a per-model max length; training must produce the same ids, so both go through here.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import torch
from tokenizers import Tokenizer

from export.encoder import base_model_dir

# BERT's [PAD]: masked out everywhere, so its value never reaches an output.
PAD_ID = 0


@cache
def load_tokenizer(max_length: int) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(base_model_dir() / "tokenizer.json"))
    # tokenizer.json ships with fixed padding to 128; serving pads nothing and truncates per model.
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def encode(texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Wordpiece ids with [CLS]/[SEP], truncated to ``max_length``."""
    return [e.ids for e in load_tokenizer(max_length).encode_batch(list(texts))]


def pad(sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence: ``(input_ids, attention_mask)``, both int64."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), PAD_ID, dtype=torch.int64)
    mask = torch.zeros((len(sequences), length), dtype=torch.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.int64)
        mask[row, : len(seq)] = 1
    return ids, mask


def length_sorted_batches(sequences: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Index batches of similar length, so padding (pure wasted compute) stays small."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
