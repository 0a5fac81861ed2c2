"""PytorchCV's preresnet18/34 (UniQ's float starts) as lowbit preact_resnet18/34.

``PytorchCVPreResNet`` below rebuilds PytorchCV's module tree (osmr/imgclsmob,
``pytorchcv/models/preresnet.py`` and ``common.py``'s ``PreConvBlock``: BN, ReLU, conv, the
pre-activation returned by a unit's first block feeding its ``identity_conv``) with random
weights; the converted weights must give lowbit's model the same outputs."""

import pytest
import torch
from torch import nn

from lowbit import LowbitError
from lowbit.cli import main
from lowbit.convert.pytorchcv import convert_state
from lowbit.models import build_model


class PreConvBlock(nn.Module):
    def __init__(self, cin, cout, kernel, stride):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.activ = nn.ReLU()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)

    def forward(self, x):
        pre = self.activ(self.bn(x))
        return self.conv(pre), pre


class Unit(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Module()
        self.body.conv1 = PreConvBlock(cin, cout, 3, stride)
        self.body.conv2 = PreConvBlock(cout, cout, 3, 1)
        if cin != cout or stride != 1:
            self.identity_conv = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out, pre = self.body.conv1(x)
        out, _ = self.body.conv2(out)
        return out + (self.identity_conv(pre) if hasattr(self, "identity_conv") else x)


class PytorchCVPreResNet(nn.Module):
    def __init__(self, depths, classes=10):
        super().__init__()
        self.features = nn.Sequential()
        init = nn.Module()
        init.conv, init.bn = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.features.add_module("init_block", init)
        cin = 64
        for i, (depth, width) in enumerate(zip(depths, (64, 128, 256, 512))):
            stage = nn.Sequential()
            for j in range(depth):
                stage.add_module(f"unit{j + 1}", Unit(cin, width, 2 if i and not j else 1))
                cin = width
            self.features.add_module(f"stage{i + 1}", stage)
        post = nn.Module()
        post.bn = nn.BatchNorm2d(cin)
        self.features.add_module("post_activ", post)
        self.output = nn.Linear(cin, classes)

    def forward(self, x):
        init = self.features.init_block
        x = nn.functional.max_pool2d(torch.relu(init.bn(init.conv(x))), 3, 2, 1)
        for i in range(1, 5):
            x = getattr(self.features, f"stage{i}")(x)
        x = torch.relu(self.features.post_activ.bn(x))
        return self.output(x.mean((2, 3)))


def _randomized(model):
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            for tensor in (module.weight, module.bias, module.running_mean):
                nn.init.normal_(tensor, 0, 0.2)
            nn.init.uniform_(module.running_var, 0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("depths, name", [((2, 2, 2, 2), "preact_resnet18"),
                                          ((3, 4, 6, 3), "preact_resnet34")])
def test_converted_weights_give_the_same_outputs(depths, name):
    theirs = _randomized(PytorchCVPreResNet(depths))
    found, state = convert_state(theirs.state_dict())
    assert found == name
    ours = build_model(name, num_classes=10)
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs(x), rtol=1e-4, atol=1e-4)


def test_the_import_command_writes_an_init_file(tmp_path, capsys):
    torch.save(PytorchCVPreResNet((2, 2, 2, 2)).state_dict(), tmp_path / "preresnet18.pth")
    out = tmp_path / "preact_resnet18-pytorchcv.pt"
    assert main(["import", "pytorchcv-preresnet", str(tmp_path / "preresnet18.pth"),
                 "-o", str(out)]) == 0
    assert "--init" in capsys.readouterr().out
    assert set(torch.load(out, weights_only=True)["model"]) == set(
        build_model("preact_resnet18").state_dict())


def test_other_weights_are_one_clear_error():
    with pytest.raises(LowbitError, match="not a key of PytorchCV"):
        convert_state(build_model("resnet18").state_dict())
