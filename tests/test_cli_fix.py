"""`dropcheck fix` on the command line, run as a user runs it: a subprocess in the repository root.

Each run that loads a model pays ~3 s of torch imports, so the runs are declared once in `_fix_runs`
and started together, in parallel, the first time a test asks for one.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from rich.console import Console

from dropcheck import __version__
from dropcheck.output.text.fix import render_fix
from dropcheck.records import Check, FixResult

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 180
MISSING = "does/not/exist.py"
P3 = ["examples/preresnet.py", "-a", "position=P3"]
MOVE_LINE = re.compile(r"^\s*move  stages\.(\d)\.0\.drop  P3 -> P6 before stages\.\1\.0\.conv2  \(DC001, p=0\.2\)$")
CHECK_LINE = re.compile(r"^\s*ok  +(eval outputs|state_dict|re-audit|idempotent): \S")
HAS_EXPORT = (ROOT / "dropcheck" / "fixer" / "export.py").is_file()


def _fix_runs(out: Path) -> dict[str, list[str]]:
    """Every subprocess the tests use, by name (argv after `python -m dropcheck`)."""
    runs = {
        "dry-run-diff": ["fix", *P3, "-o", str(out / "dry"), "--dry-run", "--diff"],
        "json": ["fix", *P3, "--dry-run", "--format", "json"],
        "missing": ["fix", MISSING, "--dry-run"],
        "missing-verbose": ["fix", MISSING, "--dry-run", "--verbose"],
    }
    if HAS_EXPORT:  # -o without --dry-run asks export.py to check and write OUT
        runs.update({
            "write": ["fix", *P3, "-o", str(out / "fixed")],
            "exists": ["fix", *P3, "-o", str(out / "existing")],
            "force": ["fix", *P3, "-o", str(out / "replaced"), "--force"],
        })
    return runs


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fix_out")
    for name in ("existing", "replaced"):
        (directory / name).mkdir()
        (directory / name / "keep.txt").write_text("old content\n")
    return directory


@pytest.fixture(scope="module")
def runs(out: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    commands = {name: [sys.executable, "-m", "dropcheck", *args] for name, args in _fix_runs(out).items()}
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {name: pool.submit(_run, command) for name, command in commands.items()}
        return {name: future.result() for name, future in futures.items()}


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _needs_export() -> None:
    pytest.importorskip("dropcheck.fixer.export")


# --- a successful fix ----------------------------------------------------------------------------

def test_fix_writes_the_directory_and_lists_moves_and_checks(runs: dict[str, subprocess.CompletedProcess[str]],
                                                             out: Path) -> None:
    _needs_export()
    result = runs["write"]
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "examples/preresnet.py: PreResNet, input 2x3x32x32"
    assert [int(m[1]) for m in map(MOVE_LINE.match, lines) if m] == [0, 1, 2]
    assert len([line for line in lines if CHECK_LINE.match(line)]) == 4
    folder = out / "fixed"
    assert {"module.py", "state_dict.pt", "changes.json"} <= {p.name for p in folder.iterdir()}
    assert f"wrote {folder / 'module.py'}" in lines
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left behind
    assert "Traceback" not in result.stderr


def test_dry_run_shows_the_fix_and_writes_nothing(runs: dict[str, subprocess.CompletedProcess[str]],
                                                  out: Path) -> None:
    result = runs["dry-run-diff"]
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len([line for line in lines if MOVE_LINE.match(line)]) == 3
    assert len([line for line in lines if CHECK_LINE.match(line)]) == 4
    assert lines[-1] == f"dry run: nothing written (would write {out / 'dry'})"
    assert not (out / "dry").exists()


def test_existing_output_without_force_is_one_line_and_left_untouched(
        runs: dict[str, subprocess.CompletedProcess[str]], out: Path) -> None:
    _needs_export()
    result = runs["exists"]
    assert result.returncode == 2 and result.stdout == ""
    (line,) = _lines(result.stderr)
    assert line.startswith("examples/preresnet.py: error (output): ") and "--force" in line
    assert [p.name for p in (out / "existing").iterdir()] == ["keep.txt"]
    assert (out / "existing" / "keep.txt").read_text() == "old content\n"


def test_force_replaces_an_existing_output(runs: dict[str, subprocess.CompletedProcess[str]], out: Path) -> None:
    _needs_export()
    result = runs["force"]
    assert result.returncode == 0, result.stdout + result.stderr
    names = {p.name for p in (out / "replaced").iterdir()}
    assert "keep.txt" not in names and "module.py" in names


def test_diff_shows_the_moved_dropout_removed_and_added(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    lines = runs["dry-run-diff"].stdout.splitlines()
    drop = re.compile(r"stages[._]0[._]0[._]drop\b|\.drop\(")
    assert any(line.startswith("--- ") for line in lines) and any(line.startswith("+++ ") for line in lines)
    removed = [line for line in lines if line.startswith("-") and not line.startswith("---") and drop.search(line)]
    added = [line for line in lines if line.startswith("+") and not line.startswith("+++") and drop.search(line)]
    assert removed and added


def test_json_is_schema_1_with_the_changes(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = runs["json"]
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["schema"] == 1 and document["dropcheck_version"] == __version__
    assert document["written"] == []
    fixed = document["fix"]
    assert fixed["ok"] is True and fixed["target"] == "examples/preresnet.py"
    assert [(c["action"], c["dropout"], c["rule"], c["from_position"], c["to_position"]) for c in fixed["changes"]] \
        == [("move", f"stages.{i}.0.drop", "DC001", "P3", "P6") for i in range(3)]
    assert [c["name"] for c in fixed["verification"]] == ["eval outputs", "state_dict", "train mode", "re-audit", "idempotent"]
    assert all(c["ok"] for c in fixed["verification"])


# --- errors: one line, exit 2 --------------------------------------------------------------------

def test_missing_model_file_is_one_line(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = runs["missing"]
    assert result.returncode == 2 and result.stdout == ""
    (line,) = _lines(result.stderr)
    assert line.startswith(f"{MISSING}: error (load): ") and "(hint: " in line


def test_verbose_adds_the_traceback_of_the_cause(runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = runs["missing-verbose"]
    assert result.returncode == 2 and result.stdout == ""
    assert "Traceback (most recent call last)" in result.stderr
    assert _lines(result.stderr)[-1].startswith(f"{MISSING}: error (load): ")


def _imported_modules(importtime_stderr: str) -> Iterator[str]:
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            yield line.rsplit("|", 1)[1].strip()


@pytest.mark.parametrize(("args", "text"), [
    (["fix", "timm:resnet18"], "-o OUT"),  # a library target: no -o without --dry-run
    (["fix", "examples/preresnet.py", "-o", "x", "--in-place"], "--in-place"),
    (["fix", "examples/preresnet.py", "-o", "x", "--p", "1.5"], "--p 1.5"),
    (["fix", "examples/preresnet.py", "-o", "x", "--add", "1"], "--add 1"),
    (["fix", "examples/preresnet.py", "examples/resnet_v1.py", "-o", "x"], "one TARGET"),
    (["fix", "-o", "x"], "no target"),
])
def test_usage_errors_are_one_line_and_import_no_torch(args: list[str], text: str) -> None:
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "dropcheck", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2 and result.stdout == ""
    modules = list(_imported_modules(result.stderr))
    assert "dropcheck.cli" in modules  # the check would be vacuous without importtime lines
    assert not [m for m in modules if m == "torch" or m.startswith("torch.")]
    (line,) = [line for line in _lines(result.stderr) if not line.startswith("import time:")]
    assert line.startswith("dropcheck: error: ") and "(hint: " in line and text in line


# --- rendering, in process (no model needed) -----------------------------------------------------

_MODEL = types.SimpleNamespace(fixed_from="Net")  # what output.text.fix reads of a FixedModel


class _Change:
    """The fields of records.Change that FixResult.describe_change reads."""

    def __init__(self, action: str, dropout: str, to: str, p: float, rule: str, module: str,
                 from_position: str | None = None, to_position: str | None = None) -> None:
        self.action, self.dropout, self.to, self.p, self.rule, self.module = action, dropout, to, p, rule, module
        self.from_position, self.to_position = from_position, to_position

    def to_dict(self) -> dict[str, object]:
        return dict(vars(self))


def test_unfixable_sites_and_failed_checks_are_rendered_and_nothing_is_written() -> None:
    result = FixResult(target="m.py", model=_MODEL, changes=[], unfixable=["drop: no place for it (DC001)"],
                       checks=[Check("eval outputs", True, "bit-identical"), Check("re-audit", False, "DC001 on drop")],
                       code_before="", code_after="", input_shape=[1, 3, 8, 8])
    buffer = io.StringIO()
    render_fix(result, Console(file=buffer, force_terminal=False, width=40))
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "m.py: Net, input 1x3x8x8"
    assert "  cannot fix  drop: no place for it (DC001)" in lines
    assert "  FAIL  re-audit: DC001 on drop" in lines and "  ok    eval outputs: bit-identical" in lines
    assert not any("already follows" in line for line in lines)
    assert result.ok is False


def test_every_kind_of_change_is_one_line() -> None:
    changes = [
        _Change("remove", "b.drop2", "", 0.1, "DC004", "b.drop", "P2", "P6"),
        _Change("convert", "/dropout", "in place", 0.3, "DC006", "dropout_1", "H4", "H4"),
        _Change("add", "", "before b.conv2", 0.1, "", "b.drop_guideline", None, "P6"),
    ]
    result = FixResult(target="m.py", model=_MODEL, changes=changes, checks=[], unfixable=[],
                       code_before="", code_after="")
    buffer = io.StringIO()
    render_fix(result, Console(file=buffer, force_terminal=False, width=40))
    lines = buffer.getvalue().splitlines()[1:]
    assert lines == ["  remove  b.drop2  P2, one dropout stays: b.drop at P6  (DC004)",
                     "  convert  /dropout  -> nn.Dropout dropout_1 in place  (DC006, p=0.3)",
                     "  add  b.drop_guideline  P6 before b.conv2  (p=0.1)"]


def test_no_changes_says_the_model_already_follows_the_guidelines() -> None:
    result = FixResult(target="m.py", model=_MODEL, changes=[], checks=[Check("re-audit", True, "clean")],
                       unfixable=[], code_before="a\n", code_after="a\n")
    buffer = io.StringIO()
    render_fix(result, Console(file=buffer, force_terminal=False, width=40), diff=True)
    text = buffer.getvalue()
    assert "no changes: the model already follows Guidelines 1 and 2" in text
    assert "(the forward code is unchanged)" in text


def test_dry_run_says_when_the_real_run_could_not_write() -> None:
    from dropcheck.cli import fix as cli
    from dropcheck.records import DropcheckError

    result = FixResult(target="m.py", model=_MODEL, changes=[], checks=[], unfixable=[], code_before="",
                       code_after="")
    blocked = DropcheckError("output", "fixed exists", "pass --force to replace it")
    assert cli._fix_outcome(result, Path("fixed"), True, [], blocked) == \
        "dry run: nothing written (writing fixed would fail: fixed exists (hint: pass --force to replace it))"
    assert cli._fix_outcome(result, None, True, []) == "dry run: nothing written"
