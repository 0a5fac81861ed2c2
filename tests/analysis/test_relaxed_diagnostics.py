"""SRQ Figure 6 (§3.4): error, distribution bias and gradient variance of RQ / SRQ / DropBits."""

from __future__ import annotations

import pytest

from lowbit import cli
from lowbit.analysis.relaxed_diagnostics import METHODS, estimate, main
from lowbit.errors import LowbitError


@pytest.fixture(scope="module")
def table():
    rows = estimate(bits=3, samples=20000, seed=0)
    return {(row.x, row.method): row for row in rows}


MIDPOINTS = [-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5]


def test_midpoints_of_the_3bit_grid(table):
    assert sorted({x for x, _ in table}) == MIDPOINTS
    assert {m for _, m in table} == set(METHODS)


def test_srq_quantization_error_below_rq_at_every_midpoint_figure_6(table):
    """SRQ takes the mode (error alpha/2 at a midpoint); RQ's sample can land far away."""
    for x in MIDPOINTS:
        assert table[x, "SRQ"].error == pytest.approx(0.5)
        assert table[x, "SRQ"].error < table[x, "RQ"].error - 0.02


def test_dropbits_reduces_the_distribution_bias_of_srq_figure_6(table):
    """Never above SRQ's bias; strictly below wherever a neighbour of x carries a mask."""
    for x in MIDPOINTS:
        assert table[x, "SRQ+DropBits"].bias <= table[x, "SRQ"].bias + 1e-12
    for x in (-3.5, -2.5, 1.5, 2.5):
        assert table[x, "SRQ+DropBits"].bias < table[x, "SRQ"].bias - 0.03
    mean = {m: sum(table[x, m].bias for x in MIDPOINTS) / len(MIDPOINTS) for m in METHODS}
    assert mean["SRQ+DropBits"] < mean["SRQ"]


def test_srq_gradient_estimator_has_zero_variance_section_3_2(table):
    for x in MIDPOINTS:
        assert table[x, "SRQ"].variance == 0
        assert table[x, "RQ"].variance > 0 and table[x, "SRQ+DropBits"].variance > 0


def test_main_prints_the_table(capsys, tmp_path):
    plot = tmp_path / "fig6.png"
    assert main(["--samples", "2000", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "error:RQ" in out and "-3.5" in out and "2.5" in out
    assert plot.exists() or "matplotlib is not installed" in out


def test_bad_settings_raise_lowbit_error():
    with pytest.raises(LowbitError):
        estimate(bits=3, keep=1.0)


def test_lowbit_diagnose_help_lists_the_diagnostics_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["diagnose", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith("usage: lowbit diagnose")
    for option in ("--bits", "--sigma", "--temperature", "--keep", "--samples", "--seed", "--plot"):
        assert option in out
    assert "midpoints of a grid." in out  # the whole first paragraph of the docstring


def test_lowbit_diagnose_runs_with_its_options(capsys):
    assert cli.main(["diagnose", "--bits", "2", "--samples", "500", "--keep", "0.8"]) == 0
    out = capsys.readouterr().out
    assert "2-bit grid" in out and "Pi=0.8, 500 samples" in out and "error:SRQ" in out


def test_lowbit_diagnose_rejects_an_unknown_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["diagnose", "--bogus"])
    assert exit_.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_lowbit_diagnose_bad_setting_is_one_line(capsys):
    assert cli.main(["diagnose", "--bits", "9", "--samples", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lowbit: error: diagnostics need 2 <= bits <= 8") and "\n" not in err
