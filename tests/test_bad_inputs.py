"""Bad input through the real CLI (design §9): exit 2, one exact line with its hint, no traceback,
and no file left behind.

Every case runs `dropcheck ...` as a user types it, in a folder holding the bad files, so messages
carry the short relative names a user sees. Each run pays ~3 s of torch imports, so the runs are
declared once in `_runs` and started together, in parallel, the first time a test asks for one.
The expected lines are exact on purpose: a wording change must update this file.
"""
from __future__ import annotations

import importlib.util
import os
import random
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

EXE = Path(sys.executable).parent / "dropcheck"
DROPCHECK = [str(EXE)] if EXE.is_file() else [sys.executable, "-m", "dropcheck"]
TIMEOUT = 180
SAVE_HINT = "save it with torch.save(model.state_dict(), PATH)"

# the bad model files, written into the working folder of the runs
FILES = {
    "empty.py": "",
    "syntax.py": """\
        import torch

        WIDTHS = (16, 32,
        """,
    "imports_missing.py": """\
        from torch import nn

        import not_a_package_xyz  # the model needs it, but it is not installed


        class Net(nn.Module):
            def forward(self, x):
                return not_a_package_xyz.op(x)
        """,
    "no_model.py": """\
        import torch


        class Settings:
            width = 16


        def make_input(batch):
            return torch.randn(batch, 3, 8, 8)
        """,
    "two_models.py": """\
        from torch import nn


        class Alpha(nn.Module):
            def forward(self, x):
                return x


        class Beta(nn.Module):
            def forward(self, x):
                return x
        """,
    "needs_args.py": """\
        from torch import nn


        class Wide(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.conv = nn.Conv2d(3, width, 3)

            def forward(self, x):
                return self.conv(x)
        """,
    "untraceable.py": """\
        from torch import nn


        class Branchy(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3)
                self.bn = nn.BatchNorm2d(4)

            def forward(self, x):
                x = self.conv(x)
                if x.sum() > 0:
                    x = self.bn(x)
                return x
        """,
    "raises.py": """\
        from torch import nn


        class Unfinished(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3)
                self.bn = nn.BatchNorm2d(4)

            def forward(self, x):
                x = self.bn(self.conv(x))
                raise RuntimeError("forward is not written yet")
        """,
    "small.py": """\
        from torch import nn


        class Small(nn.Module):
            input_shape = (2, 3, 8, 8)

            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3)
                self.bn = nn.BatchNorm2d(4)
                self.drop = nn.Dropout(0.1)
                self.conv2 = nn.Conv2d(4, 4, 3)
                self.bn2 = nn.BatchNorm2d(4)

            def forward(self, x):
                x = self.drop(self.bn(self.conv(x)))
                return self.bn2(self.conv2(x))
        """,
}
# made by the `work` fixture: a binary "model", checkpoints, a read-only folder
MADE = ["weights.py", "good.pt", "corrupt.pt", "truncated.pt", "whole.pt", "ro"]
WRITTEN = ["from_pickle.pt"]  # the one run that must write: recalibrate --trust-pickle

# case -> (argv after `dropcheck`, expected stdout, expected stderr); audit and measure report a
# failed target on stdout (it is part of the report), the other errors go to stderr
CASES: dict[str, tuple[list[str], str, str]] = {
    "missing-file": (
        ["audit", "missing.py"],
        "missing.py: error (load): missing.py: no such file (hint: check the path, or use package.module:Name)", ""),
    "empty-file": (
        ["audit", "empty.py"],
        "empty.py: error (load): empty.py defines no nn.Module class or zero-argument factory "
        "(hint: define the model class in that file, or name it with :Name)", ""),
    "binary-file": (
        ["audit", "weights.py"],
        "weights.py: error (load): weights.py: not a Python source file (binary) "
        "(hint: give the .py file that defines the model)", ""),
    "syntax-error": (
        ["audit", "syntax.py"],
        "syntax.py: error (load): syntax.py:3: syntax error: '(' was never closed "
        "(hint: fix the syntax error; the file must import cleanly)", ""),
    "import-error": (
        ["audit", "imports_missing.py"],
        "imports_missing.py: error (load): imports_missing.py:3: importing imports_missing.py failed: "
        "ModuleNotFoundError: No module named 'not_a_package_xyz' "
        "(hint: install 'not_a_package_xyz' or fix the import)", ""),
    "no-candidate": (
        ["audit", "no_model.py"],
        "no_model.py: error (load): no_model.py defines no nn.Module class or zero-argument factory "
        "(hint: define the model class in that file, or name it with :Name)", ""),
    "several-candidates": (
        ["audit", "two_models.py"],
        "two_models.py: error (load): two_models.py defines several models: Alpha, Beta "
        "(hint: pick one with two_models.py:NAME)", ""),
    "constructor-needs-arguments": (
        ["audit", "needs_args.py"],
        "needs_args.py: error (load): needs_args.py:Wide: the constructor needs width "
        "(hint: pass them with -a KEY=VALUE, e.g. -a width=...)", ""),
    "untraceable": (
        ["audit", "untraceable.py"],
        "untraceable.py: error (trace): untraceable.py:12: cannot trace Branchy: ValueControlFlow: control flow on "
        "a tensor's values (hint: a branch or loop on tensor values cannot be traced for every input: use "
        "torch.where, make that code a leaf module or a torch.fx.wrap'ed function, or audit a submodule without it "
        "(TARGET::name); sizes, dims and devices are resolved from the example input)", ""),
    "forward-raises": (
        ["audit", "raises.py"],
        "raises.py: error (trace): raises.py:12: cannot trace Unfinished: RuntimeError: forward is not written yet "
        "(hint: the model's code raised this while torch.fx traced it with proxy inputs; "
        "--verbose shows the traceback)", ""),
    "wrong-input-shape": (
        ["audit", "small.py", "--input-shape", "1,3,32"],
        "small.py: error (shape): input shape 1,3,32 does not fit Small at conv: Given groups=1, weight of size "
        "[4, 3, 3, 3], expected input[1, 1, 3, 32] to have 3 channels, but got 1 channels instead "
        "(hint: pass the shape the model expects with --input-shape N,C,H,W)", ""),
    **{f"impossible-input-shape-{name}": (
        ["audit", "small.py", f"--input-shape={shape}"], "",
        f"dropcheck: error: bad --input-shape '{shape}' (hint: give positive sizes, e.g. 1,3,224,224)")
       for name, shape in (("zero", "0,3,8,8"), ("negative", "2,-3,8,8"), ("not-a-number", "2,three,8,8"))},
    # --checkpoint: measure and recalibrate take it (fix does not); both read it with checkpoint.py, so
    # measure meets every bad checkpoint and recalibrate (errors on stderr, not in a report) the pickle
    **{f"{kind}-checkpoint-{command}": (
        ["measure", "small.py", "--checkpoint", f"{kind}.pt"] if command == "measure" else
        ["recalibrate", "small.py", "--checkpoint", f"{kind}.pt", "-o", "recalibrated.pt"],
        f"small.py: error (checkpoint): {message}" if command == "measure" else "",
        f"dropcheck: error: {message}" if command == "recalibrate" else "")
       for kind, message, commands in (
           ("corrupt", "corrupt.pt is not a readable PyTorch checkpoint: it was not written by torch.save, or it "
                       f"is damaged (hint: the file may be truncated or not a checkpoint; {SAVE_HINT})",
            ("measure",)),
           ("truncated", "truncated.pt is not a readable PyTorch checkpoint: PytorchStreamReader failed reading "
                         "zip archive: failed finding central directory (hint: the file may be truncated or not "
                         f"a checkpoint; {SAVE_HINT})", ("measure",)),
           ("whole", "whole.pt is a pickled model or holds other pickled objects (small.Small), which safe "
                     f"loading refuses (hint: pass --trust-pickle if you trust its source, or {SAVE_HINT})",
            ("measure", "recalibrate")))
       for command in commands},
}
# read-only output folder: (argv, expected stderr with {ro} for the resolved folder); nothing on stdout
UNWRITABLE: dict[str, tuple[list[str], str]] = {
    "fix-output": (["fix", "small.py", "-o", "ro/fixed"],
                   "small.py: error (output): ro/fixed: {ro} is not writable (hint: choose a writable -o)"),
    "fix-output-pt": (["fix", "small.py", "-o", "ro/fixed.pt"],
                      "small.py: error (output): ro/fixed.pt: {ro} is not writable (hint: choose a writable -o)"),
    "audit-output": (["audit", "small.py", "-o", "ro/report.txt"],
                     "dropcheck: error: cannot write ro/report.txt: Permission denied "
                     "(hint: check the directory's permissions)"),
    "recalibrate-output": (["recalibrate", "small.py", "--checkpoint", "good.pt", "-o", "ro/recalibrated.pt"],
                           "dropcheck: error: ro/recalibrated.pt: {ro} is not writable (hint: choose a writable -o)"),
}
VERBOSE = ["audit", "raises.py", "--verbose"]
TRUSTED = ["recalibrate", "small.py", "--checkpoint", "whole.pt", "--trust-pickle", "-o", "from_pickle.pt",
           "--data", "normal", "--batches", "1", "--batch-size", "4"]


# --- the working folder and the runs -------------------------------------------------------------

@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("bad_inputs")
    for name, source in FILES.items():
        (folder / name).write_text(textwrap.dedent(source))
    (folder / "weights.py").write_bytes(b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(range(256)))
    small = _import_as("small", folder / "small.py")  # as a training script imports it: pickles say small.Small
    torch.manual_seed(0)
    torch.save(small.Small().state_dict(), folder / "good.pt")
    data = (folder / "good.pt").read_bytes()
    (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
    (folder / "corrupt.pt").write_bytes(random.Random(0).randbytes(4096))
    torch.manual_seed(1)
    torch.save(small.Small(), folder / "whole.pt")
    del sys.modules["small"]
    (folder / "ro").mkdir()
    (folder / "ro").chmod(0o555)
    yield folder
    (folder / "ro").chmod(0o755)


def _import_as(name: str, path: Path) -> object:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _unprivileged(folder: Path) -> list[str] | None:
    """A command prefix under which the read-only folder stops writes; None where nothing does.

    root ignores directory permissions through CAP_DAC_OVERRIDE; setpriv drops it for one command."""
    setpriv = shutil.which("setpriv")
    if getattr(os, "geteuid", lambda: -1)() != 0:
        prefix: list[str] = []
    elif setpriv:
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
    else:
        return None
    probe = folder / "ro" / "probe"
    result = subprocess.run([*prefix, sys.executable, "-c", "import sys; open(sys.argv[1], 'w')", str(probe)],
                            capture_output=True, text=True, timeout=TIMEOUT)
    if probe.exists():
        probe.unlink()
        return None
    return prefix if "PermissionError" in result.stderr else None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FORCE_COLOR", None)  # output is piped: plain text, as in a CI log
    return env


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, env=_env())


@pytest.fixture(scope="module")
def runs(work: Path) -> dict[str, subprocess.CompletedProcess[str] | None]:
    prefix = _unprivileged(work)
    commands = {"trusted": [*DROPCHECK, *TRUSTED], "verbose": [*DROPCHECK, *VERBOSE],
                **{name: [*DROPCHECK, *argv] for name, (argv, _, _) in CASES.items()}}
    if prefix is not None:
        commands.update({name: [*prefix, *DROPCHECK, *argv] for name, (argv, _) in UNWRITABLE.items()})
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {name: pool.submit(_run, command, work) for name, command in commands.items()}
        done: dict[str, subprocess.CompletedProcess[str] | None] = {n: f.result() for n, f in futures.items()}
    return {**{name: None for name in UNWRITABLE}, **done}


def _files(folder: Path) -> list[str]:
    """Every file and folder under `folder`, relative; Python's bytecode caches aside."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts)


# --- each bad input: exit 2, its exact line, no traceback -----------------------------------------

@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_exact_line_with_exit_2(runs: dict[str, subprocess.CompletedProcess[str] | None],
                                                  case: str) -> None:
    result = runs[case]
    assert result is not None
    _, stdout, stderr = CASES[case]
    assert "Traceback" not in result.stdout + result.stderr
    assert (result.returncode, result.stdout, result.stderr) == (
        2, stdout + "\n" if stdout else "", stderr + "\n" if stderr else "")


@pytest.mark.parametrize("case", list(UNWRITABLE))
def test_unwritable_output_folder_is_one_line_and_stays_empty(
        runs: dict[str, subprocess.CompletedProcess[str] | None], work: Path, case: str) -> None:
    result = runs[case]
    if result is None:
        pytest.skip("running as root, and setpriv cannot drop CAP_DAC_OVERRIDE: a read-only folder stops nothing")
    _, stderr = UNWRITABLE[case]
    assert "Traceback" not in result.stdout + result.stderr
    assert (result.returncode, result.stdout, result.stderr) == (
        2, "", stderr.format(ro=(work / "ro").resolve()) + "\n")
    assert _files(work / "ro") == []  # no temporary file, no half-written folder


def test_verbose_shows_the_traceback_through_the_models_forward(
        runs: dict[str, subprocess.CompletedProcess[str] | None]) -> None:
    result = runs["verbose"]
    assert result is not None
    assert (result.returncode, result.stdout) == (2, CASES["forward-raises"][1] + "\n")
    assert result.stderr.startswith("traceback for raises.py:\nTraceback (most recent call last):\n")
    assert 'raises.py", line 12, in forward\n    raise RuntimeError("forward is not written yet")\n' in result.stderr
    assert result.stderr.endswith("RuntimeError: forward is not written yet\n")


def test_pickled_whole_model_loads_with_trust_pickle(runs: dict[str, subprocess.CompletedProcess[str] | None],
                                                     work: Path) -> None:
    result = runs["trusted"]
    assert result is not None
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "wrote from_pickle.pt"
    written = torch.load(work / "from_pickle.pt", weights_only=True)
    _import_as("small", work / "small.py")
    try:
        pickled = torch.load(work / "whole.pt", weights_only=False).state_dict()
    finally:
        del sys.modules["small"]
    assert set(written) == set(pickled)
    assert all(torch.equal(written[k], pickled[k]) for k in ("conv.weight", "conv.bias", "conv2.weight"))


def test_no_run_leaves_a_file_behind(runs: dict[str, subprocess.CompletedProcess[str] | None], work: Path) -> None:
    assert runs  # every run has finished
    assert _files(work) == sorted([*FILES, *MADE, *WRITTEN])  # no outputs, partial or temporary files
