"""The APoT authors' ResNet-20 4-bit checkpoint (``../shared/checkpoints/apot-official``),
imported, exported as an integer ONNX graph and run on onnxruntime, classifies real CIFAR-10
JPEG test images (``../shared/data``) exactly as ``lowbit eval`` of the checkpoint does."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from lowbit.cli import main

pytest.importorskip("onnx", reason="the onnx extra is not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CHECKPOINT = SHARED / "checkpoints" / "apot-official" / "res20_4bit.pth.tar"
JPEG_TAR = SHARED / "data" / "cifar10-jpg.tar.gz"
PER_CLASS = 50  # 500 test images: under a few seconds per evaluation

pytestmark = pytest.mark.skipif(
    not (CHECKPOINT.is_file() and JPEG_TAR.is_file()), reason="../shared is absent"
)


def jpeg_subset(root: Path, per_class: int) -> Path:
    """A cifar10 tree under ``root``: the first ``per_class`` test JPEGs of every class (bytes
    unchanged) in test/, one of them per class in train/ (the loader wants both splits)."""
    with tarfile.open(JPEG_TAR, "r|gz") as archive:
        for member in archive:
            parts = Path(member.name).parts  # cifar10-jpg/test/<class>/<index>.jpg
            if len(parts) >= 2 and parts[1] == "train":
                break  # the archive stores test/ first
            if not (member.isfile() and len(parts) == 4) or int(Path(parts[3]).stem) >= per_class:
                continue
            data = archive.extractfile(member).read()
            splits = ("test", "train") if int(Path(parts[3]).stem) == 0 else ("test",)
            for split in splits:
                path = root / split / parts[2] / parts[3]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
    return root


def test_onnxruntime_top1_equals_lowbit_eval_of_the_apot_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    tree = jpeg_subset(tmp_path / "cifar10", PER_CLASS)
    checkpoint, onnx_file = tmp_path / "r20-4bit.pt", tmp_path / "r20-4bit.onnx"
    assert main(["import", "apot-official", str(CHECKPOINT), "--bits", "4",
                 "-o", str(checkpoint)]) == 0
    assert main(["export", str(checkpoint), "-o", str(tmp_path / "export"),
                 "--onnx", str(onnx_file)]) == 0
    summary = capsys.readouterr().out
    # 18 stage convs + 2 shortcuts on integers; the 8-bit maxscale conv1 (image input, codes
    # beyond 8 bits) and fc (float input) stay float and are named.
    assert "20 integer layers" in summary and "conv1 (float input" in summary
    data = ["--data", "cifar10", "--data-dir", str(tree), "--json"]
    assert main(["eval", str(checkpoint), *data, "--device", "cpu"]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert main(["eval", "--onnx", str(onnx_file), *data]) == 0
    deployed = json.loads(capsys.readouterr().out)
    # Integer sums are exact where the fake-quant model's float sums round (~1e-7 of a
    # pre-activation): an activation that close to a decision boundary can round one level
    # differently and move a few logits, so top-5 may differ by an image; top-1 does not.
    assert deployed["n"] == expected["n"] == 10 * PER_CLASS
    assert deployed["top1"] == expected["top1"]
    assert abs(deployed["top5"] - expected["top5"]) <= 100 / deployed["n"] + 1e-9
    assert deployed["top1"] > 80  # the model classifies, not only agrees
