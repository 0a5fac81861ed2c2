"""bench/quantizer_cost.py runs to its JSON line over every registered method (tiny sizes)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from lowbit.quant.registry import available_methods, get_method

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "quantizer_cost.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("quantizer_cost_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_methods_run_to_the_json_line(capsys):
    bench = load_bench()
    # The defaults (every registered method, bits 2..5, the naive reference) at a tiny size.
    result = bench.main(["--numel", "4096", "--repeats", "1"])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == result
    assert result["bench"] == "quantizer_cost"
    values, targets = result["values"], result["targets"]

    expected = {f"naive_apot_{bits}bit_activation" for bits in range(2, 6)}
    for name in available_methods():
        method = get_method(name)
        bits_run = [b for b in range(2, 6) if method.min_bits <= b <= method.max_bits]
        for role, attribute, _ in bench.ROLES:
            if getattr(method, attribute) is not None:
                expected.update(f"{name}_{bits}bit_{role}" for bits in bits_run)
    assert set(values) == expected
    assert all(value > 0 for value in values.values())
    # Targets only on labels that were measured: the activation quantizers.
    assert set(targets) == {label for label in expected
                            if label.endswith("_activation") and not label.startswith("naive")}


def test_weight_only_method_gets_only_its_weight_figures(capsys):
    bench = load_bench()
    weight_only = [n for n in available_methods() if get_method(n).input_quantizer is None]
    assert weight_only  # maxscale at least
    result = bench.main(["--methods", ",".join(weight_only), "--numel", "4096",
                         "--repeats", "1", "--bits", "2,8", "--no-naive"])
    capsys.readouterr()
    assert result["values"]
    assert all(label.endswith("_weight") for label in result["values"])
    assert result["targets"] == {}
