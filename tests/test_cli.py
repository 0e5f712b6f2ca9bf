"""The `dropcheck` command line, run as a user runs it: a subprocess in the repository root.

Each audit process pays ~3 s of torch imports, so the audits this module needs are declared
once in AUDITS and started together, in parallel, the first time a test asks for one.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dropcheck import __version__, atomic, cli
from dropcheck.cli import errors
from dropcheck.records import DropcheckError, Report

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT.parent / "shared" / "contract" / "check_audit_json.py"
DROPCHECK_EXE = Path(sys.executable).parent / "dropcheck"
TIMEOUT = 180

# Model files that must each fail with one clean line: name -> (source, error kind, text in the line)
BAD_FILES = {
    "syntax": ("def broken(:\n    pass\n", "load", "syntax error"),
    "import_fails": ("import not_a_module_xyz\n", "load", "not_a_module_xyz"),
    "no_module": ("import torch\n\nWIDTH = 3\n", "load", "no nn.Module"),
    "two_models": ("""
        from torch import nn

        class Alpha(nn.Module):
            def forward(self, x):
                return x

        class Beta(nn.Module):
            def forward(self, x):
                return x
        """, "load", "Alpha, Beta"),
    "needs_args": ("""
        from torch import nn

        class Wide(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.conv = nn.Conv2d(3, width, 3)

            def forward(self, x):
                return self.conv(x)
        """, "load", "width"),
    "untraceable": ("""
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
        """, "trace", "untraceable.py:11"),  # the `if` line of the dedented source
}
MISSING = "does/not/exist.py"


def _audits(bad_dir: Path, out_dir: Path) -> dict[str, list[str]]:
    """Every audit subprocess the tests use, by name (argv after `dropcheck`)."""
    bad_targets = [MISSING, *(str(bad_dir / f"{name}.py") for name in BAD_FILES)]
    return {
        "P6": ["audit", "examples/preresnet.py", "-a", "position=P6"],
        "P7": ["audit", "examples/preresnet.py", "-a", "position=P7"],
        "P7-info": ["audit", "examples/preresnet.py", "-a", "position=P7", "--fail-on", "info"],
        "P7-never": ["audit", "examples/preresnet.py", "-a", "position=P7", "--fail-on", "never"],
        "P3-output": ["audit", "examples/preresnet.py", "-a", "position=P3", "--format", "json",
                      "--output", str(out_dir / "report.json")],
        "H5": ["audit", "examples/mobilenet_head.py", "-a", "head_position=H5"],
        "H5-warning": ["audit", "examples/mobilenet_head.py", "-a", "head_position=H5", "--fail-on", "warning"],
        "good-and-bad": ["audit", "examples/preresnet.py", "-a", "position=P3", MISSING, "--format", "json",
                         "--verbose"],
        "bad-files": ["audit", *bad_targets],
        "bad-shape": ["audit", "examples/preresnet.py", "--input-shape", "1,3"],
        "bad-model-arg": ["audit", "examples/preresnet.py", "-a", "position"],
        "bad-input-shape": ["audit", "examples/preresnet.py", "--input-shape", "1,three,32,32"],
    }


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)


def _dropcheck(*args: str) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "dropcheck", *args])


def _contract_available() -> bool:
    return CONTRACT.is_file() and DROPCHECK_EXE.is_file()


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bad_models")
    for name, (source, _, _) in BAD_FILES.items():
        (directory / f"{name}.py").write_text(textwrap.dedent(source).lstrip("\n"))
    return directory


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("out")
    (directory / "report.json").write_text("old content\n")  # replaced whole, never half-written
    return directory


@pytest.fixture(scope="module")
def runs(bad_dir: Path, out_dir: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    commands = {name: [sys.executable, "-m", "dropcheck", *args] for name, args in _audits(bad_dir, out_dir).items()}
    if _contract_available():  # the slowest run (~20 s): start it first
        commands = {"contract": [sys.executable, str(CONTRACT), str(DROPCHECK_EXE)], **commands}
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {name: pool.submit(_run, command) for name, command in commands.items()}
        return {name: future.result() for name, future in futures.items()}


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# --- exit codes ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("run", "expected"), [
    ("P6", 0),  # Guideline 1: clean
    ("P7", 0),  # DC005 is info, below the default error level
    ("P7-info", 1),
    ("P7-never", 0),
    ("P3-output", 1),  # DC001 error
    ("H5", 0),  # DC002 is a warning
    ("H5-warning", 1),
])
def test_exit_code_follows_fail_on(runs: dict[str, subprocess.CompletedProcess[str]], run: str,
                                   expected: int) -> None:
    result = runs[run]
    assert result.returncode == expected, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_text_report_of_a_clean_and_an_info_model(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    assert "3 targets" not in runs["P6"].stdout
    assert runs["P6"].stdout.splitlines()[-1] == "1 target audited: 0 errors, 0 warnings, 0 info"
    # the three blocks' DC005 share one source line: one line with their count and ids
    assert re.search(r"^examples/preresnet\.py:\d+: DC005 \[info\] x3 stages\.0\.0\.drop, stages\.1\.0\.drop, "
                     r"stages\.2\.0\.drop: ", runs["P7"].stdout, re.M)
    assert re.search(r"^examples/mobilenet_head\.py:\d+: DC002 \[warning\] drop: ", runs["H5"].stdout, re.M)


def test_exit_code_logic_on_records() -> None:
    failed = Report(target="x.py", status="error", error=DropcheckError("load", "no such file"))
    assert cli.exit_code([Report(target="ok.py")], cli.FAIL_ON["info"]) == 0
    assert cli.exit_code([Report(target="ok.py"), failed], None) == 2


# --- JSON and --output -----------------------------------------------------------------------------

def test_output_file_holds_the_json_and_stdout_stays_empty(runs: dict[str, subprocess.CompletedProcess[str]],
                                                           out_dir: Path) -> None:
    result = runs["P3-output"]
    assert result.stdout == ""
    assert sorted(p.name for p in out_dir.iterdir()) == ["report.json"]  # no temp file left behind
    document = json.loads((out_dir / "report.json").read_text())
    assert document["schema"] == 1 and document["dropcheck_version"] == __version__
    (res,) = document["results"]
    assert res["status"] == "ok" and res["model"] == "PreResNet"
    assert [d["id"] for d in res["dropouts"]] == ["stages.0.0.drop", "stages.1.0.drop", "stages.2.0.drop"]
    assert {(d["site"], d["paper_position"]) for d in res["dropouts"]} == {("branch.pre_bn", "P3")}
    first = next(f for f in res["findings"] if f["dropout"] == "stages.0.0.drop")
    assert first["rule"] == "DC001" and first["severity"] == "error"
    assert {f["rule"] for f in res["findings"]} == {"DC001"}


def test_a_failing_target_does_not_hide_the_others(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = runs["good-and-bad"]
    assert result.returncode == 2
    document = json.loads(result.stdout)
    assert [r["target"] for r in document["results"]] == ["examples/preresnet.py", MISSING]
    assert [r["status"] for r in document["results"]] == ["ok", "error"]
    assert document["results"][0]["findings"]
    assert document["results"][1]["error"]["kind"] == "load"


def test_write_atomic_leaves_the_old_file_when_replace_fails(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.txt"
    target.write_text("old\n")

    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(DropcheckError) as caught:
        atomic.write_atomic(target, "new\n")
    assert caught.value.kind == "output" and caught.value.hint
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.txt"]


@pytest.mark.skipif(not _contract_available(), reason="contract script or dropcheck executable absent")
def test_json_contract_script_passes(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = runs["contract"]
    assert result.returncode == 0, result.stdout + result.stderr


# --- bad input: one line, the kind, a hint, exit 2, never a traceback ------------------------------

def test_each_bad_model_file_fails_in_one_line(runs: dict[str, subprocess.CompletedProcess[str]],
                                               bad_dir: Path) -> None:
    result = runs["bad-files"]
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    lines = _lines(result.stdout + result.stderr)
    expected = {MISSING: ("load", "no such file"),
                **{str(bad_dir / f"{name}.py"): (kind, text) for name, (_, kind, text) in BAD_FILES.items()}}
    for target, (kind, text) in expected.items():
        (line,) = [line for line in lines if line.startswith(target + ":")]
        assert f"error ({kind})" in line and "hint: " in line and text in line, line
    assert len(lines) == len(expected) + 1  # plus the summary line
    assert lines[-1].endswith(f"{len(expected)} targets failed")


def test_wrong_input_shape_is_exactly_one_line(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = runs["bad-shape"]
    assert result.returncode == 2
    (line,) = _lines(result.stdout + result.stderr)
    assert line.startswith("examples/preresnet.py: error (shape): ") and "hint: " in line


@pytest.mark.parametrize("run", ["bad-model-arg", "bad-input-shape"])
def test_bad_flag_values_are_one_usage_line(runs: dict[str, subprocess.CompletedProcess[str]], run: str) -> None:
    result = runs[run]
    assert result.returncode == 2 and result.stdout == ""
    (line,) = _lines(result.stderr)
    assert line.startswith("dropcheck: error: ") and "hint: " in line


@pytest.mark.parametrize("args", [
    ["audit"],  # no targets
    ["audit", "examples/preresnet.py", "--select", "DC999"],
    ["audit", "examples/preresnet.py", "--ignore", "not-a-rule"],
    ["audit", "examples/preresnet.py", "--fail-on", "sometimes"],
    ["audit", "examples/preresnet.py", "--format", "yaml"],
    ["audit", "examples/preresnet.py", "--output", "no/such/dir/report.json"],
])
def test_usage_errors_are_one_line_before_any_model_loads(args: list[str]) -> None:
    result = _dropcheck(*args)
    assert result.returncode == 2 and result.stdout == ""
    (line,) = _lines(result.stderr)
    assert line.startswith("dropcheck: error: ") and "(hint: " in line


def test_verbose_adds_the_traceback_on_stderr_only(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = runs["good-and-bad"]
    assert "Traceback (most recent call last)" in result.stderr and "no such file" in result.stderr
    json.loads(result.stdout)  # the report on stdout stays one valid JSON document


def test_verbose_traceback_is_the_cause_of_the_error(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        try:
            raise ValueError("deep inside the tracer")
        except ValueError as exc:
            raise DropcheckError("trace", "cannot trace M", "make it a leaf") from exc
    except DropcheckError as error:
        errors.print_tracebacks([Report(target="m.py", status="error", error=error)])
    err = capsys.readouterr().err
    assert err.startswith("traceback for m.py:") and "ValueError: deep inside the tracer" in err


def test_typer_usage_errors_keep_exit_2() -> None:
    assert _dropcheck("audit", "--no-such-flag").returncode == 2


# --- commands that must not import torch -----------------------------------------------------------

def _imported_modules(importtime_stderr: str) -> Iterator[str]:
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            yield line.rsplit("|", 1)[1].strip()


@pytest.mark.parametrize("args", [["--help"], ["rules"], ["explain", "DC001"]])
def test_fast_commands_do_not_import_torch(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "dropcheck", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]
    modules = list(_imported_modules(result.stderr))
    assert "dropcheck.cli" in modules  # the check would be vacuous without importtime lines
    assert not [m for m in modules if m == "torch" or m.startswith("torch.")]


def test_rules_lists_the_catalogue() -> None:
    text = _dropcheck("rules")
    assert text.returncode == 0
    assert text.stdout.splitlines()[0].split() == ["code", "name", "severity", "summary"]
    assert "DC001  dropout-before-batchnorm" in text.stdout
    listed = json.loads(_dropcheck("rules", "--format", "json").stdout)
    assert [r["code"] for r in listed][:2] == ["DC001", "DC002"]
    assert {"code", "name", "severity", "summary"} <= set(listed[0])


def test_explain_accepts_any_case_and_prints_markdown_when_piped() -> None:
    result = _dropcheck("explain", "dc001")
    assert result.returncode == 0
    assert result.stdout.startswith("# DC001 dropout-before-batchnorm")
    assert "## Why it hurts" in result.stdout


def test_explain_unknown_rule_is_one_line() -> None:
    result = _dropcheck("explain", "DC999")
    assert result.returncode == 2 and result.stdout == ""
    (line,) = _lines(result.stderr)
    assert "DC999" in line and "hint: " in line


def test_version() -> None:
    result = _dropcheck("--version")
    assert result.returncode == 0 and "0.1.0" in result.stdout


def test_help_text_keeps_square_brackets_that_rich_would_read_as_markup() -> None:
    from typer.testing import CliRunner

    from dropcheck.cli.program import app

    result = CliRunner().invoke(app, ["audit", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Read [tool.dropcheck] from FILE" in result.output
    assert "Ignore [tool.dropcheck] in pyproject.toml" in result.output
