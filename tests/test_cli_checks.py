"""What every command shares: the one --device check, --plot without matplotlib, Ctrl-C and internal
errors as one line. In process (CliRunner), with the stage entry points replaced where a test must
show that nothing ran."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dropcheck import cli
from dropcheck.measurement.device import check_device, resolve_device
from dropcheck.records import DropcheckError
from dropcheck.training.pipeline import TrainOptions

REPO = Path(__file__).resolve().parents[1]
MODEL = str(REPO / "examples" / "preresnet.py")


def _invoke(*args: str) -> object:
    return CliRunner().invoke(cli.app, list(args))


def _commands(tmp_path: Path) -> dict[str, list[str]]:
    """Each command that takes --device, with what it needs to reach its option checks."""
    checkpoint = tmp_path / "in.pt"
    return {"measure": ["measure", MODEL],
            "recalibrate": ["recalibrate", MODEL, "--checkpoint", str(checkpoint), "-o", str(tmp_path / "out.pt")],
            "reproduce": ["reproduce", "fig1"],
            "train-compare": ["train-compare", MODEL, "--dataset", "fake"]}


def _refuse(monkeypatch: pytest.MonkeyPatch, module: str, name: str) -> None:
    """Replace a stage entry point by one that fails the test if it is called."""
    def called(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{module}.{name} ran")

    monkeypatch.setattr(f"{module}.{name}", called)


# --- --device ------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:1", "cuda:12"])
def test_device_check_accepts_auto_cpu_cuda_and_cuda_n(device: str) -> None:
    check_device(device)


@pytest.mark.parametrize("device", ["tpu", "gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "cuda:0:1", "cpu:0", ""])
def test_device_check_refuses_anything_else(device: str) -> None:
    with pytest.raises(DropcheckError, match="unknown --device") as caught:
        check_device(device)
    assert caught.value.kind == "usage" and caught.value.hint == "choose auto, cpu, cuda or cuda:N"


@pytest.mark.parametrize("command", ["measure", "recalibrate", "reproduce", "train-compare"])
def test_every_command_refuses_a_bad_device_with_the_same_line(command: str, tmp_path: Path) -> None:
    result = _invoke(*_commands(tmp_path)[command], "--device", "cuda:x")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "dropcheck: error: unknown --device 'cuda:x' (hint: choose auto, cpu, cuda or cuda:N)"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["measure", "recalibrate", "reproduce", "train-compare"])
def test_every_command_takes_cuda_n_and_then_finds_no_cuda(command: str, tmp_path: Path) -> None:
    # `reproduce --device cuda:1` was refused as an unknown device while `measure` accepted it
    from dropcheck.analysis.load import load_target

    torch.save(load_target(MODEL, weights=True).model.state_dict(), tmp_path / "in.pt")  # recalibrate loads it first
    result = _invoke(*_commands(tmp_path)[command], "--device", "cuda:1")
    said = result.stdout + result.stderr  # measure reports a failed target in its report, on stdout
    assert result.exit_code == 2
    assert "unknown --device" not in said and "--device cuda:1" in said and "CUDA" in said
    assert "Traceback" not in said


def test_a_cuda_index_beyond_the_machine_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DropcheckError, match="--device cuda:2 but this machine has 2 CUDA device") as caught:
        resolve_device("cuda:2")
    assert caught.value.kind == "usage"


# --- --plot without matplotlib -------------------------------------------------------------------

_NO_MATPLOTLIB = "dropcheck: error: --plot needs matplotlib, which is not installed (hint: pip install dropcheck[plot])"


def test_train_compare_plot_without_matplotlib_exits_before_training(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    _refuse(monkeypatch, "dropcheck.training.pipeline", "run_train_compare")
    result = _invoke("train-compare", MODEL, "--dataset", "fake", "--epochs", "1", "--seeds", "1",
                     "-o", str(tmp_path / "runs.json"), "--plot", str(tmp_path / "curves.png"))
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [_NO_MATPLOTLIB]  # the line reproduce prints
    assert list(tmp_path.iterdir()) == []


def test_reproduce_and_measure_say_the_same_before_running(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    _refuse(monkeypatch, "dropcheck.measurement.pipeline", "measure_target")
    for args in (["reproduce", "prop5", "--device", "cpu"], ["measure", MODEL]):
        result = _invoke(*args, "--plot", str(tmp_path / "x.png"))
        assert result.exit_code == 2, result.output
        assert result.stderr.strip().splitlines() == [_NO_MATPLOTLIB]


# --- Ctrl-C and internal errors ------------------------------------------------------------------

_STAGES = {"audit": ("dropcheck.analysis.pipeline", "audit_target", ["audit", MODEL]),
           "measure": ("dropcheck.measurement.pipeline", "measure_target", ["measure", MODEL]),
           "fix": ("dropcheck.fixer.pipeline", "fix_target", ["fix", MODEL, "--dry-run"]),
           "reproduce": ("dropcheck.measurement.reproduce", "reproduce_figure", ["reproduce", "fig1", "--device", "cpu"]),
           "train-compare": ("dropcheck.training.pipeline", "run_train_compare", ["train-compare", MODEL])}


@pytest.mark.parametrize("command", [*_STAGES, "recalibrate"])
def test_ctrl_c_is_one_line_and_exit_130_in_every_command(command: str, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    module, name, args = _STAGES.get(command, ("dropcheck.measurement.pipeline", "recalibrate_target",
                                               _commands(tmp_path)["recalibrate"]))
    (tmp_path / "in.pt").write_bytes(b"")
    monkeypatch.setattr(f"{module}.{name}", interrupted)
    result = _invoke(*args)
    assert result.exit_code == 130 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1].startswith("dropcheck: interrupted")


@pytest.mark.parametrize("command", ["train-compare", "recalibrate"])
def test_a_bug_in_a_stage_is_one_internal_error_line(command: str, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom\nsecond line")

    (tmp_path / "in.pt").write_bytes(b"")
    stage = "run_train_compare" if command == "train-compare" else "recalibrate_target"
    module = "dropcheck.training.pipeline" if command == "train-compare" else "dropcheck.measurement.pipeline"
    monkeypatch.setattr(f"{module}.{stage}", broken)
    result = _invoke(*_commands(tmp_path)[command])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("dropcheck: error: internal error while ") and f"{MODEL}: RuntimeError: boom (hint: " in line
    verbose = _invoke(*_commands(tmp_path)[command], "--verbose")
    assert f"traceback for {MODEL}:" in verbose.stderr and "RuntimeError: boom" in verbose.stderr


# --- the work the CLI hands to the training stage ------------------------------------------------

def test_train_options_choose_amp_and_channels_last_for_the_device() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert (TrainOptions().recipe(cpu).amp, TrainOptions().recipe(cpu).channels_last) == (False, False)
    assert (TrainOptions().recipe(cuda).amp, TrainOptions().recipe(cuda).channels_last) == (True, True)
    assert TrainOptions(amp=True).recipe(cpu).amp is False  # autocast with a scaler is CUDA only
    assert TrainOptions(amp=False, channels_last=False).recipe(cuda).channels_last is False
    assert TrainOptions(dataset="fake").recipe(cpu).epochs == 3 and TrainOptions(epochs=7).recipe(cpu).epochs == 7
