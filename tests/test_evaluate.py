"""`lowbit eval`: a checkpoint's config rebuilds its model; a mismatch is one clear error."""

from __future__ import annotations

import json

import pytest
import torch

from lowbit import LowbitError
from lowbit.cli import main
from lowbit.evaluate import evaluate_checkpoint
from lowbit.train.build import data_from_config, model_from_config
from lowbit.train.checkpoint import save_checkpoint
from lowbit.train.config import resolve_config
from lowbit.train.loop import evaluate
from lowbit.train.run import quantize_from_config

CPU = torch.device("cpu")


def settings_list(settings):
    return [f"{key}={value}" for key, value in settings.items()]


def make_checkpoint(path, stage="quant", **settings):
    """A small_cnn on the embedded digits, quantized as ``settings`` say, with trained-looking
    BN statistics so that a wrong rebuild shows in the accuracy."""
    config = resolve_config(None, settings_list({"model.options.width": 8, **settings}))
    torch.manual_seed(0)
    data = data_from_config(config, CPU)
    model = model_from_config(config, data.num_classes, data.in_channels)
    if stage == "quant":
        quantize_from_config(model, config)
    with torch.no_grad():
        model.train()
        for _, (images, _) in zip(range(3), data.train):
            model(images)
    save_checkpoint(path, {"model": model.state_dict(), "config": config, "stage": stage})
    return model, data


def test_eval_rebuilds_the_quantized_model_and_its_metrics(tmp_path):
    model, data = make_checkpoint(tmp_path / "c.pt", bits=3)
    expected = evaluate(model, data.test)
    result = evaluate_checkpoint(tmp_path / "c.pt", device="cpu")
    assert result["n"] == expected["n"] == 359
    assert result["top1"] == expected["top1"] and result["top5"] == expected["top5"]
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-6)  # the same forward pass
    assert (result["model"], result["method"], result["bits"]) == ("small_cnn", "apot", 3)


def test_a_float_stage_checkpoint_is_evaluated_as_the_float_model(tmp_path):
    model, data = make_checkpoint(tmp_path / "float.pt", stage="float")
    result = evaluate_checkpoint(tmp_path / "float.pt", device="cpu")
    assert result["loss"] == pytest.approx(evaluate(model, data.test)["loss"], rel=1e-6)
    assert (result["method"], result["bits"]) == ("float", 32)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"method": "lsq"}, "missing 0.weight_quantizer.step"),  # another method
        ({"model.options.width": 16}, "shapes 0.weight (8, 1, 3, 3) vs (16, 1, 3, 3)"),
        ({"bits": "null"}, "unexpected 3.weight_quantizer.alpha"),
    ],
)
def test_checkpoint_that_does_not_fit_its_config_names_the_mismatch(tmp_path, settings, message):
    """The state of an APoT small_cnn under a config that says otherwise."""
    make_checkpoint(tmp_path / "c.pt")
    checkpoint = torch.load(tmp_path / "c.pt", weights_only=True)
    other = resolve_config(None, settings_list({"model.options.width": 8, **settings}))
    save_checkpoint(tmp_path / "c.pt", {**checkpoint, "config": other})
    with pytest.raises(LowbitError, match="another model or method") as error:
        evaluate_checkpoint(tmp_path / "c.pt", device="cpu")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_config_data_mean_and_std_replace_the_data_sets_own():
    config = resolve_config(None, ["data.mean=[0.5]", "data.std=[0.25]"])
    loader = data_from_config(config, CPU).test
    assert loader.mean.flatten().tolist() == [0.5 * 255] and loader.std.flatten().tolist() == [
        0.25 * 255
    ]
    with pytest.raises(LowbitError, match="one per channel"):
        data_from_config(resolve_config(None, ["data.mean=[0.5, 0.5, 0.5]"]), CPU)


def test_cli_eval_json_is_exactly_one_object(tmp_path, capsys):
    make_checkpoint(tmp_path / "c.pt", bits=4)
    assert main(["eval", str(tmp_path / "c.pt"), "--json", "--device", "cpu",
                 "--batch-size", "100"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out)
    assert out.count("\n") == 1 and {"top1", "top5", "n"} <= set(result) and result["n"] == 359


def test_cli_eval_text_and_errors(tmp_path, capsys):
    make_checkpoint(tmp_path / "c.pt", bits=4)
    assert main(["eval", str(tmp_path / "c.pt"), "--device", "cpu"]) == 0
    assert "small_cnn apot 4-bit on digits (359 test images): top-1" in capsys.readouterr().out
    (tmp_path / "text.pt").write_text("not a checkpoint")
    for args, message in (
        ([str(tmp_path / "missing.pt")], "does not exist"),
        ([str(tmp_path / "text.pt")], "not a readable lowbit checkpoint"),
        ([str(tmp_path / "c.pt"), "--data", "nope"], "unknown data set 'nope'"),
    ):
        assert main(["eval", *args, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_cli_eval_of_a_run_directory_tests_best_pt_else_last_pt(tmp_path, capsys):
    tiny = ["float_epochs=0", "epochs=1", "data.limit=256", "model.options.width=8",
            "data.workers=0"]
    assert main(["train", "--out", str(tmp_path), *(f"--set={s}" for s in tiny)]) == 0
    (run_dir,) = tmp_path.iterdir()
    capsys.readouterr()
    for name in ("best.pt", "last.pt"):
        assert main(["eval", str(run_dir), "--device", "cpu"]) == 0
        first, result = capsys.readouterr().out.splitlines()
        assert first == f"checkpoint: {run_dir / name}"
        assert result.startswith("small_cnn apot 4-bit on digits (359 test images): top-1")
        (run_dir / name).unlink()
    assert main(["eval", str(run_dir), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"lowbit: error: {str(run_dir)!r} holds no best.pt or last.pt; pass a checkpoint file "
        "or a run directory of lowbit train"
    )


def test_eval_of_a_run_directory_names_the_checkpoint_in_the_result(tmp_path):
    make_checkpoint(tmp_path / "last.pt", bits=3)
    result = evaluate_checkpoint(tmp_path, device="cpu")
    assert result["checkpoint"] == str(tmp_path / "last.pt") and result["bits"] == 3


@pytest.mark.parametrize(
    "payload, message",
    [
        (torch.zeros(3), "is not a lowbit checkpoint (no 'model' tensors)"),
        ({"model": {}}, "has no config to rebuild its model from"),
        ({"model": {}, "config": {"x": 1}}, "has no config to rebuild its model from"),
    ],
)
def test_files_that_are_not_lowbit_checkpoints_are_one_line_errors(tmp_path, payload, message):
    torch.save(payload, tmp_path / "c.pt")
    with pytest.raises(LowbitError) as error:
        evaluate_checkpoint(tmp_path / "c.pt", device="cpu")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_truncated_checkpoint_is_one_line_error(tmp_path, capsys):
    make_checkpoint(tmp_path / "c.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(data[: len(data) // 2])
    assert main(["eval", str(tmp_path / "c.pt"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a readable lowbit checkpoint" in err and len(err.splitlines()) == 1
