"""The model zoo: every registered model runs, quantizes, and has the published size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import LowbitError
from lowbit.models import available_models, build_model
from lowbit.models.blocks import ZeroPadShortcut

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
APOT_FLOAT_CHECKPOINT = SHARED / "checkpoints" / "apot-official" / "res20_32bit.pth.tar"

CIFAR = (3, 32, 32)
IMAGENET_SMALL = (3, 64, 64)  # 224x224 is needlessly slow; every ImageNet model pools globally
INPUT_SHAPES = {
    "small_cnn": (1, 8, 8),
    "lenet5": (1, 28, 28),
    "vgg7": CIFAR,
    "resnet20": CIFAR,
    "resnet32": CIFAR,
    "resnet44": CIFAR,
    "resnet56": CIFAR,
    "resnet110": CIFAR,
    "resnet18_cifar": CIFAR,
    "preact_resnet32": CIFAR,
    "mobilenetv2_cifar": CIFAR,
    "mobilenetv2": IMAGENET_SMALL,
    "resnet18": IMAGENET_SMALL,
    "resnet34": IMAGENET_SMALL,
    "resnet50": IMAGENET_SMALL,
    "preact_resnet18": IMAGENET_SMALL,
    "preact_resnet34": IMAGENET_SMALL,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These tiny batches gain nothing from threads, and on a 2-core machine shared with other
    # jobs intra-op threads contend and make the file ~20x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def natural_input(name: str) -> torch.Tensor:
    if name not in INPUT_SHAPES:
        pytest.fail(f"add the natural input shape of model {name!r} to INPUT_SHAPES")
    return torch.randn(2, *INPUT_SHAPES[name], generator=torch.Generator().manual_seed(0))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", available_models())
def test_forward_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    # lowbit's own code always passes in_channels, so every model accepts it.
    model = build_model(name, num_classes=7, in_channels=INPUT_SHAPES[name][0])
    out = model(natural_input(name))
    assert out.shape == (2, 7)
    out.square().mean().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{param_name} gets no gradient"
        assert torch.isfinite(param.grad).all(), param_name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", available_models())
def test_apot_4bit_quantize_swaps_every_layer_and_runs(name):
    torch.manual_seed(0)
    model = lowbit.quantize(build_model(name, num_classes=7), "apot", 4).eval()
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in model.modules())
    with torch.no_grad():
        out = model(natural_input(name))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


# Option A (zero-padding) counts; He et al. 2016 Table 6 prints 0.27M/0.46M/0.66M/0.85M/1.7M.
CIFAR_RESNET_PAD_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}
# Option B adds two 1x1 conv + BN shortcuts: 16->32 and 32->64 channels.
CONV_SHORTCUT_EXTRA = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


@pytest.mark.parametrize("depth", sorted(CIFAR_RESNET_PAD_PARAMS))
def test_cifar_resnet_parameter_counts_match_he_2016_table6(depth):
    pad = count_parameters(build_model(f"resnet{depth}", shortcut="pad"))
    conv = count_parameters(build_model(f"resnet{depth}", shortcut="conv"))
    assert pad == CIFAR_RESNET_PAD_PARAMS[depth]
    assert conv == pad + CONV_SHORTCUT_EXTRA
    paper = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7}[depth]
    assert round(pad / 1e6, 1 if depth == 110 else 2) == paper


def test_resnet20_default_shortcut_is_conv_with_apot_size():
    """The APoT authors' float ResNet-20 checkpoint holds 272,474 parameters."""
    assert count_parameters(build_model("resnet20")) == 272_474


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # torchvision's published counts (1000 classes).
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("mobilenetv2", 3_504_872),
        # CoQuant's CIFAR ResNet-18 (kuangliu/pytorch-cifar): 11.17M.
        ("resnet18_cifar", 11_173_962),
        # SRQ App. F: 832 + 51,264 + 1024*512+512 + 512*10+10 (unpadded 5x5 convs on 28x28).
        ("lenet5", 582_026),
        # SRQ App. F: six 3x3 convs 4,574,592 + BN 3,584 + 8192*1024+1024 + 1024*10+10.
        ("vgg7", 12_978_058),
        # PytorchCV's preresnet18/34 (UniQ's float starts), as its own tests count them.
        ("preact_resnet18", 11_687_848),
        ("preact_resnet34", 21_796_008),
    ],
)
def test_parameter_counts(name, expected):
    assert count_parameters(build_model(name)) == expected


def test_mobilenetv2_width_multiplier_half_has_1_97m_parameters():
    assert round(count_parameters(build_model("mobilenetv2", width_mult=0.5)) / 1e6, 2) == 1.97


TORCHVISION_RESNET18 = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.weight": (64,),
    "bn1.running_var": (64,),
    "bn1.num_batches_tracked": (),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer1.1.bn2.running_mean": (64,),
    "layer2.0.conv1.weight": (128, 64, 3, 3),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer2.0.downsample.1.weight": (128,),
    "layer2.0.downsample.1.running_var": (128,),
    "layer3.1.conv2.weight": (256, 256, 3, 3),
    "layer4.0.downsample.0.weight": (512, 256, 1, 1),
    "layer4.1.bn2.bias": (512,),
    "fc.weight": (1000, 512),
    "fc.bias": (1000,),
}
TORCHVISION_RESNET50 = {
    "conv1.weight": (64, 3, 7, 7),
    "layer1.0.conv1.weight": (64, 64, 1, 1),
    "layer1.0.conv2.weight": (64, 64, 3, 3),
    "layer1.0.conv3.weight": (256, 64, 1, 1),
    "layer1.0.bn3.weight": (256,),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer2.0.conv1.weight": (128, 256, 1, 1),
    "layer2.0.downsample.0.weight": (512, 256, 1, 1),
    "layer3.5.conv3.weight": (1024, 256, 1, 1),
    "layer4.2.bn3.running_mean": (2048,),
    "layer4.0.downsample.1.num_batches_tracked": (),
    "fc.weight": (1000, 2048),
}
TORCHVISION_MOBILENET_V2 = {
    "features.0.0.weight": (32, 3, 3, 3),
    "features.0.1.running_mean": (32,),
    "features.1.conv.0.0.weight": (32, 1, 3, 3),
    "features.1.conv.1.weight": (16, 32, 1, 1),
    "features.1.conv.2.weight": (16,),
    "features.2.conv.0.0.weight": (96, 16, 1, 1),
    "features.2.conv.1.0.weight": (96, 1, 3, 3),
    "features.2.conv.2.weight": (24, 96, 1, 1),
    "features.2.conv.3.running_var": (24,),
    "features.17.conv.2.weight": (320, 960, 1, 1),
    "features.18.0.weight": (1280, 320, 1, 1),
    "classifier.1.weight": (1000, 1280),
}


@pytest.mark.parametrize(
    ("name", "expected", "num_keys"),
    [
        ("resnet18", TORCHVISION_RESNET18, 122),
        ("resnet50", TORCHVISION_RESNET50, 320),
        ("mobilenetv2", TORCHVISION_MOBILENET_V2, 314),
    ],
)
def test_state_dict_keys_match_torchvision(name, expected, num_keys):
    state = build_model(name).state_dict()
    assert len(state) == num_keys
    for key, shape in expected.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key


@pytest.mark.skipif(not APOT_FLOAT_CHECKPOINT.exists(), reason="needs ../shared checkpoints")
def test_apot_authors_float_resnet20_loads_strictly():
    state = torch.load(APOT_FLOAT_CHECKPOINT, map_location="cpu", weights_only=False)
    state = {k.removeprefix("module."): v for k, v in state["state_dict"].items()}
    build_model("resnet20").load_state_dict(state, strict=True)


def test_zero_pad_shortcut_subsamples_and_pads_channels_with_zeros():
    x = torch.randn(2, 16, 8, 8)
    out = ZeroPadShortcut(16, 2)(x)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


def test_unknown_shortcut_is_a_user_error():
    with pytest.raises(LowbitError, match="shortcut"):
        build_model("resnet20", shortcut="identity")


def test_preact_downsample_takes_the_preactivated_input_and_has_no_bn():
    """UniQ's CIFAR-100 ResNet-32: the 1x1 shortcut sees relu(bn1(x)), not x."""
    block = build_model("preact_resnet32").layer2[0].eval()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.downsample.modules())
    seen = []
    block.downsample.register_forward_hook(lambda mod, inputs, out: seen.append(inputs[0]))
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        expected = torch.relu(block.bn1(x))
        block(x)
    torch.testing.assert_close(seen[0], expected)


def test_vgg7_max_pool_sits_between_conv_and_bn():
    """SRQ App. F: conv -> MP2 -> BN -> ReLU; BN after every conv of VGG-7, none in LeNet-5."""
    vgg = [type(m) for m in build_model("vgg7")]
    pools = [i for i, t in enumerate(vgg) if t is nn.MaxPool2d]
    assert len(pools) == 3
    for i in pools:
        assert vgg[i - 1 : i + 3] == [nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU]
    assert vgg.count(nn.BatchNorm2d) == vgg.count(nn.Conv2d) == 6
    assert nn.BatchNorm2d not in [type(m) for m in build_model("lenet5")]


@pytest.mark.parametrize(("name", "side", "feature_side"),
                         [("mobilenetv2", 64, 2), ("mobilenetv2_cifar", 32, 4)])
def test_mobilenetv2_downsampling(name, side, feature_side):
    """ImageNet variant downsamples 32x; the CIFAR variant 8x, leaving 4x4 maps."""
    model = build_model(name).eval()
    with torch.no_grad():
        features = model.features(torch.randn(1, 3, side, side))
    assert features.shape[-2:] == (feature_side, feature_side)


def test_convs_start_kaiming_normal_fan_out():
    weight = build_model("resnet20").layer3[0].conv2.weight
    assert abs(weight.std().item() / (2 / (64 * 9)) ** 0.5 - 1) < 0.03
