"""bench/deploy_speed.py runs to its JSON line (a tiny model, one round; no speed checked)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "deploy_speed.py"


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("deploy_speed_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # A small CNN on 8x8 images, batches 1 and 2, runs of a few milliseconds.
    monkeypatch.setattr(module, "MODELS", {"small_cnn": ({"in_channels": 3, "width": 8}, 10,
                                                         (3, 8, 8))})
    monkeypatch.setattr(module, "BATCHES", (1, 2))
    monkeypatch.setattr(module, "TARGET_MODEL", "small_cnn")
    monkeypatch.setattr(module, "TARGET_BATCH", 2)
    monkeypatch.setattr(module, "RUN_SECONDS", 0.01)
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)  # main() sets the bench's threads


def test_families_run_to_the_json_line(bench, capsys):
    result = bench.main(["--repeats", "1", "--threads", "1", "--family", "apot",
                         "--family", "uniform", "--profile"])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == result
    assert result["bench"] == "deploy_speed"
    values = result["values"]
    ratios = {f"{family} small_cnn b{batch}" for family in ("apot", "uniform") for batch in (1, 2)}
    floats = {f"float small_cnn b{batch} images/s" for batch in (1, 2)}
    assert set(values) == ratios | floats
    assert all(isinstance(v, float) and v > 0 for v in values.values())
    assert result["targets"] == {"apot small_cnn b2": 2.0, "uniform small_cnn b2": 2.0}
    # The profile names the integer graph's ConvInteger among its operators.
    assert "ConvInteger" in result["profile"]["apot"]["integer"]
    assert "Conv" in result["profile"]["apot"]["float"]


def test_a_family_that_does_not_export_is_null(bench, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        from lowbit.errors import LowbitError

        raise LowbitError("cannot export this one")

    monkeypatch.setattr(bench, "export_integer", refuse)
    result = bench.main(["--repeats", "1", "--threads", "1", "--family", "pact"])
    assert result["values"] == {"pact small_cnn b1": None, "pact small_cnn b2": None}
    assert result["notes"] == {"pact small_cnn": "not exported: cannot export this one"}
