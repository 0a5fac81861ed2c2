"""Training-pipeline images/s divided by ResNet-20's training images/s, same machine, same run.

The pipeline is the CIFAR-10 ``TensorLoader`` exactly as ``lowbit train`` builds it (uint8
images on the training device; shuffle, zero-pad 4 and random 32x32 crop, horizontal flip,
normalization; batches of 128), consumed batch by batch. ResNet-20's rate is a float forward,
loss, backward and SGD step on batches of 128. A ratio of 20 means feeding a step costs at
most 5% of computing it. Loader passes and training steps alternate round by round, so a change
in machine load hits both; the figure is the median of the per-round ratios.

The images are CIFAR-10's training split decoded from ``../shared/data/cifar10-jpg.tar.gz``
when it exists, else synthetic uint8 images of the same shape (the loader's cost does not depend
on pixel values); the output says which.

    python bench/data_throughput.py [--device cuda] [--rounds 5] [--synthetic]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lowbit.data.cifar import CIFAR10, CIFAR10_CLASSES, cifar_bundle
from lowbit.data.registry import DataOptions
from lowbit.models import build_model

TARBALL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpg.tar.gz"
BATCH = 128
TARGET_RATIO = 20.0


def decode_train_split(tarball: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``uint8 [N, 3, 32, 32]`` images and labels of ``<root>/train/<class>/*.jpg`` members."""
    images, labels = [], []
    with tarfile.open(tarball, "r|gz") as archive:
        for member in archive:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 4 or parts[-3] != "train":
                continue
            data = archive.extractfile(member).read()
            images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            labels.append(CIFAR10_CLASSES.index(parts[-2]))
    array = np.stack(images).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(array)), torch.tensor(labels)


def synthetic_train_split(n: int = 50_000) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, 10, (n,), generator=generator)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_pass(loader, batches: int, device: torch.device) -> tuple[int, float]:
    """Images and seconds for the first ``batches`` batches of a fresh epoch."""
    loader.set_epoch(loader.epoch + 1)
    seen = 0
    start = time.perf_counter()
    for index, (images, _) in enumerate(loader):
        seen += images.shape[0]
        if index + 1 == batches:
            break
    synchronize(device)
    return seen, time.perf_counter() - start


def training_steps(model, optimizer, images, labels, steps: int, device) -> tuple[int, float]:
    """Images and seconds for ``steps`` float training steps on one batch."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    synchronize(device)
    return steps * images.shape[0], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, help="loader batches per round (default: auto)")
    parser.add_argument("--steps", type=int, help="training steps per round (default: auto)")
    parser.add_argument("--synthetic", action="store_true", help="skip the shared tarball")
    args = parser.parse_args()
    device = torch.device(args.device)

    if TARBALL.is_file() and not args.synthetic:
        images, labels = decode_train_split(TARBALL)
        source = f"CIFAR-10 train split decoded from {TARBALL.resolve()}"
    else:
        images, labels = synthetic_train_split()
        source = "synthetic uint8 CIFAR-shaped images (shared tarball absent or --synthetic)"
    options = DataOptions(batch_size=BATCH, device=device, seed=0)
    # The test split is unused here: a batch of training images stands in for it.
    train = cifar_bundle((images, labels, images[:BATCH], labels[:BATCH]), options, CIFAR10).train

    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    batch_images, batch_labels = next(iter(train))
    # A GPU round reads a whole epoch; a CPU round, where one step takes ~0.2 s, a fifth of it.
    gpu = device.type == "cuda"
    batches = args.batches or (len(train) if gpu else len(train) // 5)
    steps = args.steps or (50 if gpu else 5)
    loader_pass(train, 5, device)  # warm-up: allocator, kernels, lazily built index tensors
    training_steps(model, optimizer, batch_images, batch_labels, 3, device)

    pipeline_rates, train_rates, ratios = [], [], []
    for _ in range(args.rounds):
        loaded, loader_seconds = loader_pass(train, batches, device)
        trained, train_seconds = training_steps(
            model, optimizer, batch_images, batch_labels, steps, device
        )
        pipeline_rates.append(loaded / loader_seconds)
        train_rates.append(trained / train_seconds)
        ratios.append(pipeline_rates[-1] / train_rates[-1])

    pipeline, resnet20, ratio = map(statistics.median, (pipeline_rates, train_rates, ratios))
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"data: {source} ({images.shape[0]} images)")
    print(f"device: {device}{threads}; median of {args.rounds} rounds")
    print(f"pipeline  {pipeline:9.0f} images/s (shuffle, pad-crop, flip, normalize; batch {BATCH})")
    print(f"resnet20  {resnet20:9.0f} images/s (float forward+backward+SGD step; batch {BATCH})")
    print(f"ratio     {ratio:9.1f} (target >= {TARGET_RATIO:g})")
    values = {
        "pipeline_images_per_s": round(pipeline, 1),
        "resnet20_train_images_per_s": round(resnet20, 1),
        "ratio": round(ratio, 2),
    }
    targets = {"ratio": TARGET_RATIO}
    print(json.dumps({"bench": "data_throughput", "values": values, "targets": targets}))


if __name__ == "__main__":
    main()
