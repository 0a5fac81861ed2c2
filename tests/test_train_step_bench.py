"""bench/train_step.py runs to its JSON line (a tiny model, one round; no timing checked)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "train_step.py"


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("train_step_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # A small CNN on 8x8 images, batch 4: the bench's code paths in well under a second a step.
    monkeypatch.setattr(module, "MODEL", "small_cnn")
    monkeypatch.setattr(module, "MODEL_OPTIONS", {"in_channels": 3, "width": 8})
    monkeypatch.setattr(module, "SHAPE", (3, 8, 8))
    monkeypatch.setattr(module, "BATCH", 4)
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)  # run() sets one thread


def run(bench, capsys, *argv: str) -> dict:
    # One thread: tiny steps on several OpenMP threads crawl on a busy machine.
    result = bench.main(["--repeats", "1", "--threads", "1", *argv])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == result
    assert result["bench"] == "train_step"
    return result


def test_both_columns_and_the_joint_step(bench, capsys):
    # backend "eager": dynamo traces the model (graph count, breaks, recompiles are real)
    # without compiling kernels.
    result = run(bench, capsys, "--config", "apot:2", "--config", "coquant:4,2",
                 "--backend", "eager")
    values = result["values"]
    assert set(values) == {"apot:2", "apot:2 compiled", "apot:2 compiled/eager", "apot:2 best",
                           "coquant:4,2"}
    assert all(isinstance(v, float) and v > 0 for v in values.values())
    assert values["apot:2 best"] == min(values["apot:2"], values["apot:2 compiled"])
    assert result["targets"] == {"apot:2 best": 1.2, "apot:2 compiled/eager": 1.05}
    # The joint step has no compiled column, and says so.
    assert set(result["notes"]) == {"coquant:4,2 compiled"}
    assert "does not compile" in result["notes"]["coquant:4,2 compiled"]


class Failing(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        raise RuntimeError("backend exploded\nsecond line")


def fake_compile(fail_quantized: bool):
    """``torch.compile`` stand-in: the model itself, or one that fails when quantized."""

    def compile(model, backend=None):
        quantized = any("quantizer" in name for name, _ in model.named_modules())
        return Failing(model) if fail_quantized and quantized else model

    return compile


def test_a_configuration_that_does_not_compile_is_null(bench, capsys, monkeypatch):
    monkeypatch.setattr(torch, "compile", fake_compile(fail_quantized=True))
    result = run(bench, capsys, "--config", "apot:2", "--config", "pact:2")
    values = result["values"]
    for config in ("apot:2", "pact:2"):
        assert values[f"{config} compiled"] is None
        assert values[f"{config} compiled/eager"] is None
        assert values[f"{config} best"] == values[config] > 0  # eager is what runs
        assert result["notes"][f"{config} compiled"] == (
            "does not compile: RuntimeError: backend exploded")


def test_one_column_at_a_time(bench, capsys, monkeypatch):
    monkeypatch.setattr(torch, "compile", fake_compile(fail_quantized=False))
    eager = run(bench, capsys, "--config", "apot:4", "--no-compile")
    assert set(eager["values"]) == {"apot:4"}
    assert eager["targets"] == {} and "notes" not in eager  # the best-of targets need both
    compiled = run(bench, capsys, "--config", "apot:4", "--config", "coquant:4,2",
                   "--compile-only")
    assert set(compiled["values"]) == {"apot:4 compiled"}
    assert compiled["targets"] == {}


def test_cuda_without_cuda_is_one_line(bench, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--device", "cuda", "--config", "apot:4"])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and "CUDA is not available" in err
