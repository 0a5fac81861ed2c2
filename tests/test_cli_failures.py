"""Bad input, as a user types it: every case exits non-zero within seconds with one line on
stderr, no traceback, and no run directory left behind (issue: runs that fail fast)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lowbit.models import build_model
from lowbit.train.config import resolve_config

# A run that would train for minutes if nothing stopped it: the float stage comes first, so a
# mistake found only in the quantized stage would cost the whole float stage.
LONG_RUN = ["--set", "float_epochs=50", "--set", "epochs=50"]


def lowbit(*args: str, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "lowbit", *args], capture_output=True, text=True, cwd=cwd,
        timeout=120,
    )
    return result, time.perf_counter() - start


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _image_tree(root: Path, classes: list[str]) -> Path:
    image_module = pytest.importorskip("PIL.Image")
    for split in ("train", "test"):
        for label, name in enumerate(classes):
            for index in range(4):
                path = root / split / name / f"{index}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = np.full((16, 16, 3), 40 * label + index, dtype=np.uint8)
                image_module.fromarray(pixels).save(path)
    return root


def _truncated_jpeg_tree(tmp: Path) -> list[str]:
    root = _image_tree(tmp / "photos", ["cat", "dog"])
    bad = root / "train" / "dog" / "2.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    return ["--set", "data.name=image_folder", "--data-dir", str(root)]


def _one_class_tree(tmp: Path) -> list[str]:
    root = _image_tree(tmp / "photos", ["cat"])
    return ["--set", "data.name=image_folder", "--data-dir", str(root)]


def _other_model_checkpoint(tmp: Path) -> list[str]:
    model = build_model("lenet5", num_classes=10, in_channels=1)
    config = {"model": {"name": "lenet5", "options": {}}}
    torch.save({"model": model.state_dict(), "config": config}, tmp / "lenet.pt")
    return ["--init", str(tmp / "lenet.pt")]


def _garbage_checkpoint(tmp: Path) -> list[str]:
    return ["--init", str(_write(tmp / "weights.pt", "not a checkpoint"))]


def _not_yaml(tmp: Path) -> list[str]:
    return [str(_write(tmp / "recipe.yaml", "method: apot\nbits: [4\n"))]


def _yaml_list(tmp: Path) -> list[str]:
    return [str(_write(tmp / "recipe.yaml", "- method: apot\n"))]


def _yaml_text(tmp: Path) -> list[str]:
    return [str(_write(tmp / "recipe.yaml", "apot at four bits\n"))]


def _out_under_a_file(tmp: Path) -> list[str]:
    return ["--out", str(_write(tmp / "taken", "a file") / "runs")]


def _run_dir(tmp: Path) -> Path:
    """A run directory as `lowbit train` leaves it after an interruption (its files need only
    exist: resume checks its arguments first)."""
    run_dir = tmp / "runs" / "earlier"
    _write(run_dir / "config.yaml", yaml.safe_dump(resolve_config()))
    _write(run_dir / "last.pt", "")
    return run_dir


def _resume_with_other_epochs(tmp: Path) -> list[str]:
    return ["--resume", str(_run_dir(tmp)), "--set", "epochs=14"]


def _resume_with_a_recipe(tmp: Path) -> list[str]:
    return ["apot-resnet20-cifar10-4bit", "--resume", str(_run_dir(tmp))]


CASES = {
    # name: (arguments or a function of the test's directory making them, stderr must hold)
    "lr not a number": (["--set", "optimizer.lr=fast"], "optimizer.lr must be a finite number"),
    "NaN lr": (["--set", "optimizer.lr=.nan"], "optimizer.lr must be a finite number"),
    "infinite lr": (["--set", "optimizer.lr=.inf"], "optimizer.lr must be a finite number"),
    "negative float lr": (["--set", "float_lr=-0.1"], "float_lr must be > 0"),
    "negative limit": (["--set", "data.limit=-5"], "data.limit must be >= 1"),
    "batch size 0": (["--set", "data.batch_size=0"], "data.batch_size must be >= 1"),
    "negative epochs": (["--set", "epochs=-1"], "epochs must be >= 0"),
    "fractional seed": (["--set", "seed=1.5"], "seed must be a whole number"),
    "max_steps 0": (["--set", "max_steps=0"], "max_steps must be >= 1"),
    "eval_limit 0": (["--set", "data.eval_limit=0"], "data.eval_limit must be >= 1"),
    "validation fraction 1.5": (["--set", "data.val_fraction=1.5"], "data.val_fraction must be"),
    "flag not a boolean": (["--set", "compile=maybe"], "compile must be true or false"),
    "quantizer option typo": (["--set", "weight_options.alpah=3"], "weight_options of layer"),
    "negative alpha": (["--set", "input_options.alpha=-1"], "alpha must be a positive number"),
    "unknown optimizer": (["--set", "optimizer.name=sgdd"], "unknown optimizer 'sgdd'"),
    "unknown schedule": (["--set", "schedule.name=linear"], "unknown schedule 'linear'"),
    "milestones not numbers": (["--set", "schedule.milestones=[a, b]"],
                               "schedule.milestones must be a list of numbers"),
    "one Adam beta": (["--set", "optimizer.betas=[0.9]"], "optimizer.betas must be a list of 2"),
    "override of no layer": (["--set", "overrides.layer9=4"], "matches no quantizable layer"),
    "amp true": (["--set", "amp=true"], "amp must be bf16 or null"),
    "unknown device": (["--set", "device=tpu"], "unknown device 'tpu'"),
    "unknown method": (["--set", "method=nope"], "unknown method 'nope'"),
    "bits out of range": (["--set", "bits=9"], "supports 2..8 bits"),
    "first/last bits": (["--set", "first_last_bits=1"], "first_last_bits"),
    "config key typo": (["--set", "epoch=3"], "unknown config key 'epoch'"),
    "--set without =": (["--set", "epochs"], "--set takes KEY=VALUE"),
    "unknown model": (["--set", "model.name=nope"], "unknown model 'nope'"),
    "model option typo": (["--set", "model.options.shorcut=conv"], "shorcut"),
    "unknown data set": (["--set", "data.name=nope"], "unknown data set 'nope'"),
    "missing data dir": (["--set", "data.name=cifar10", "--data-dir", "/nonexistent"],
                         "/nonexistent"),
    "missing recipe": (["missing.yaml"], "does not exist"),
    "recipe not YAML": (_not_yaml, "is not valid YAML"),
    "recipe not a mapping": (_yaml_text, "must be a mapping"),
    "sweep spec as a recipe": (_yaml_list, "is a sweep spec, not a recipe"),
    "one-class data dir": (_one_class_tree, "class"),
    "truncated JPEG": (_truncated_jpeg_tree, "2.jpg"),
    "output dir under a file": (_out_under_a_file, "is a file"),
    "output dir not writable": (["--out", "/proc/lowbit-runs"], "is not writable"),
    "missing init checkpoint": (["--init", "/nonexistent/best.pt"], "does not exist"),
    "init not a checkpoint": (_garbage_checkpoint, "is not a readable lowbit checkpoint"),
    "checkpoint of another model": (_other_model_checkpoint, "holds a lenet5 model"),
    "resume with other epochs": (_resume_with_other_epochs, "not epochs"),
    "resume with a recipe": (_resume_with_a_recipe, "--resume continues a run"),
    "resume of no run": (["--resume", "/nonexistent"], "is not a lowbit run directory"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_fast_in_one_line(tmp_path, case):
    arguments, message = CASES[case]
    if callable(arguments):
        arguments = arguments(tmp_path)
    runs = tmp_path / "runs"
    before = sorted(runs.rglob("*")) if runs.exists() else []
    if "--resume" in arguments:  # it takes no other settings
        extra = []
    else:
        extra = LONG_RUN + ([] if "--out" in arguments else ["--out", str(runs)])
    result, seconds = lowbit("train", *extra, *arguments, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("lowbit: error: ") and message in lines[0], lines[0]
    assert seconds < 10, f"{seconds:.1f}s"
    after = sorted(runs.rglob("*")) if runs.exists() else []
    assert after == before, "a run directory was left behind"


def test_the_table_has_at_least_25_cases():
    assert len(CASES) >= 25


def test_a_closed_pipe_is_not_an_error():
    """`lowbit recipes | head`: the reader leaves early; no BrokenPipeError traceback."""
    process = subprocess.Popen(
        [sys.executable, "-m", "lowbit", "recipes"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    process.stdout.close()  # before the child writes its first line
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 0
    assert stderr == ""
