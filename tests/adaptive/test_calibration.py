"""BatchNorm recalibration without gradients (CoQuant supplement Table 3) and testing one
network at every bit-width, zero-shot ones included (Table 4 layout)."""

import torch

from lowbit.adaptive import recalibrate_batchnorm, set_bits
from lowbit.adaptive.evaluation import evaluate_bit_widths, format_bits_table

STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_calibration_changes_only_the_running_statistics_of_the_active_batchnorms(model, batch):
    images, _ = batch
    set_bits(model, 3)  # zero-shot: 4 and 2 are as near; the higher one's BatchNorms serve
    before = snapshot(model)
    assert recalibrate_batchnorm(model, [(images[:16],), (images[16:],)], 10) == 2
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing was recalibrated"
    assert all(".norms.4." in k and k.endswith(STATISTICS) for k in changed), changed
    assert {k.rsplit(".", 1)[0] for k in changed} == {f"{i}.norms.4" for i in (1, 4, 8, 11)}
    # The statistics are the plain average over the batches (momentum None), and the model's
    # modes and momenta are restored.
    assert model.training and model[4].norms["4"].training
    assert model[4].norms["4"].momentum == 0.1
    assert after["1.norms.4.num_batches_tracked"].item() == 2


def test_calibration_keeps_gradients_off_and_mode(model, batch):
    images, _ = batch
    model.eval()
    grad_enabled = []
    hook = model.register_forward_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))
    try:
        recalibrate_batchnorm(model, [images], 1)
    finally:
        hook.remove()
    assert grad_enabled == [False]
    assert not model.training


def test_zero_shot_rows_are_marked_and_the_model_is_untouched(model, batch):
    images, labels = batch
    loader = [(images, labels)]
    before = snapshot(model)
    rows = evaluate_bit_widths(model, [2, 3, 8], loader, loader, 1, show_progress=False)
    assert [(r["bits"], r["zero_shot"], r["calibration_batches"]) for r in rows] == [
        (2, False, 0), (3, True, 1), (8, False, 0)
    ]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    table = format_bits_table(rows, "title")
    lines = table.splitlines()
    assert lines[2].startswith("8-bit") and lines[4].startswith("2-bit")  # highest first
    assert "zero-shot" in lines[3] and "zero-shot" not in lines[2]
    assert "recalibrated on 1 training batches" in lines[-1]
