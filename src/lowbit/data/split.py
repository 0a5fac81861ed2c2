"""The validation split: training images held out to choose and check models on, drawn from
``DataOptions.seed`` alone, so that every process of a distributed run holds out the same ones.

The split is a function of the seed, ``val_fraction`` and the training set as ``limit`` left it,
so a run's config reproduces it; every builder calls ``validation_split``.
"""

from __future__ import annotations

import numpy as np
import torch

from lowbit.data.registry import DataOptions
from lowbit.errors import LowbitError

# Mixed into the seed so that the split's draws are unrelated to the training shuffle's.
VALIDATION_STREAM = 0x76616C  # "val"


def validation_split(count: int, options: DataOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)``: the positions, in order, of the ``count`` training images that stay
    for training and of the ``round(count * options.val_fraction)`` held out for validation."""
    fraction = options.val_fraction
    held = round(count * fraction)
    if held == 0:
        raise LowbitError(
            f"data.val_fraction={fraction} holds out none of the {count} training images; "
            "raise it, or set it to 0 for no validation split"
        )
    if held == count:
        raise LowbitError(
            f"data.val_fraction={fraction} holds out all {count} training images and leaves "
            "none to train on; lower it"
        )
    # SeedSequence takes words from 0 up: a negative seed wraps around, as torch's do.
    rng = np.random.default_rng([VALIDATION_STREAM, options.seed % 2**64])
    chosen = np.zeros(count, dtype=bool)
    chosen[rng.permutation(count)[:held]] = True
    return torch.from_numpy(np.flatnonzero(~chosen)), torch.from_numpy(np.flatnonzero(chosen))
