"""`dropcheck reproduce`: the paper's module tests give its orderings and its closed forms.

Batches are far smaller than the paper's 10^5 so the module runs in seconds on a laptop CPU;
Δ is averaged over 128+ units, which keeps the estimates within the tolerances below.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dropcheck import cli
from dropcheck.measurement import reproduce
from dropcheck.records import DropcheckError

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _setup(batch_size: int = 4096, batches: int = 2, seed: int = 0) -> reproduce.Setup:
    return reproduce.make_setup("cpu", batch_size, batches, seed)


def _rel(measured: float, closed: float) -> float:
    return abs(measured / closed - 1.0)


@pytest.fixture(scope="module")
def fig1() -> reproduce.Reproduction:
    return reproduce.run_fig1(_setup(), widths=(128, 512))  # every E[W] of the default grid


@pytest.fixture(scope="module")
def fig3() -> reproduce.Reproduction:
    return reproduce.run_fig3(_setup())  # the default grid: 5 keep probabilities x 5 Var[x0]


@pytest.fixture(scope="module")
def prop5() -> reproduce.Reproduction:
    return reproduce.run_prop5(_setup(batch_size=2048))


# --- Figure 1 ------------------------------------------------------------------------------------

def test_fig1_post_dropout_below_pre_dropout_below_one_for_nonzero_mean_weight(fig1: reproduce.Reproduction) -> None:
    nonzero = [row for row in fig1.rows if row["mean_w"] != 0]
    assert {row["width"] for row in nonzero} == {128, 512}
    for row in nonzero:
        assert row["delta_post"] < row["delta_pre"] < 1.0, row
        assert row["holds"] is True
    assert fig1.held == fig1.tested == len(nonzero)


def test_fig1_zero_mean_weight_makes_post_and_pre_about_equal(fig1: reproduce.Reproduction) -> None:
    gap = {(row["width"], row["mean_w"]): abs(row["delta_post"] - row["delta_pre"]) for row in fig1.rows}
    assert all(row["holds"] is None for row in fig1.rows if row["mean_w"] == 0)  # the claim is for E[W] != 0
    for width in (128, 512):
        assert gap[(width, 0.0)] < 0.05
    assert gap[(512, 0.02)] > 0.3  # where the weight has a mean, PreDropout is far ahead


def test_fig1_measured_deltas_match_their_closed_forms(fig1: reproduce.Reproduction) -> None:
    for row in fig1.rows:
        assert _rel(row["delta_post"], row["closed_post"]) < 0.02, row
        assert _rel(row["delta_pre"], row["closed_pre"]) < 0.02, row


# --- Figure 3 ------------------------------------------------------------------------------------

def test_fig3_non_residual_below_residual_below_one_for_every_keep(fig3: reproduce.Reproduction) -> None:
    assert {row["keep"] for row in fig3.rows} == set(reproduce.FIG3_KEEPS)
    for row in fig3.rows:
        assert row["delta_f"] < row["delta_res"] < 1.0, row
    assert fig3.held == fig3.tested == len(fig3.rows) == 25


def test_fig3_non_residual_within_2_percent_of_eq29(fig3: reproduce.Reproduction) -> None:
    for row in fig3.rows:
        assert row["closed_f"] == pytest.approx((math.pi - 1) / (math.pi / row["keep"] - 1))
        assert _rel(row["delta_f"], row["closed_f"]) < 0.02, row


def test_fig3_residual_within_2_percent_of_eq31(fig3: reproduce.Reproduction) -> None:
    for row in fig3.rows:
        v, p = row["var_x0"], row["keep"]
        assert row["closed_res"] == pytest.approx((v + (math.pi - 1) / math.pi) / (v + (math.pi / p - 1) / math.pi))
        assert _rel(row["delta_res"], row["closed_res"]) < 0.02, row


def test_closed_forms_limits() -> None:
    assert reproduce.closed_fig3(1.0) == pytest.approx(1.0)  # no dropout, no inconsistency
    assert reproduce.closed_fig3(0.5, 1e9) == pytest.approx(1.0)  # a huge skip drowns the branch
    closed = reproduce.closed_prop5(1.0, 49)
    assert closed["h4"] == pytest.approx(closed["h5"]) == pytest.approx(closed["gap"])


# --- Proposition 5 -------------------------------------------------------------------------------

def test_prop5_variances_within_5_percent_of_closed_forms(prop5: reproduce.Reproduction) -> None:
    assert len(prop5.rows) == len(reproduce.PROP5_SIZES) * len(reproduce.PROP5_KEEPS)
    for row in prop5.rows:
        for measured, closed in prop5.closed_pairs:
            assert _rel(row[measured], row[closed]) < 0.05, (measured, row)


def test_prop5_dropout_before_gap_has_less_variance_than_after(prop5: reproduce.Reproduction) -> None:
    for row in prop5.rows:
        assert row["var_h4"] < row["var_h5"], row
    assert prop5.held == prop5.tested == len(prop5.rows)


# --- setup and determinism -----------------------------------------------------------------------

def test_same_seed_gives_same_numbers_and_leaves_the_callers_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = reproduce.run_prop5(_setup(256, 1, seed=7), sizes=(4,), keeps=(0.5,))
    assert torch.equal(torch.random.get_rng_state(), before)
    again = reproduce.run_prop5(_setup(256, 1, seed=7), sizes=(4,), keeps=(0.5,))
    other = reproduce.run_prop5(_setup(256, 1, seed=8), sizes=(4,), keeps=(0.5,))
    assert first.rows == again.rows
    assert first.rows != other.rows


def test_cpu_default_batch_is_stated_in_the_setup_line() -> None:
    setup = reproduce.make_setup("cpu")
    assert (setup.batch_size, setup.batches) == (reproduce.CPU_BATCH, reproduce.DEFAULT_BATCHES)
    assert setup.describe() == "batch 8192 x 4 on cpu (the paper uses 10^5 on a GPU)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_usage_error() -> None:
    with pytest.raises(DropcheckError, match="CUDA is not available"):
        reproduce.make_setup("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_defaults_to_the_papers_batch_and_matches_eq29() -> None:
    setup = reproduce.make_setup("cuda", batches=1)
    assert setup.batch_size == reproduce.PAPER_BATCH
    result = reproduce.run_fig3(setup, variances=(1.0,))
    for row in result.rows:
        assert _rel(row["delta_f"], row["closed_f"]) < 0.02, row
        assert _rel(row["delta_res"], row["closed_res"]) < 0.02, row


# --- the command line ----------------------------------------------------------------------------

def test_cli_prints_a_table_and_writes_a_png(tmp_path: Path) -> None:
    png = tmp_path / "x.png"
    proc = subprocess.run([sys.executable, "-m", "dropcheck", "reproduce", "prop5", "--batch-size", "256",
                           "--batches", "1", "--device", "cpu", "--plot", str(png)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Proposition 5")
    assert lines[1] == "batch 256 x 1 on cpu (the paper uses 10^5 on a GPU)"
    assert re.split(r"\s{2,}", lines[3].strip()) == ["HxW", "p (keep)", "Var[GAP]", "σ²/S", "Var[H4]", "closed",
                                                     "Var[H5]", "closed", "holds"]
    assert lines[4].split()[:2] == ["4x4", "0.5"]
    assert "Var[H4] < Var[H5]: holds in 9 of 9 rows" in proc.stdout
    assert lines[-1] == f"wrote {png}"
    assert proc.stderr == ""  # no progress bar when stderr is not a terminal
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_cli_json_parses_and_has_the_rows() -> None:
    result = CliRunner().invoke(cli.app, ["reproduce", "prop5", "--batch-size", "64", "--batches", "1",
                                          "--device", "cpu", "--format", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["schema"] == 1 and document["plot"] is None
    body = document["reproduce"]
    assert body["figure"] == "prop5" and body["setup"].startswith("batch 64 x 1 on cpu")
    assert len(body["rows"]) == 9 and {"var_h4", "closed_h4", "var_h5", "closed_h5", "holds"} <= set(body["rows"][0])


@pytest.mark.parametrize(("args", "text"), [
    (["fig2"], "unknown figure 'fig2' (hint: choose one of fig1, fig3, prop5)"),
    (["fig1", "--device", "tpu"], "unknown --device 'tpu'"),
    (["fig1", "--format", "xml"], "unknown --format 'xml'"),
    (["fig1", "--batch-size", "1"], "--batch-size 1 is too small"),
    (["fig1", "--batches", "0"], "--batches 0 is too small"),
])
def test_cli_bad_options_are_one_line_and_exit_2(args: list[str], text: str) -> None:
    result = CliRunner().invoke(cli.app, ["reproduce", *args])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"dropcheck: error: {result.stderr.split('error: ', 1)[1].strip()}"]
    assert text in result.stderr


def test_cli_plot_without_matplotlib_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    result = CliRunner().invoke(cli.app, ["reproduce", "prop5", "--batch-size", "64", "--batches", "1",
                                          "--plot", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "pip install dropcheck[plot]" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_cli_figure_list_matches_the_stage() -> None:
    from dropcheck.cli.reproduce import _FIGURES

    assert _FIGURES == reproduce.FIGURES
