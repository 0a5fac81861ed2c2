"""`lowbit import apot-official`: the APoT authors' CIFAR ResNet-20 checkpoints, imported, must
give the authors' forward pass. The reference below is written from the facts of their code
(../shared/docs/REFERENCE-FACTS.md and the checkpoints' README) with plain torch ops, none of
lowbit's quantizers, and is compared with the imported model on real CIFAR-10 JPEG images."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lowbit
from lowbit.cli import main
from lowbit.convert import import_apot_official
from lowbit.evaluate import rebuild_model
from lowbit.train.checkpoint import save_checkpoint

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CHECKPOINTS = SHARED / "checkpoints" / "apot-official"
JPEG_TAR = SHARED / "data" / "cifar10-jpg.tar.gz"
BITS = ("32", "4", "3", "2")
PER_CLASS = 30  # 300 test images
MEAN = torch.tensor([0.491, 0.482, 0.447]).view(1, 3, 1, 1)
STD = torch.tensor([0.247, 0.243, 0.262]).view(1, 3, 1, 1)

needs_shared = pytest.mark.skipif(
    not (CHECKPOINTS.is_dir() and JPEG_TAR.is_file()), reason="../shared is absent"
)


# --- the authors' forward pass, from the facts -------------------------------------------

def authors_levels(b: int) -> torch.Tensor:
    """Their unsigned level sets for B = b (REFERENCE-FACTS), divided by their maximum."""
    terms = {
        2: [[0, 2**-1, 2**-2, 2**-3]],
        3: [[0, 2**-1, 2**-2, 2**-4], [0, 2**-3]],
        4: [[0, 2**-1, 2**-3, 2**-5], [0, 2**-2, 2**-4, 2**-6]],
        5: [[0, 2**-1, 2**-3, 2**-6], [0, 2**-2, 2**-4, 2**-7], [0, 2**-5]],
    }[b]
    sums = torch.zeros(1, dtype=torch.float64)
    for term in terms:
        sums = (sums[:, None] + torch.tensor(term, dtype=torch.float64)[None, :]).flatten()
    values = torch.unique(sums)
    return values / values.max()


def nearest(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The nearest level of every element (first one on a tie), without an N x L tensor."""
    levels = levels.to(x.dtype)
    best, best_distance = torch.zeros_like(x), torch.full_like(x, float("inf"))
    for level in levels:
        distance = (x - level).abs()
        closer = distance < best_distance
        best = torch.where(closer, level, best)
        best_distance = torch.where(closer, distance, best_distance)
    return best


def eight_bit_max(w: torch.Tensor) -> torch.Tensor:
    """First conv / last fc: divided by max(w) (not max |w|), 127 steps, no clipping; their
    straight-through form ``(q - w) + w`` rounds, so it is kept."""
    top = w.max()
    q = w.div(top).mul(127).round().div(127).mul(top)
    return (q - w) + w


def apot_weight(w: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """Standardized with mean and unbiased std (no epsilon), clipped to [-alpha, alpha];
    magnitudes on the B = bits - 1 set with the sign kept; 2 bits: ternary rounding."""
    w = (w - w.mean()) / w.std()
    x = (w / alpha).clamp(-1, 1)
    if bits == 2:
        q = x.abs().round() * x.sign()
    else:
        q = nearest(x.abs(), authors_levels(bits - 1)) * x.sign()
    return q * alpha


def apot_activation(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned, B = bits, divided by alpha and clipped only from above."""
    return nearest((x / alpha).clamp(max=1), authors_levels(bits)) * alpha


def reference_logits(
    state: dict[str, torch.Tensor], bits: int | None, images: torch.Tensor
) -> torch.Tensor:
    """The authors' ResNet-20 on uint8 ``images``: ToTensor, Normalize, then the network."""
    x = (images.float() / 255 - MEAN) / STD

    def bn(x, name):
        return F.batch_norm(
            x, state[f"{name}.running_mean"], state[f"{name}.running_var"],
            state[f"{name}.weight"], state[f"{name}.bias"], training=False, eps=1e-5,
        )

    def conv(x, name, stride, padding):
        w = state[f"{name}.weight"]
        if bits is not None:  # every conv inside the stages, shortcuts included
            x = apot_activation(x, state[f"{name}.act_alpha"], bits)
            w = apot_weight(w, state[f"{name}.weight_quant.wgt_alpha"], bits)
        return F.conv2d(x, w, stride=stride, padding=padding)

    x = F.relu(bn(F.conv2d(x, eight_bit_max(state["conv1.weight"]), padding=1), "bn1"))
    for stage in (1, 2, 3):
        for block in range(3):
            name = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            out = F.relu(bn(conv(x, f"{name}.conv1", stride, 1), f"{name}.bn1"))
            out = bn(conv(out, f"{name}.conv2", 1, 1), f"{name}.bn2")
            if f"{name}.downsample.0.weight" in state:
                x = bn(conv(x, f"{name}.downsample.0", stride, 0), f"{name}.downsample.1")
            x = F.relu(out + x)
    x = F.avg_pool2d(x, 8).flatten(1)
    return F.linear(x, eight_bit_max(state["fc.weight"]), state["fc.bias"])


def authors_state(bits: str) -> dict[str, torch.Tensor]:
    raw = torch.load(CHECKPOINTS / f"res20_{bits}bit.pth.tar", map_location="cpu",
                     weights_only=True)
    return {name.removeprefix("module."): tensor for name, tensor in raw["state_dict"].items()}


def read_test_jpegs(per_class: int | None = PER_CLASS) -> dict[str, bytes]:
    """``test/<class>/<file>`` -> JPEG bytes of the first ``per_class`` images of every class
    (all of them for ``None``)."""
    wanted: dict[str, bytes] = {}
    with tarfile.open(JPEG_TAR, "r|gz") as archive:
        for member in archive:
            parts = Path(member.name).parts
            if len(parts) >= 2 and parts[1] == "train":
                break  # the archive stores test/ first
            if member.isfile() and len(parts) == 4 and (
                per_class is None or int(Path(parts[3]).stem) < per_class
            ):
                wanted["/".join(parts[1:])] = archive.extractfile(member).read()
    return dict(sorted(wanted.items()))


def decode(jpegs: dict[str, bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 3, 32, 32] decoded by Pillow, and labels from the class folders."""
    from PIL import Image

    classes = sorted({name.split("/")[1] for name in jpegs})
    images = [np.array(Image.open(io.BytesIO(data)).convert("RGB")) for data in jpegs.values()]
    labels = [classes.index(name.split("/")[1]) for name in jpegs]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


# --- tests --------------------------------------------------------------------------------

@pytest.mark.parametrize("b", [2, 3, 4, 5])
def test_apot_level_sets_are_the_authors_eq5_eq6(b):
    """APoT Eq. 5/6: lowbit's unsigned APoT levels equal the authors' B-bit sets, so their
    weights (sign + B = bits - 1) and activations (B = bits) land on the same values."""
    torch.testing.assert_close(lowbit.levels("apot", b, signed=False), authors_levels(b))


@pytest.fixture(scope="module")
def jpegs():
    return read_test_jpegs()


@pytest.fixture(scope="module")
def test_images(jpegs):
    return decode(jpegs)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("imported")
    paths = {}
    for bits in BITS:
        paths[bits] = out / f"res20_{bits}bit.pt"
        import_apot_official(CHECKPOINTS / f"res20_{bits}bit.pth.tar", bits, paths[bits])
    return paths


@pytest.fixture(scope="module")
def reference(test_images):
    """``reference(bits)``: the reference logits of checkpoint ``bits``, computed once."""
    images, _ = test_images
    computed = {}

    def logits(bits: str) -> torch.Tensor:
        if bits not in computed:
            with torch.no_grad():
                computed[bits] = reference_logits(
                    authors_state(bits), None if bits == "32" else int(bits), images
                )
        return computed[bits]

    return logits


def imported_logits(path: Path, images: torch.Tensor, **weight_options) -> torch.Tensor:
    """The imported model on the images normalized as the authors' ToTensor + Normalize."""
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["config"]["weight_options"].update(weight_options)
    model = rebuild_model(checkpoint, 10, 3, str(path)).eval()
    with torch.no_grad():
        return model((images.float() / 255 - MEAN) / STD)


@needs_shared
@pytest.mark.parametrize("bits", BITS)
def test_imported_model_reproduces_the_authors_forward_pass(
    bits, imported, test_images, reference
):
    """Same logits as the reference on 300 real test images (8-bit first/last, APoT inside):
    equal up to float summation order, so every prediction agrees."""
    ours, theirs = imported_logits(imported[bits], test_images[0]), reference(bits)
    assert torch.equal(ours.argmax(1), theirs.argmax(1))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


@needs_shared
def test_eq9_as_printed_would_not_reproduce_the_authors(imported, test_images, reference):
    """The check above can fail: Eq. 9 with population std + eps and lowbit's default rounding
    changes the 4-bit model's predictions on several of the 300 images."""
    ours = imported_logits(imported["4"], test_images[0], normalization="eq9", divide_first=False)
    assert (ours.argmax(1) != reference("4").argmax(1)).sum() >= 5


@pytest.fixture(scope="module")
def jpeg_tree(jpegs, tmp_path_factory):
    """A cifar10 tree: the 300 JPEG files (bytes unchanged) in test/, one per class in train/."""
    root = tmp_path_factory.mktemp("cifar10")
    for index, (name, data) in enumerate(jpegs.items()):
        for split in ("test",) + (("train",) if index % PER_CLASS == 0 else ()):
            path = root / split / name.split("/", 1)[1]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return root


@needs_shared
@pytest.mark.parametrize("bits", BITS)
def test_lowbit_eval_top1_equals_the_reference_on_jpegs(
    bits, imported, jpeg_tree, test_images, reference, monkeypatch, capsys
):
    """`lowbit eval --json` on a CIFAR-10 JPEG tree: the reference's top-1 on the same files
    (within one image: lowbit's loader normalizes as (x - 255 mean) / (255 std))."""
    monkeypatch.setenv("LOWBIT_CACHE", str(jpeg_tree.parent / "cache"))
    labels = test_images[1]
    reference_top1 = 100 * (reference(bits).argmax(1) == labels).float().mean().item()
    code = main(["eval", str(imported[bits]), "--data", "cifar10", "--data-dir", str(jpeg_tree),
                 "--json", "--device", "cpu"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["n"] == 300
    assert abs(result["top1"] - reference_top1) <= 100 / 300 + 1e-9
    assert result["top1"] > 60  # the models classify, not only agree


@needs_shared
def test_imported_checkpoint_is_a_plain_lowbit_checkpoint(imported):
    """Loads with weights_only=True; its config rebuilds the authors' rules by name."""
    checkpoint = torch.load(imported["4"], weights_only=True)
    config = checkpoint["config"]
    assert config["model"] == {"name": "resnet20", "options": {"shortcut": "conv"}}
    assert config["method"] == "apot" and config["bits"] == 4
    assert config["overrides"]["conv1"] == config["overrides"]["fc"] == {
        "method": "maxscale", "bits": 8
    }
    assert config["data"]["mean"] == [0.491, 0.482, 0.447]
    assert config["data"]["std"] == [0.247, 0.243, 0.262]
    assert checkpoint["source"]["best_prec"] == pytest.approx(92.47)
    assert "layer1.0.conv1.weight_quantizer.alpha" in checkpoint["model"]
    assert "layer2.0.downsample.0.input_quantizer.alpha" in checkpoint["model"]
    model = rebuild_model(checkpoint, 10, 3, "x")
    assert model.fc.input_quantizer is None and model.conv1.input_quantizer is None
    assert model.layer1[0].conv1.weight_quantizer.normalization == "detached"


def _run(capsys, *args):
    code = main(list(args))
    err = capsys.readouterr().err
    return code, err


@needs_shared
@pytest.mark.parametrize(
    "source, bits, message",
    [
        ("res20_32bit.pth.tar", "4", "float model"),
        ("res20_4bit.pth.tar", "32", "quantizer thresholds"),
        ("res20_4bit.pth.tar", "7", "--bits must be one of"),
        ("missing.pth.tar", "4", "does not exist"),
    ],
)
def test_import_bad_input_is_one_line(capsys, tmp_path, source, bits, message):
    code, err = _run(capsys, "import", "apot-official", str(CHECKPOINTS / source), "--bits", bits,
                     "-o", str(tmp_path / "out.pt"))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.pt").exists()


def test_import_refuses_other_checkpoints(capsys, tmp_path):
    """A lowbit checkpoint, a dict without a ResNet state, and a non-checkpoint file."""
    save_checkpoint(tmp_path / "lowbit.pt", {"model": {}, "config": {}})
    save_checkpoint(tmp_path / "other.pt", {"state_dict": {"w": torch.zeros(1)}})
    (tmp_path / "text.pt").write_text("not a checkpoint")
    for name, message in (("lowbit.pt", "already a lowbit checkpoint"),
                          ("other.pt", "not an APoT authors'"),
                          ("text.pt", "not a readable PyTorch checkpoint")):
        code, err = _run(capsys, "import", "apot-official", str(tmp_path / name), "--bits", "4",
                         "-o", str(tmp_path / "out.pt"))
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
