"""``build_model``: an option a model does not have, or of the wrong type, is one clear line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.models import available_models, build_model, registry


@pytest.mark.parametrize("name", available_models())
def test_a_misspelt_option_names_the_model_and_its_options(name):
    with pytest.raises(LowbitError) as error:
        build_model(name, num_classes=10, in_channels=3, shorcut="conv")
    message = str(error.value)
    assert message.startswith(f"model {name} has no option 'shorcut'; its options: ")
    assert "num_classes, in_channels" in message and "\n" not in message


def test_every_unknown_option_is_named():
    with pytest.raises(LowbitError, match=r"has no options 'a', 'b'; its options: num_classes, "
                       r"in_channels$"):
        build_model("resnet18", a=1, b=2)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("small_cnn", {"width": "eight"}, "model small_cnn option width must be int, got 'eight'"),
        ("small_cnn", {"width": 8.5}, "option width must be int, got 8.5"),
        ("small_cnn", {"width": True}, "option width must be int, got True"),
        ("mobilenetv2", {"width_mult": "half"}, "option width_mult must be float, got 'half'"),
        ("resnet20", {"shortcut": 3}, "option shortcut must be str, got 3"),
        ("small_cnn", {"num_classes": None}, "option num_classes must be int, got None"),
    ],
)
def test_an_option_of_the_wrong_type_is_a_user_error(name, options, message):
    with pytest.raises(LowbitError, match=message):
        build_model(name, **options)


def test_an_int_is_a_float_option():
    with torch.device("meta"):
        assert isinstance(build_model("mobilenetv2", width_mult=1), nn.Module)


def test_a_value_torch_rejects_is_one_line_naming_the_model_and_options():
    with pytest.raises(LowbitError) as error:
        build_model("small_cnn", in_channels=1, width=-1)
    message = str(error.value)
    assert message.startswith("cannot build model small_cnn(in_channels=1, width=-1): ")
    assert "negative dimension" in message and "\n" not in message


def test_a_builder_taking_any_keyword_checks_its_options_itself(monkeypatch):
    def anything(num_classes: int = 10, **options: object) -> nn.Module:
        return nn.Linear(len(options), num_classes)

    monkeypatch.setitem(registry._MODELS, "anything", anything)
    assert build_model("anything", num_classes=3, x="y").out_features == 3


def test_train_with_a_misspelt_model_option_fails_before_the_run(tmp_path, capsys):
    args = ["train", "--set", "model.options.shorcut=conv", "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "lowbit: error: model small_cnn has no option 'shorcut'; its options: num_classes, "
        "in_channels, width"
    )
    assert not any(tmp_path.iterdir())
