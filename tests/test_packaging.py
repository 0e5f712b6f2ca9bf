"""The wheel carries the rule catalogue: `pip install .` (not editable), then `dropcheck explain` works."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("hatchling")  # the build backend, installed with the test extra: no download here
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(REPO)], check=True, capture_output=True, text=True)
    (built,) = out.glob("dropcheck-*.whl")
    return built


def test_wheel_contains_every_rule_file_inside_the_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("dropcheck/rules/") and n.endswith(".md"))
    assert shipped == sorted(p.name for p in (REPO / "rules").glob("DC*.md"))
    for stage in ("records", "analysis", "fixer", "measurement", "training", "output", "cli"):
        assert f"dropcheck/{stage}/__init__.py" in names


def test_installed_wheel_explains_a_rule_away_from_the_checkout(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    script = ("import sys, dropcheck.cli as cli; assert dropcheck_path(cli); "
              "sys.argv = ['dropcheck', 'explain', 'DC001']; cli.main()")
    script = script.replace("dropcheck_path(cli)", f"cli.__file__.startswith({str(target)!r})")
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "dropout-before-batchnorm" in run.stdout and "## Why it hurts" in run.stdout
