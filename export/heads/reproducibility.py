"""Seeding for training runs: same seed and thread count give bit-identical weights and metrics."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed every RNG training touches; returns a generator for data order.

    CPU kernels are deterministic for a fixed thread count; a different ``torch.get_num_threads()``
    can change float summation order, so compare runs at the same thread count.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    return torch.Generator().manual_seed(seed)
