"""Trainer speed options: bf16 autocast, channels_last, torch.compile (issue 8)."""

import json

import pytest
import torch

from lowbit import LowbitError
from lowbit.train import run as run_module
from lowbit.train.checks import check_config
from lowbit.train.config import resolve_config
from lowbit.train.run import run_training

FAST = ["float_epochs=0", "epochs=1", "data.limit=256", "model.options.width=8", "data.workers=0"]


def _train(tmp_path, *settings):
    config = resolve_config(None, [*FAST, f"out={tmp_path}", *settings])
    summary = run_training(config)
    record = json.loads((tmp_path.glob("*/metrics.jsonl").__next__()).read_text().splitlines()[-1])
    return summary, record


def test_bf16_autocast_and_channels_last_train_an_apot_model(tmp_path):
    summary, record = _train(tmp_path, "amp=bf16", "channels_last=true")
    assert summary["method"] == "apot" and 0 <= summary["top1"] <= 100
    assert torch.isfinite(torch.tensor([record["train_loss"], record["loss"]])).all()


def test_compile_trains_the_compiled_model(tmp_path, monkeypatch):
    compiled, compile = [], torch.compile

    def compile_eagerly(model):  # dynamo tracing without a C++ toolchain: fast, same graphs
        # Scales set from data are set before compiling: setting them reads values back to
        # Python, which would split the graph on the first compiled step.
        initialized = [m.initialized for m in model.modules() if hasattr(m, "initialized")]
        compiled.append(initialized)
        return compile(model, backend="eager")

    monkeypatch.setattr(run_module.torch, "compile", compile_eagerly)
    summary, record = _train(tmp_path, "compile=true", "method=uniq")
    assert len(compiled) == 1 and 0 <= summary["top1"] <= 100
    assert compiled[0] and all(compiled[0])
    assert torch.isfinite(torch.tensor(record["train_loss"]))


@pytest.mark.parametrize(
    "settings", [["amp=fp16"], ["amp=float8"], ["compile=true", "adaptive.bits=[8,4]"]]
)
def test_bad_speed_settings_are_errors(settings):
    with pytest.raises(LowbitError):
        check_config(resolve_config(None, [*FAST, "method=coquant", *settings]))
