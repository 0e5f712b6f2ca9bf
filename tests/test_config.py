"""`[tool.dropcheck]` in pyproject.toml: discovery, checking, and the command line laid over it.

Parsing is tested by direct calls (no torch); the command line as a user runs it, from a
subdirectory of a temporary project whose models are copies of examples/. Every audit
subprocess costs ~3 s of torch imports, so they are declared once in `_runs` and started together.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dropcheck.config import CONFIG_KEYS, Config, TargetConfig, find_pyproject, load_config, plan_targets
from dropcheck.records import DropcheckError

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 180

PROJECT_CONFIG = """
[project]
name = "demo"

[tool.dropcheck]
targets = [
    {target = "models/preresnet.py", model-args = {position = "P7"}, input-shape = [2, 3, 40, 40]},
    "models/functional_bug.py",
]
model-args = {p = 0.25}
ignore = ["DC006", "unused-dropout"]
fail-on = "info"
"""


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """demo/pyproject.toml, demo/models/{preresnet,functional_bug}.py and an empty demo/sub/."""
    root = tmp_path_factory.mktemp("demo")
    _write(root / "pyproject.toml", PROJECT_CONFIG)
    (root / "models").mkdir()
    for name in ("preresnet.py", "functional_bug.py"):
        shutil.copy(ROOT / "examples" / name, root / "models" / name)
    (root / "sub").mkdir()
    return root


@pytest.fixture(scope="module")
def bad_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    _write(root / "pyproject.toml", '[tool.dropcheck]\ntargets = ["m.py"]\nslect = ["DC001"]\n')
    (root / "sub").mkdir()
    return root


# --- discovery and parsing (direct calls) ----------------------------------------------------------

def test_the_nearest_pyproject_is_found_from_a_subdirectory(project: Path) -> None:
    deep = project / "sub" / "deeper"
    deep.mkdir(exist_ok=True)
    assert find_pyproject(deep) == project / "pyproject.toml"
    assert load_config(start=deep).path == project / "pyproject.toml"


def test_the_nearest_pyproject_wins_even_without_the_section(project: Path) -> None:
    inner = project / "sub" / "inner"
    _write(inner / "pyproject.toml", '[project]\nname = "inner"\n')
    try:
        config = load_config(start=inner)
        assert config.path == inner / "pyproject.toml" and config.targets == () and config.fail_on is None
    finally:
        (inner / "pyproject.toml").unlink()


def test_no_pyproject_up_to_the_root_is_no_config(tmp_path: Path) -> None:
    if find_pyproject(tmp_path) is not None:
        pytest.skip("a pyproject.toml above the temporary directory")
    assert load_config(start=tmp_path) == Config()


def test_every_key_is_read_and_relative_targets_are_from_the_file(project: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(project / "sub")
    config = load_config(start=Path.cwd())
    pre, bug = config.targets
    assert Path(pre.spec) == project / "models" / "preresnet.py"  # not sub/models/...
    assert pre.model_args == {"position": "P7"} and pre.input_shape == (2, 3, 40, 40)
    assert Path(bug.spec) == project / "models" / "functional_bug.py" and bug.model_args == {}
    assert config.model_args == {"p": 0.25} and config.ignore == ("DC006", "unused-dropout")
    assert config.select is None and config.fail_on == "info" and config.input_shape is None


def test_targets_inside_the_working_directory_stay_relative(project: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(project)
    assert [t.spec for t in load_config().targets] == ["models/preresnet.py", "models/functional_bug.py"]


def test_zoo_module_and_absolute_targets_are_kept_as_written(tmp_path: Path) -> None:
    path = _write(tmp_path / "pyproject.toml", """
        [tool.dropcheck]
        targets = ["timm:resnet18", "torchvision:resnet18", "pkg.models:Net", "/abs/net.py:Net", "nets/a.py:Net"]
        input-shape = "1,3,64,64"
        select = "DC00"
        """)
    config = load_config(path)
    assert [t.spec for t in config.targets][:4] == ["timm:resnet18", "torchvision:resnet18", "pkg.models:Net",
                                                    "/abs/net.py:Net"]
    path_part, _, name = config.targets[4].spec.rpartition(":")
    assert name == "Net" and Path(path_part).resolve() == (tmp_path / "nets" / "a.py").resolve()
    assert config.input_shape == (1, 3, 64, 64) and config.select == ("DC00",)


@pytest.mark.parametrize(("body", "in_message", "in_hint"), [
    ('slect = ["DC001"]', "[tool.dropcheck] unknown key 'slect'", "did you mean 'select'?"),
    ('targets = "m.py"', "targets must be an array", "targets = ["),
    ("targets = [3]", "targets[0] must be a string or a table", "targets = ["),
    ('targets = [{path = "m.py"}]', "targets[0] has an unknown key 'path'", "target, model-args, input-shape"),
    ('targets = [{model-args = {a = 1}}]', "targets[0] has no 'target' key", "targets = ["),
    ('targets = [{target = "m.py", input-shape = [1, 0]}]', "targets[0].input-shape must be an array of positive",
     "1, 3, 224, 224"),
    ('input-shape = [1, "3"]', "input-shape must be an array of positive integers", "positive sizes"),
    ('input-shape = "1,x"', "input-shape '1,x' is not a shape", "positive sizes"),
    ("model-args = [1]", "model-args must be a table", "drop_rate"),
    ('model-args = {"not an id" = 1}', "model-args key 'not an id' is not a Python keyword name", "drop_rate"),
    ('select = ["DC999"]', "select has an unknown rule or prefix 'DC999'", ""),
    ("ignore = [1]", "ignore must be an array of strings", "ignore = "),
    ('fail-on = "sometimes"', "fail-on has an unknown level 'sometimes'", "error, warning, info, never"),
    ("fail-on = 1", "fail-on has an unknown level an integer", "error, warning, info, never"),
    ("targets = [", "invalid TOML", "TOML syntax"),
])
def test_a_config_mistake_names_the_file_and_the_key(tmp_path: Path, body: str, in_message: str,
                                                     in_hint: str) -> None:
    path = _write(tmp_path / "pyproject.toml", "[tool.dropcheck]\n" + body + "\n")
    with pytest.raises(DropcheckError) as caught:
        load_config(path)
    error = caught.value
    assert error.kind == "config"
    assert error.message.startswith(f"{path}: ") and in_message in error.message, error.message
    assert in_hint in error.hint and "\n" not in error.one_line()


def test_the_unknown_key_hint_lists_the_valid_keys(tmp_path: Path) -> None:
    path = _write(tmp_path / "pyproject.toml", "[tool.dropcheck]\nwhatever = 1\n")
    with pytest.raises(DropcheckError) as caught:
        load_config(path)
    assert caught.value.hint == "valid keys: " + ", ".join(CONFIG_KEYS)


def test_an_explicit_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(DropcheckError, match="no such file"):
        load_config(tmp_path / "nope.toml")


def test_flags_override_the_file() -> None:
    config = Config(targets=(TargetConfig("a.py", {"position": "P7", "p": 0.1}, (2, 3, 40, 40)), TargetConfig("b.py")),
                    model_args={"p": 0.25, "num_classes": 5}, input_shape=(1, 3, 8, 8))
    # no flags: per-target over global
    a, b = plan_targets(config, None, {}, None)
    assert a == TargetConfig("a.py", {"p": 0.1, "num_classes": 5, "position": "P7"}, (2, 3, 40, 40))
    assert b == TargetConfig("b.py", {"p": 0.25, "num_classes": 5}, (1, 3, 8, 8))
    # -a merges over both; --input-shape replaces
    a, b = plan_targets(config, [], {"p": 0.3}, (4, 3, 16, 16))
    assert a.model_args == {"p": 0.3, "num_classes": 5, "position": "P7"} and a.input_shape == (4, 3, 16, 16)
    assert b.model_args == {"p": 0.3, "num_classes": 5} and b.input_shape == (4, 3, 16, 16)
    # targets on the command line replace the configured ones; the global settings still apply
    (c,) = plan_targets(config, ["c.py"], {}, None)
    assert c == TargetConfig("c.py", {"p": 0.25, "num_classes": 5}, (1, 3, 8, 8))
    assert plan_targets(Config(), None, {}, None) == []


def test_config_handling_never_imports_torch(project: Path) -> None:
    script = ("import sys; from pathlib import Path; from dropcheck import config; "
              f"c = config.load_config(start=Path({str(project / 'sub')!r})); "
              "config.plan_targets(c, None, {}, None); assert len(c.targets) == 2; "
              "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr


# --- the command line -----------------------------------------------------------------------------
# As a user runs it (a subprocess) where the run is cheap or shows the whole path once; in-process
# through typer's runner for the rest, so the matrix of flags costs one torch import, not ten.

def _subprocess_runs(project: Path, bad_project: Path) -> dict[str, tuple[Path, list[str]]]:
    """name -> (working directory, argv after `dropcheck`)."""
    sub = project / "sub"
    return {
        "plain": (sub, ["audit"]),
        # config errors and usage errors: no torch, under a second each
        "no-config": (sub, ["audit", "--no-config"]),
        "bad-key": (bad_project / "sub", ["audit"]),
        "bad-key-flag": (sub, ["audit", "--config", str(bad_project / "pyproject.toml")]),
        "bad-key-no-config": (bad_project / "sub", ["audit", "m.py", "--no-config", "--format", "yaml"]),
    }


def _in_process_runs() -> dict[str, list[str]]:
    """name -> argv after `dropcheck`, all run in demo/sub."""
    return {
        "json": ["audit", "--format", "json"],
        **{f"fail-{level}": ["audit", "--fail-on", level, "--format", "json"]
           for level in ("error", "warning", "info", "never")},
        "ignore-flag": ["audit", "--ignore", "DC005,DC006", "--fail-on", "warning", "--format", "json"],
        "merge": ["audit", "-a", "p=0.3", "--input-shape", "2,3,24,24", "--format", "json"],
        "cli-target": ["audit", "../models/preresnet.py", "-a", "position=P3", "--format", "json"],
        "cli-target-never": ["audit", "../models/preresnet.py", "-a", "position=P3", "--fail-on", "never"],
    }


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def _subprocess(cwd: Path, args: list[str]) -> Run:
    done = subprocess.run([sys.executable, "-m", "dropcheck", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT)
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def runs(project: Path, bad_project: Path) -> dict[str, Run]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_subprocess, cwd, args)
                   for name, (cwd, args) in _subprocess_runs(project, bad_project).items()}
        done = {name: _in_process(project / "sub", args) for name, args in _in_process_runs().items()}
        return {**done, **{name: future.result() for name, future in futures.items()}}


def _in_process(cwd: Path, args: list[str]) -> Run:
    from typer.testing import CliRunner

    from dropcheck import cli

    here = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli.app, args)
    finally:
        os.chdir(here)
    return Run(result.exit_code, result.stdout, result.stderr)


def _results(run: Run) -> dict[str, dict[str, Any]]:
    """The JSON results by model file name."""
    return {Path(r["target"]).name: r for r in json.loads(run.stdout)["results"]}


def _rules(result: dict[str, Any]) -> set[str]:
    return {f["rule"] for f in result["findings"]}


@pytest.mark.parametrize(("run", "expected"), [
    ("plain", 1),  # fail-on = "info" in the file; DC005 is info
    ("json", 1),
    ("fail-error", 0),
    ("fail-warning", 0),
    ("fail-info", 1),
    ("fail-never", 0),
    ("ignore-flag", 1),  # DC007 (warning) at --fail-on warning
    ("merge", 1),
    ("cli-target", 1),  # DC001 (error) at the file's fail-on info
    ("cli-target-never", 0),
    ("no-config", 2),
    ("bad-key", 2),
    ("bad-key-flag", 2),
    ("bad-key-no-config", 2),
])
def test_exit_codes(runs: dict[str, Run], run: str, expected: int) -> None:
    result = runs[run]
    assert result.returncode == expected, result.stdout + result.stderr


def test_plain_audit_in_a_subdirectory_audits_the_configured_targets(
        runs: dict[str, Run]) -> None:
    result = runs["plain"]
    assert "DC005 [info]" in result.stdout and "DC006" not in result.stdout and "DC007" not in result.stdout
    assert result.stdout.rstrip().endswith("2 targets audited: 0 errors, 0 warnings, 3 info")  # a DC005 per block


def test_per_target_and_global_settings_reach_each_model(runs: dict[str, Run],
                                                         project: Path) -> None:
    results = _results(runs["json"])
    pre, bug = results["preresnet.py"], results["functional_bug.py"]
    assert Path(pre["target"]) == project / "models" / "preresnet.py"
    assert pre["input_shape"] == [2, 3, 40, 40] and bug["input_shape"] == [2, 3, 32, 32]  # its own
    assert {d["p"] for d in pre["dropouts"]} == {0.25}
    assert {d["id"]: d["p"] for d in bug["dropouts"]} == {"/dropout": 0.25, "dropout": 0.5}
    assert _rules(pre) == {"DC005"} and _rules(bug) == set()  # the file's ignore


def test_ignore_on_the_command_line_replaces_the_files(runs: dict[str, Run]) -> None:
    results = _results(runs["ignore-flag"])
    assert _rules(results["preresnet.py"]) == set() and _rules(results["functional_bug.py"]) == {"DC007"}


def test_model_arg_merges_and_input_shape_replaces(runs: dict[str, Run]) -> None:
    results = _results(runs["merge"])
    pre, bug = results["preresnet.py"], results["functional_bug.py"]
    assert pre["input_shape"] == bug["input_shape"] == [2, 3, 24, 24]
    assert {d["p"] for d in pre["dropouts"]} == {0.3} and _rules(pre) == {"DC005"}  # position=P7 kept
    assert {d["id"]: d["p"] for d in bug["dropouts"]}["/dropout"] == 0.3


def test_targets_on_the_command_line_replace_the_configured_ones(
        runs: dict[str, Run]) -> None:
    (result,) = json.loads(runs["cli-target"].stdout)["results"]
    assert result["target"] == "../models/preresnet.py"
    assert result["input_shape"] == [2, 3, 32, 32]  # the configured target's input-shape is not used
    assert {d["p"] for d in result["dropouts"]} == {0.25}  # the global model-args are
    assert _rules(result) == {"DC001"}


def _one_error_line(result: Run) -> str:
    assert result.stdout == ""
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("dropcheck: error: ") and "(hint: " in line
    return line


def test_no_config_ignores_the_file(runs: dict[str, Run]) -> None:
    assert "no targets given" in _one_error_line(runs["no-config"])


def test_an_unknown_key_is_one_line_naming_the_key_and_the_file(runs: dict[str, Run],
                                                                bad_project: Path) -> None:
    for run in ("bad-key", "bad-key-flag"):
        line = _one_error_line(runs[run])
        assert f"{bad_project / 'pyproject.toml'}: [tool.dropcheck] unknown key 'slect'" in line
        assert "did you mean 'select'?" in line and "valid keys: targets, input-shape" in line


def test_no_config_skips_a_broken_file(runs: dict[str, Run]) -> None:
    assert "unknown --format 'yaml'" in _one_error_line(runs["bad-key-no-config"])
