"""Two-epoch runs on the embedded digits of the SRQ options behind seed 004's Table 3 "Fixed"
column (per-layer weight bits, a ternary layer) and App. E (Gumbel-softmax + multi-class
straight-through)."""

import torch

from lowbit.train.config import resolve_config
from lowbit.train.run import run_training

TINY = ["model.options.width=16", "data.limit=512", "float_epochs=2", "epochs=2"]


def _train(tmp_path, *settings):
    return run_training(resolve_config(None, [*TINY, *settings, f"out={tmp_path}"]))


def test_fixed_per_layer_weight_bits_with_a_ternary_layer(tmp_path):
    summary = _train(
        tmp_path, "method=srq-dropbits", "bits=3", "first_last_bits=3",
        "overrides={'3': {weight_bits: 2, weight_options: {ternary: true}}, "
        "'10': {weight_bits: 4}}",
    )
    state = torch.load(f"{summary['run_dir']}/last.pt", weights_only=True)["model"]
    ternary = state["3.weight"] / state["3.weight_quantizer.alpha"]
    rounded = torch.floor(ternary + 0.5).clamp(-1, 1)
    assert set(rounded.unique().tolist()) == {-1.0, 0.0, 1.0}
    assert "3.weight_quantizer.masks.logits" not in state  # nothing to drop on {-1, 0, 1}
    assert state["10.weight_quantizer.masks.logits"].numel() == 3  # 4-bit grid: 3 levels
    assert state["7.weight_quantizer.masks.logits"].numel() == 2
    assert summary["top1"] > 30  # chance is 10%


def test_gumbel_sampling_of_appendix_e(tmp_path):
    summary = _train(tmp_path, "method=srq", "bits=3", "weight_options.sampling=gumbel")
    assert summary["top1"] > 30
