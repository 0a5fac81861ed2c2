"""A run does not depend on whether the CPU kernels were built: every method trains the same
digits steps with the kernels and with the eager formulas (LOWBIT_NATIVE=0 takes the eager
path everywhere, as `native.serves` returning False does here), RQ's noise included."""

from __future__ import annotations

import pytest
import torch

import lowbit
from lowbit.quant import native
from lowbit.train.checkpoint import load_checkpoint
from lowbit.train.config import resolve_config
from lowbit.train.run import run_training

METHODS = [name for name in lowbit.available_methods() if name != "maxscale"]  # weight-only,
# first/last layers: every method's run below quantizes those with it (first_last_bits 8).


def _run(tmp_path, method: str, eager: bool, monkeypatch) -> dict[str, torch.Tensor]:
    if eager:
        monkeypatch.setattr(native, "serves", lambda *tensors: False)
    config = resolve_config(None, [
        f"out={tmp_path / ('eager' if eager else 'kernels')}", f"method={method}", "bits=3",
        "float_epochs=0", "epochs=2", "max_steps=6", "data.eval_limit=64", "data.limit=512",
        "model.options.width=8",
    ])
    summary = run_training(config)
    monkeypatch.undo()
    return load_checkpoint(f"{summary['run_dir']}/last.pt")["model"]


@pytest.mark.parametrize("method", METHODS)
def test_kernels_and_eager_formulas_train_alike(tmp_path, method, monkeypatch):
    if native.library() is None:
        pytest.skip("the CPU kernels are not built here (no C compiler)")
    kernels = _run(tmp_path, method, False, monkeypatch)
    eager = _run(tmp_path, method, True, monkeypatch)
    assert kernels.keys() == eager.keys()
    for name, tensor in kernels.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, eager[name], rtol=1e-3, atol=1e-4, msg=name)
        else:
            assert torch.equal(tensor, eager[name]), name
