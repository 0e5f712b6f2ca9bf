"""The architecture of README "Architecture", checked: import-linter's contracts (pyproject.toml
[tool.importlinter]: stages depend one way, output renders records only, only the CLI imports typer,
no import cycles), no module importing another module's private names, and modules small enough to
read in one sitting."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dropcheck"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imported_from(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _lint_imports(repo: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports on the package in `repo` (PYTHONPATH first, so a copy is read, not the installed one)."""
    lint = Path(sys.executable).with_name("lint-imports")
    command = [str(lint)] if lint.is_file() else [sys.executable, "-m", "importlinter.cli"]
    return subprocess.run([*command, "--no-cache"], cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(repo)})


def test_import_contracts_are_kept() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0 and "BROKEN" not in result.stdout, result.stdout[-4000:] + result.stderr[-2000:]
    assert "KEPT" in result.stdout


def test_no_module_imports_another_modules_private_names() -> None:
    found = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = _imported_from(module, path, node)
            if not source.startswith("dropcheck"):
                continue
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private:
                    found.append(f"{module} imports {source}.{alias.name} (line {node.lineno})")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("module", sorted(_modules()))
def test_module_is_readable_in_one_sitting(module: str) -> None:
    lines = len(_modules()[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines: split it by job (style guide §1)"


def test_the_contracts_fail_when_an_arrow_runs_backwards(tmp_path: Path) -> None:
    """The contracts are not vacuous: a copy of the package with one backwards import breaks them."""
    copy = tmp_path / "repo"
    shutil.copytree(PACKAGE, copy / "dropcheck", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    records = copy / "dropcheck" / "records" / "measure.py"
    records.write_text(records.read_text(encoding="utf-8") + "\nfrom ..analysis import graph  # backwards\n")
    result = _lint_imports(copy)
    assert result.returncode != 0
    assert "dropcheck.records is not allowed to import dropcheck.analysis" in result.stdout
