"""``lowbit sweep``: rows in turn, a paper-vs-ours table, failures kept apart, resumable."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

import lowbit.train.sweep as sweep
from lowbit.errors import LowbitError
from lowbit.train.config import resolve_config
from lowbit.train.recipes import find_recipe
from lowbit.train.run_config import RunConfig
from lowbit.train.sweep import Row, format_table, load_spec, run_sweep

FAST = ["device=cpu", "float_epochs=0", "epochs=1"]  # the embedded digits set, one epoch
PAPER = {"source": "Test paper", "table": "Table 9", "row": "small CNN, 4 bits", "top1": 50.0}


@pytest.fixture(autouse=True)
def one_thread():
    """The digits CNN is tiny: one thread is fastest, and on a busy machine two threads per
    process slow it down tenfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def trained(monkeypatch):
    """Names of the run directories ``run_training`` is called on."""
    calls = []
    real = sweep.run_training

    def spy(config, run_dir):
        calls.append(run_dir.name)
        return real(config, run_dir)

    monkeypatch.setattr(sweep, "run_training", spy)
    return calls


def two_rows():
    return [
        Row("w4", set={"paper": PAPER}),
        Row("w3", set={"bits": 3}, init="w4"),
    ]


def test_sweep_writes_table_beside_paper_and_resumes_without_rerunning(tmp_path, trained):
    records = run_sweep(two_rows(), tmp_path, FAST)
    assert trained == ["w4", "w3"]
    assert [r["status"] for r in records] == ["done", "done"]
    w4, w3 = records
    assert w4["bits"] == "4/4" and w3["bits"] == "3/3"
    assert w4["delta"] == round(w4["top1"] - 50.0, 2)
    assert w3["paper_top1"] is None and w3["delta"] is None
    table = (tmp_path / "table.md").read_text()
    assert "| w4 | small_cnn | digits | 4/4 | 50.0 | - | " in table
    assert f"| {w4['top1']:.2f} | {w4['delta']:+.2f} | Test paper Table 9: small CNN, 4 bits |" in (
        table
    )
    # The 3-bit row started from the 4-bit row's best checkpoint (progressive initialization).
    config = yaml.safe_load((tmp_path / "w3" / "config.yaml").read_text())
    assert config["init"] == str(tmp_path.resolve() / "w4" / "best.pt")
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["name"] for r in saved["rows"]] == ["w4", "w3"]

    trained.clear()
    again = run_sweep(two_rows(), tmp_path, FAST)
    assert trained == []
    assert [r["top1"] for r in again] == [w4["top1"], w3["top1"]]
    assert (tmp_path / "table.md").read_text() == table


def test_failed_row_is_reported_and_retried_while_others_finish(tmp_path, trained):
    rows = [
        Row("missing-data", set={"data.name": "cifar10", "data.dir": str(tmp_path / "none")}),
        Row("after-it", init="missing-data"),
        Row("fine"),
    ]
    records = run_sweep(rows, tmp_path / "sweep", FAST)
    assert [r["status"] for r in records] == ["failed", "failed", "done"]
    assert "data directory" in records[0]["error"]
    assert "'missing-data', which did not finish" in records[1]["error"]
    table = (tmp_path / "sweep" / "table.md").read_text()
    assert "| missing-data | small_cnn | cifar10 | 4/4 | - | - | failed | - |" in table
    assert "- missing-data: data directory" in table
    assert (tmp_path / "sweep" / "missing-data" / "error.log").is_file()

    trained.clear()
    run_sweep(rows, tmp_path / "sweep", FAST)
    assert trained == ["missing-data"]  # retried; the finished row is kept


def test_changed_config_of_a_finished_row_stops_before_training(tmp_path, trained):
    run_sweep([Row("w4")], tmp_path, FAST)
    trained.clear()
    with pytest.raises(LowbitError, match="run with another config"):
        run_sweep([Row("w4", set={"bits": 3})], tmp_path, FAST)
    assert trained == []


def test_a_bad_row_fails_the_sweep_before_anything_trains(tmp_path, trained):
    rows = [Row("ok"), Row("typo", set={"epoch": 3})]
    with pytest.raises(LowbitError, match="sweep row 'typo': unknown config key 'epoch'"):
        run_sweep(rows, tmp_path, FAST)
    assert trained == []


@pytest.mark.parametrize(
    "spec, message",
    [
        ("- recipe: a\n  sets: {}\n", "unknown keys ['sets']"),
        ("- name: a\n- name: a\n", "two sweep rows are named 'a'"),
        ("- name: a\n  init: b\n- name: b\n", "not an earlier row"),
        ("recipe: a\n", "must be a YAML list"),
    ],
)
def test_spec_mistakes_are_one_line_errors(tmp_path, spec, message):
    path = tmp_path / "spec.yaml"
    path.write_text(spec)
    with pytest.raises(LowbitError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_spec(path)


def test_table_lists_pending_rows():
    record = {
        "name": "r", "status": "pending", "model": "resnet20", "data": "cifar10", "bits": "2/2",
        "paper": None, "paper_top1": None, "reproduction_top1": None, "top1": None,
        "delta": None, "error": None,
    }
    table = format_table([record], "t")
    assert "| r | resnet20 | cifar10 | 2/2 | - | - | pending | - | - |" in table


def test_table_shows_a_reproductions_number_beside_the_papers(tmp_path):
    """The APoT rows carry the reproducibility report's own result (its Table 1) as
    ``paper.reproduction``: ResNet-20 CIFAR-10 4-bit, APoT 92.3, report 92.56."""
    config = RunConfig.of(resolve_config(find_recipe("apot-resnet20-cifar10-4bit")))
    record = sweep._record("r20", config, tmp_path / "r20")
    assert (record["paper_top1"], record["reproduction_top1"]) == (92.3, 92.56)
    assert "| r20 | resnet20 | cifar10 | 4/4 | 92.3 | 92.56 | pending | - |" in format_table(
        [record], "t")


def test_bits_label_of_an_adaptive_network_lists_its_bit_widths():
    config = resolve_config(find_recipe("coquant-resnet18-cifar10-8642"))
    assert sweep.bits_label(config) == "8/6/4/2"
    single = resolve_config(find_recipe("coquant-resnet18-cifar10-8642"), ["adaptive.bits=null"])
    assert sweep.bits_label(single) == "8/8"


def test_report_files_get_the_umasks_default_mode(tmp_path):
    mask = os.umask(0o027)
    try:
        sweep.write_report(tmp_path, [])
    finally:
        os.umask(mask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.json", "table.md"]
    for name in ("sweep.json", "table.md"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640


def test_rows_from_recipes_are_named_after_them():
    rows = sweep.rows_from_recipes(["apot-resnet20-cifar10-4bit", "recipes/x/mine.yaml"])
    assert [row.name for row in rows] == ["apot-resnet20-cifar10-4bit", "mine"]
    with pytest.raises(LowbitError, match="two sweep rows"):
        sweep.rows_from_recipes(["a.yaml", "other/a.yaml"])


def test_cli_sweep_from_a_spec_file(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("- name: w2\n  set: {bits: 2}\n")
    args = [sys.executable, "-m", "lowbit", "sweep", str(spec), "--out", str(tmp_path / "out")]
    for text in FAST:
        args += ["--set", text]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "| w2 | small_cnn | digits | 2/2 |" in result.stdout
    assert (tmp_path / "out" / "table.md").is_file()
