"""The embedded default data set: 1,797 handwritten digits, 8x8 pixels, values 0..16.

This is the UCI "Optical Recognition of Handwritten Digits" test set (E. Alpaydin and
C. Kaynak, 1998; CC BY 4.0), the same copy scikit-learn ships as ``load_digits``. It lives in
``digits.npz`` beside this file so that ``lowbit train`` runs with nothing to download.
A fixed, class-stratified split keeps 20% of the images for testing.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch

from lowbit.data.bundle import tensor_bundle
from lowbit.data.registry import DataBundle, DataOptions, register_dataset

NUM_CLASSES = 10
# Pixel values are 0..16; loaders normalize uint8 / 255, so these are in that unit.
MEAN = (4.88 / 255,)
STD = (6.02 / 255,)


def load_digits(test_fraction: float = 0.2, seed: int = 0):
    """``(train_images, train_labels, test_images, test_labels)``; images uint8 [N, 1, 8, 8]."""
    with resources.files("lowbit.data").joinpath("digits.npz").open("rb") as f:
        archive = np.load(f)
        images, labels = archive["images"], archive["labels"]
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(labels), dtype=bool)
    for digit in range(NUM_CLASSES):
        members = np.flatnonzero(labels == digit)
        chosen = rng.choice(members, size=round(len(members) * test_fraction), replace=False)
        test_mask[chosen] = True
    images = torch.from_numpy(images).unsqueeze(1)
    labels = torch.from_numpy(labels.astype(np.int64))
    test = torch.from_numpy(test_mask)
    return images[~test], labels[~test], images[test], labels[test]


@register_dataset("digits")
def build_digits(options: DataOptions) -> DataBundle:
    """The embedded digits; training batches get a 1-pixel random shift (no flips: digits)."""
    return tensor_bundle(
        *load_digits(), options, num_classes=NUM_CLASSES, mean=MEAN, std=STD, pad=1
    )
