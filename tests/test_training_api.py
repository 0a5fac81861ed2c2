"""``lowbit.param_groups`` and ``lowbit.hooks``: every method trains in a user's own loop."""

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.quant.dropbits import DropBitsMasks
from lowbit.quant.registry import available_methods
from lowbit.train import hooks as hooks_module
from lowbit.train import run
from lowbit.train.config import resolve_config

README = Path(__file__).resolve().parents[1] / "README.md"


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


def small_resnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), Block(8),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def batches(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (torch.randn(4, 3, 12, 12, generator=generator),
         torch.randint(0, 10, (4,), generator=generator))
        for _ in range(n)
    ]


def masks_of(model: nn.Module) -> dict[str, DropBitsMasks]:
    return {
        name: layer.weight_quantizer.masks for name, layer in model.named_modules()
        if isinstance(getattr(getattr(layer, "weight_quantizer", None), "masks", None),
                      DropBitsMasks)
    }


def test_the_readme_loop_trains_srq_dropbits_and_reports_learned_bits(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if "lowbit.hooks(" in b]
    assert "lowbit.param_groups(" in block and "hooks.regularization_loss()" in block
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)
    model, hooks = namespace["model"], namespace["hooks"]
    assert math.isfinite(namespace["loss"].item())
    assert set(hooks.learned_bits()) == set(masks_of(model)) != set()
    assert str(hooks.learned_bits()) in capsys.readouterr().out


def paper_optimizer(model: nn.Module, method: str, bits: int) -> torch.optim.Optimizer:
    """The optimizer ``lowbit train`` would give ``method`` (its presets: RQ and SRQ diverge
    under SGD), over ``lowbit.param_groups``."""
    config = resolve_config(None, [f"method={method}", f"bits={bits}"])
    settings, quantizer = config["optimizer"], config["quantizer_optim"]
    groups = lowbit.param_groups(
        model, settings["lr"], settings["weight_decay"], quantizer_lr=quantizer["weight_lr"],
        input_quantizer_lr=quantizer["input_lr"],
        quantizer_weight_decay=quantizer["weight_decay"],
    )
    if settings["name"] == "sgd":
        return torch.optim.SGD(groups, momentum=settings["momentum"])
    return torch.optim.Adam(groups)


@pytest.mark.parametrize("method", available_methods())
def test_every_method_trains_in_a_user_loop(method):
    model = lowbit.quantize(small_resnet(), method, 4)
    weights = [p.detach().clone() for p in model.parameters()]
    optimizer = paper_optimizer(model, method, 4)
    hooks = lowbit.hooks(model)
    data = batches()
    hooks.calibrate(data, 1)
    for step, (images, labels) in enumerate(data):
        hooks.set_progress(step / len(data))
        loss = F.cross_entropy(model(images), labels) + hooks.regularization_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss), f"{method}: loss {float(loss)} at step {step}"
    assert any(not torch.equal(a, b) for a, b in zip(weights, model.parameters()))


def quantizer_parameters(model: nn.Module, key: str) -> set[int]:
    return {
        id(p) for module in model.modules()
        if isinstance(getattr(module, key, None), nn.Module)
        for p in getattr(module, key).parameters()
    }


@pytest.mark.parametrize("method", ["apot", "uniq", "srq-dropbits"])
def test_param_groups_hold_every_trainable_parameter_once_at_its_group_lr(method):
    model = lowbit.quantize(small_resnet(), method, 4)
    lowbit.hooks(model).calibrate(batches(1), 1)  # per-channel steps take their shape
    model[2].bn1.weight.requires_grad_(False)
    groups = lowbit.param_groups(model, lr=0.1, weight_decay=5e-4, quantizer_lr=0.02,
                                 input_quantizer_lr=0.3, quantizer_weight_decay=1e-5)
    grouped = [id(p) for group in groups for p in group["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(grouped) == len(set(grouped)) and set(grouped) == trainable
    by_name = {group["name"]: group for group in groups}
    expected = {
        "weights": (0.1, 5e-4, trainable - quantizer_parameters(model, "weight_quantizer")
                    - quantizer_parameters(model, "input_quantizer")),
        "weight_quantizer": (0.02, 1e-5, quantizer_parameters(model, "weight_quantizer")),
        "input_quantizer": (0.3, 1e-5, quantizer_parameters(model, "input_quantizer")),
    }
    for name, (lr, decay, params) in expected.items():
        assert params, f"{method} has no {name} parameters"
        group = by_name[name]
        assert (group["lr"], group["weight_decay"]) == (lr, decay)
        assert {id(p) for p in group["params"]} == params
    optimizer = torch.optim.SGD(groups)
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in groups]


def test_param_groups_defaults_share_the_network_lr_without_quantizer_decay():
    model = lowbit.quantize(small_resnet(), "lsq", 4)
    groups = {g["name"]: g for g in lowbit.param_groups(model, lr=0.05)}
    assert {name: (g["lr"], g["weight_decay"]) for name, g in groups.items()} == {
        "weights": (0.05, 0.0), "weight_quantizer": (0.05, 0.0), "input_quantizer": (0.05, 0.0)
    }
    groups = {g["name"]: g for g in lowbit.param_groups(model, lr=0.05, quantizer_lr=0.01)}
    assert groups["input_quantizer"]["lr"] == groups["weight_quantizer"]["lr"] == 0.01


@pytest.mark.parametrize("settings, message", [
    ({"lr": -0.1}, "lr must be a positive number"),
    ({"lr": 0.1, "weight_decay": -1}, "weight_decay must be a number >= 0"),
    ({"lr": 0.1, "quantizer_lr": 0}, "quantizer_lr must be a positive number"),
    ({"lr": 0.1, "input_quantizer_lr": float("nan")}, "input_quantizer_lr must be a positive"),
    ({"lr": 0.1, "quantizer_weight_decay": True}, "quantizer_weight_decay must be a number"),
])
def test_param_groups_reject_bad_settings_in_one_line(settings, message):
    model = lowbit.quantize(small_resnet(), "apot", 4)
    with pytest.raises(lowbit.LowbitError, match=message) as error:
        lowbit.param_groups(model, **settings)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("call", [lambda m: lowbit.param_groups(m, lr=0.1), lowbit.hooks])
def test_a_float_model_is_a_mistake_not_a_silent_no_op(call):
    with pytest.raises(lowbit.LowbitError, match=r"call lowbit.quantize\(model"):
        call(small_resnet())


def test_dropbits_regularization_is_nonzero_and_trains_the_gates():
    model = lowbit.quantize(small_resnet(), "srq-dropbits", 3, first_last_bits=3,
                            weight_options={"l0_lambda": 1e-2})
    hooks = lowbit.hooks(model)
    images, labels = batches(1)[0]
    hooks.set_progress(0.0)
    model(images)
    penalty = hooks.regularization_loss()
    assert isinstance(penalty, torch.Tensor) and penalty.item() > 0
    masks = masks_of(model)
    assert len(masks) == 4
    gradients = torch.autograd.grad(penalty, [m.logits for m in masks.values()])
    assert all(bool(g.ne(0).any()) for g in gradients)
    hooks.set_progress(0.5)  # the regularized phase (the first 50%) is over
    assert float(hooks.regularization_loss()) == 0


def test_regularization_is_zero_without_learned_bits():
    assert lowbit.hooks(lowbit.quantize(small_resnet(), "apot", 4)).regularization_loss() == 0.0
    model = lowbit.quantize(small_resnet(), "srq-dropbits", 3)  # l0_lambda = 0
    model(batches(1)[0][0])
    assert float(lowbit.hooks(model).regularization_loss()) == 0


def test_learned_bits_reports_each_srq_dropbits_layer():
    model = lowbit.quantize(small_resnet(), "srq-dropbits", 3, first_last_bits=3,
                            weight_options={"l0_lambda": 1e-2})
    hooks = lowbit.hooks(model)
    assert hooks.learned_bits() == {"0": "3", "2.conv1": "3", "2.conv2": "3", "5": "3"}
    with torch.no_grad():
        model[2].conv2.weight_quantizer.masks.logits[-1] = -5.0  # Pi(3-bit level) < 0.5
    hooks.set_progress(0.6)  # past the regularized phase: levels are kept or dropped for good
    assert hooks.learned_bits() == {"0": "3", "2.conv1": "3", "2.conv2": "2", "5": "3"}
    with torch.no_grad():
        model[2].conv2.weight_quantizer.masks.logits[-1] = 5.0  # dropped stays dropped
    assert hooks.learned_bits()["2.conv2"] == "2"
    assert run.learned_bits(model) == hooks.learned_bits()
    assert lowbit.hooks(lowbit.quantize(small_resnet(), "uniq", 4)).learned_bits() == {}


def test_the_run_reports_learned_bits_with_the_shared_collector():
    assert run.learned_bits is hooks_module.learned_bits


def test_calibrate_sets_step_sizes_from_data():
    model = lowbit.quantize(small_resnet(), "lsq", 4)
    hooks = lowbit.hooks(model)
    quantizers = [m for m in model.modules() if hasattr(m, "initialized")]
    assert quantizers and not any(q.initialized for q in quantizers)
    assert hooks.calibrate(batches(3), 2) == 2
    assert all(q.initialized for q in quantizers)
    assert lowbit.hooks(lowbit.quantize(small_resnet(), "apot", 4)).calibrate(batches(), 5) == 0
    with pytest.raises(lowbit.LowbitError, match="number of batches >= 1, got 0"):
        hooks.calibrate(batches(), 0)


def test_a_module_offering_one_hook_gets_that_hook_only():
    class Progress(nn.Module):
        seen: list

        def set_progress(self, fraction: float) -> None:
            self.seen = [*getattr(self, "seen", []), fraction]

    model = lowbit.quantize(small_resnet(), "apot", 4)
    model.append(Progress())
    hooks = lowbit.hooks(model)
    hooks.set_progress(0.25)
    assert model[-1].seen == [0.25]
    assert hooks.regularization_loss() == 0.0 and hooks.learned_bits() == {}
