"""ImageNet (ILSVRC-2012) as ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` folders.

The validation images must be sorted into class folders (the usual layout); labels follow
the sorted folder names, which for WordNet ids is the standard class order.
"""

from __future__ import annotations

from lowbit.data.folders import find_tree, require_dir
from lowbit.data.registry import DataBundle, DataOptions, register_dataset
from lowbit.data.stream import stream_bundle
from lowbit.errors import LowbitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXPECTED = "train/<wnid>/ and val/<wnid>/ image folders (val sorted into class folders)"


@register_dataset("imagenet")
def build_imagenet(options: DataOptions) -> DataBundle:
    """224-pixel random-resized crops + flips for training; resize 256, centre 224 for eval."""
    data_dir = require_dir(options.data_dir, "imagenet", EXPECTED)
    tree = find_tree(data_dir)
    if tree is None:
        raise LowbitError(f"expected {EXPECTED} in {data_dir}")
    return stream_bundle(tree, options, mean=IMAGENET_MEAN, std=IMAGENET_STD)
