"""The pre-commit hooks in .pre-commit-hooks.yaml, run on a small project with a bad model.

The fast tests run the hook's own `entry` (with `python -m dropcheck` for `dropcheck`) in
a temporary project whose pyproject.toml lists the model in [tool.dropcheck]: it must fail
on the bad model and pass once the bad line is corrected, or once `dropcheck fix` output
replaces the model. The real test runs the `dropcheck-system` hook through pre-commit itself
(`pre-commit try-repo`, offline: a `language: system` hook needs no environment of its own,
and `dropcheck` on PATH is this checkout): it fails the bad commit, is skipped when only
README.md changed, answers a second run from the cache without importing torch, and passes
once the model is corrected. The `language: python` hook's test builds a virtualenv and
pip-installs this repository into it, which needs PyPI for the build backend: it runs only with
DROPCHECK_PRECOMMIT_TEST=1. To keep it from downloading torch, PYTHONPATH shows the hook's
virtualenv the packages of the environment running the tests, so pip finds them installed.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml

from dropcheck.analysis.catalog import get_rule

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ROOT / ".pre-commit-hooks.yaml"
TIMEOUT = 300
CONFIG = '[tool.dropcheck]\ntargets = ["model.py"]\n'


def _hooks() -> dict[str, dict[str, Any]]:
    return {h["id"]: h for h in yaml.safe_load(HOOKS.read_text(encoding="utf-8"))}


def _hook(hook_id: str = "dropcheck") -> dict[str, Any]:
    return _hooks()[hook_id]


def _env() -> dict[str, str]:
    # the checkout first, so the subprocess imports this dropcheck even if another is installed;
    # the cache on, as a user has it (the suite turns it off)
    env = {k: v for k, v in os.environ.items() if k != "DROPCHECK_NO_CACHE"}
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project whose one configured model puts dropout before a BatchNorm (DC001, an error)."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text(CONFIG, encoding="utf-8")
    (root / "model.py").write_text(get_rule("DC001").example_bad, encoding="utf-8")
    return root


def _run_hook(project: Path) -> subprocess.CompletedProcess[str]:
    """The hook as pre-commit runs it: entry + args, no file names (pass_filenames: false)."""
    hook = _hook()
    argv = shlex.split(hook["entry"]) + list(hook.get("args", []))
    assert argv[0] == "dropcheck"
    return subprocess.run([sys.executable, "-m", "dropcheck", *argv[1:]], cwd=project, env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)


def _bad_line(model: Path) -> int:
    lines = model.read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.strip() == "out = self.drop(out)")


def test_hooks_audit_the_configured_targets_when_python_files_or_the_config_change() -> None:
    hooks = _hooks()
    assert {hook_id: hook["language"] for hook_id, hook in hooks.items()} == {
        "dropcheck": "python", "dropcheck-system": "system"}
    for hook in hooks.values():
        assert hook["entry"] == "dropcheck audit" and hook["name"] and hook["description"]
        assert hook["pass_filenames"] is False and hook["require_serial"] is True
        assert not hook.get("always_run", False)
        files = re.compile(hook["files"])  # pre-commit matches it with re.search on the repository path
        for path in ("model.py", "models/resnet.py", "pyproject.toml", "sub/pyproject.toml"):
            assert files.search(path), path
        for path in ("README.md", "setup.cfg", "pyproject.toml.bak", "model.pyc", "my_pyproject.toml", "data.pt"):
            assert not files.search(path), path


def test_hook_fails_on_a_bad_model_and_passes_once_corrected_or_fixed(project: Path) -> None:
    bad = _run_hook(project)
    assert bad.returncode == 1, bad.stderr
    assert f"model.py:{_bad_line(project / 'model.py')}: DC001 [error] block.drop" in bad.stdout
    fixed = project.parent / "fixed"
    done = subprocess.run([sys.executable, "-m", "dropcheck", "fix", "model.py", "-o", str(fixed)], cwd=project,
                          env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr

    (project / "model.py").write_text(get_rule("DC001").example_good, encoding="utf-8")  # the line corrected
    good = _run_hook(project)
    assert good.returncode == 0, good.stdout + good.stderr

    shutil.copy(fixed / "module.py", project / "model.py")  # `dropcheck fix` output replaces the model;
    for weights in fixed.glob("*.pt"):  # it loads its weights from beside itself
        shutil.copy(weights, project / weights.name)
    after = _run_hook(project)
    assert after.returncode == 0, after.stdout + after.stderr
    assert "FixedModel" in after.stdout


# --- the real thing: pre-commit try-repo -----------------------------------------------------------

def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=dropcheck-test", "-c", "user.email=test@example.invalid",
                    "-c", "commit.gpgsign=false", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _snapshot_of_this_repository(dest: Path) -> Path:
    """The working tree (tracked and untracked, not ignored) committed in a new repository.

    try-repo on the checkout itself would see only committed and tracked files."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            check=True, capture_output=True, text=True, timeout=60).stdout.split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    _git("init", "-q", cwd=dest)
    _git("add", "-A", cwd=dest)
    _git("commit", "-q", "-m", "snapshot", cwd=dest)
    return dest


def _try_repo(repo: Path, project: Path, home: Path, hook_id: str, *args: str,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**(env or os.environ), "PRE_COMMIT_HOME": str(home), "PRE_COMMIT_COLOR": "never"}
    environment.pop("DROPCHECK_NO_CACHE", None)
    return subprocess.run([sys.executable, "-m", "pre_commit", "try-repo", str(repo), hook_id, *args],
                          cwd=project, env=environment, capture_output=True, text=True, timeout=TIMEOUT)


def _real_project(project: Path, tmp_path: Path) -> Path:
    import pre_commit  # noqa: F401 - the test extra installs it: missing, this fails instead of skipping

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = _snapshot_of_this_repository(tmp_path / "dropcheck-repo")
    (project / "README.md").write_text("# a project\n", encoding="utf-8")
    _git("init", "-q", cwd=project)
    _git("add", "-A", cwd=project)
    _git("commit", "-q", "-m", "bad model", cwd=project)
    return repo


def _system_dropcheck(bin_dir: Path) -> dict[str, str]:
    """`dropcheck` on PATH as the developer's own: this checkout, with the interpreter running the tests
    (and -X importtime, so the output shows whether torch was imported)."""
    bin_dir.mkdir()
    script = bin_dir / "dropcheck"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -X importtime -m dropcheck "$@"\n', encoding="utf-8")
    script.chmod(0o755)
    return {**_env(), "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])}


def _imports_torch(output: str) -> bool:
    return any(line.startswith("import time:") and line.rsplit("|", 1)[-1].strip() == "torch"
               for line in output.splitlines())


@pytest.mark.skipif(sys.platform == "win32", reason="the PATH shim is a shell script")
def test_pre_commit_runs_the_system_hook_offline_skips_unrelated_commits_and_answers_from_the_cache(
        project: Path, tmp_path: Path) -> None:
    repo = _real_project(project, tmp_path)
    env = _system_dropcheck(tmp_path / "bin")
    home = tmp_path / "pre-commit-home"
    bad = _try_repo(repo, project, home, "dropcheck-system", "--all-files", "--verbose", env=env)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "dropcheck" in bad.stdout and "Failed" in bad.stdout and "DC001 [error]" in bad.stdout
    assert _imports_torch(bad.stdout)

    readme_only = _try_repo(repo, project, home, "dropcheck-system", "--files", "README.md", env=env)
    assert readme_only.returncode == 0 and "Skipped" in readme_only.stdout, readme_only.stdout

    again = _try_repo(repo, project, home, "dropcheck-system", "--all-files", "--verbose", env=env)
    assert again.returncode == 1 and "DC001 [error]" in again.stdout, again.stdout + again.stderr
    assert not _imports_torch(again.stdout)  # nothing changed: answered from .dropcheck_cache

    (project / "model.py").write_text(get_rule("DC001").example_good, encoding="utf-8")
    _git("add", "-A", cwd=project)
    _git("commit", "-q", "-m", "dropout after the last BatchNorm", cwd=project)
    good = _try_repo(repo, project, home, "dropcheck-system", "--all-files", "--verbose", env=env)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "Passed" in good.stdout and _imports_torch(good.stdout)
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=project, check=True,
                            capture_output=True, text=True, timeout=60).stdout
    assert status == ""  # the cache folder keeps itself out of git


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DROPCHECK_PRECOMMIT_TEST") != "1",
                    reason="builds a virtualenv for the hook, which needs PyPI: set DROPCHECK_PRECOMMIT_TEST=1")
def test_pre_commit_try_repo_of_the_python_hook_fails_on_a_bad_model_then_passes(
        project: Path, tmp_path: Path) -> None:
    repo = _real_project(project, tmp_path)
    site = os.pathsep.join(dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
    # pip in the hook's venv sees the test environment's torch, typer and rich on PYTHONPATH as
    # installed, so it installs dropcheck alone and the hook imports the rest from there
    env = {**os.environ, "PYTHONPATH": site}
    bad = _try_repo(repo, project, tmp_path / "pre-commit-home", "dropcheck", "--all-files", env=env)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "dropcheck" in bad.stdout and "Failed" in bad.stdout and "DC001 [error]" in bad.stdout

    (project / "model.py").write_text(get_rule("DC001").example_good, encoding="utf-8")
    _git("add", "-A", cwd=project)
    _git("commit", "-q", "-m", "dropout after the last BatchNorm", cwd=project)
    good = _try_repo(repo, project, tmp_path / "pre-commit-home", "dropcheck", "--all-files", env=env)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "Passed" in good.stdout


# --- the snippets users copy ---------------------------------------------------------------------

def _readme_blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use in CI", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in section.split(f"```{language}\n")[1:]]


def test_readme_config_snippet_is_a_valid_dropcheck_config(tmp_path: Path) -> None:
    from dropcheck import config

    [toml] = _readme_blocks("toml")
    (tmp_path / "pyproject.toml").write_text(toml, encoding="utf-8")
    loaded = config.load_config(tmp_path / "pyproject.toml")
    assert len(loaded.targets) == 3 and loaded.fail_on == "warning"


def test_readme_and_examples_give_the_same_pre_commit_config() -> None:
    example = yaml.safe_load((ROOT / "examples" / "pre-commit-config.yaml").read_text(encoding="utf-8"))
    readme = [yaml.safe_load(block) for block in _readme_blocks("yaml") if "repos:" in block]
    assert readme == [example]
    [repo] = example["repos"]
    assert repo["hooks"] == [{"id": "dropcheck-system"}] and repo["rev"]
    assert {hook["id"] for hook in repo["hooks"]} <= set(_hooks())


def test_example_workflow_uploads_the_sarif_the_audit_writes() -> None:
    workflow = yaml.safe_load((ROOT / "examples" / "github-workflow.yml").read_text(encoding="utf-8"))
    steps = workflow["jobs"]["dropcheck"]["steps"]
    audit = next(s for s in steps if "--format sarif" in s.get("run", ""))
    assert "--output dropcheck.sarif" in audit["run"] and audit["continue-on-error"] is True
    upload = next(s for s in steps if s.get("uses", "").startswith("github/codeql-action/upload-sarif@"))
    assert upload["with"]["sarif_file"] == "dropcheck.sarif"
    assert any("--format markdown" in s.get("run", "") and "GITHUB_STEP_SUMMARY" in s["run"] for s in steps)
    assert workflow["permissions"]["security-events"] == "write"
