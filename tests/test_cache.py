"""The incremental audit cache (.dropcheck_cache/): a run where nothing changed answers without
importing torch and prints what a fresh audit prints; any change a target depends on re-audits.

The CLI tests run `python -X importtime -m dropcheck audit` in a fresh process on a small project
whose model imports a block factory from a sibling module and its dropout rate, a bare constant,
from a third one; torch counts as imported when importtime lists it.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dropcheck.cache import CACHE_DIR_NAME, DISABLE_ENV, AuditCache
from dropcheck.cache.reports import report_from_dict
from dropcheck.records import CaptureInfo, Finding, Report, Severity, Site, SiteKind, SourceLocation

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300

SETTINGS = "DROP_P = 0.2  # the rate every block uses\n"
BLOCKS = '''import torch.nn as nn


def conv_block(c_in, c_out, p):
    """Conv, then dropout, then BatchNorm: the dropout shifts the BatchNorm's variance."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.Dropout(p),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )
'''
MODEL = '''import torch
import torch.nn as nn

from blocks import conv_block
from settings import DROP_P


class Net(nn.Module):
    input_shape = (2, 3, 16, 16)

    def __init__(self, width=8, p=DROP_P):
        super().__init__()
        self.body = conv_block(3, width, p)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.body(x)), 1))
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text('[tool.dropcheck]\ntargets = ["model.py"]\n', encoding="utf-8")
    (root / "settings.py").write_text(SETTINGS, encoding="utf-8")
    (root / "blocks.py").write_text(BLOCKS, encoding="utf-8")
    (root / "model.py").write_text(MODEL, encoding="utf-8")
    return root


class Run:
    def __init__(self, result: subprocess.CompletedProcess[str]) -> None:
        self.code = result.returncode
        self.stdout = result.stdout
        imports = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
        self.imported = {line.rsplit("|", 1)[-1].strip() for line in imports}
        self.stderr = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("import time:"))

    @property
    def torch(self) -> bool:
        return "torch" in self.imported


def _run(project: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    environment = {k: v for k, v in os.environ.items() if k != DISABLE_ENV}  # the suite turns the cache off
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "dropcheck", *args], cwd=project,
                            env={**environment, **(env or {})}, capture_output=True, text=True, timeout=TIMEOUT)
    return Run(result)


def _entries(project: Path) -> list[Path]:
    return sorted((project / CACHE_DIR_NAME / "audit").glob("*.json"))


def _untimed(document: str) -> dict[str, Any]:
    data = json.loads(document)
    for result in data["results"]:
        result.pop("seconds")
    return data


def _untimed_text(text: str) -> str:
    return re.sub(r", \d+\.\d\d s\n", ", (time) s\n", text)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


# --- the CLI, in fresh processes -----------------------------------------------------------------

def test_unchanged_project_answers_from_the_cache_without_torch_and_prints_what_a_fresh_audit_prints(
        project: Path) -> None:
    cold = _run(project, "audit")
    assert cold.code == 1 and cold.torch, cold.stderr
    assert "DC001 [error] body.1: Dropout(p=0.2)" in cold.stdout and "blocks.py:" in cold.stdout
    [entry] = _entries(project)
    assert (project / CACHE_DIR_NAME / ".gitignore").read_text(encoding="utf-8").splitlines()[-1] == "*"
    deps = json.loads(entry.read_text(encoding="utf-8"))["deps"]
    assert sorted(Path(f).name for f in deps) == ["blocks.py", "model.py", "settings.py"]

    warm = _run(project, "audit")
    assert not warm.torch and "dropcheck.cli" in warm.imported
    assert (warm.code, warm.stdout) == (cold.code, cold.stdout)

    # one entry answers every format, as a fresh audit (--no-cache) answers it but for the time taken
    warm_json = _run(project, "audit", "--format", "json")
    fresh_json = _run(project, "audit", "--format", "json", "--no-cache")
    assert not warm_json.torch and fresh_json.torch and warm_json.code == fresh_json.code == 1
    assert _untimed(warm_json.stdout) == _untimed(fresh_json.stdout)
    assert json.loads(warm_json.stdout)["results"][0]["findings"][0]["rule"] == "DC001"
    assert f'{json.loads(warm_json.stdout)["results"][0]["seconds"]:.2f} s\n' in cold.stdout  # the cold audit's
    assert _entries(project) == [entry]


def test_an_edit_to_the_model_or_any_module_it_imports_audits_afresh(project: Path) -> None:
    assert _run(project, "audit").code == 1

    _edit(project / "settings.py", "0.2", "0.3")  # imported as a bare constant: `from settings import DROP_P`
    edited = _run(project, "audit")
    assert edited.torch and edited.code == 1 and "Dropout(p=0.3)" in edited.stdout

    _edit(project / "blocks.py", "        nn.Dropout(p),\n        nn.BatchNorm2d(c_out),\n",
          "        nn.BatchNorm2d(c_out),\n        nn.Dropout(p),\n")  # the sibling module corrected
    corrected = _run(project, "audit")
    assert corrected.torch and corrected.code == 0 and "DC001 [error]" not in corrected.stdout

    _edit(project / "model.py", "self.body = conv_block(3, width, p)",
          "self.body = conv_block(3, width, p)\n        self.head_drop = nn.Dropout(0.5)")  # declared, never called
    redeclared = _run(project, "audit")
    assert redeclared.torch and "head_drop" in redeclared.stdout
    again = _run(project, "audit")
    assert not again.torch and (again.code, again.stdout) == (redeclared.code, redeclared.stdout)


def test_other_arguments_or_input_shape_or_config_audit_afresh(project: Path) -> None:
    assert _run(project, "audit").code == 1
    args = _run(project, "audit", "-a", "p=0.4")
    assert args.torch and "Dropout(p=0.4)" in args.stdout
    shape = _run(project, "audit", "--input-shape", "1,3,8,8")
    assert shape.torch and "input 1x3x8x8" in shape.stdout
    again = _run(project, "audit", "-a", "p=0.4")  # each set of arguments keeps its own entry
    assert not again.torch and again.stdout == args.stdout
    _edit(project / "pyproject.toml", 'targets = ["model.py"]', 'targets = ["model.py"]\nignore = ["DC001"]')
    config = _run(project, "audit")
    assert config.torch and config.code == 0 and "DC001 [error]" not in config.stdout
    again = _run(project, "audit")
    assert not again.torch and again.stdout == config.stdout


def test_a_truncated_or_foreign_entry_is_ignored_and_rewritten(project: Path) -> None:
    cold = _run(project, "audit")
    [entry] = _entries(project)
    good = json.loads(entry.read_text(encoding="utf-8"))
    foreign = {**good, "key": {**good["key"], "spec": "other.py"}}  # what a hash collision would look like
    for damage in (entry.read_text(encoding="utf-8")[:200], json.dumps(foreign)):
        entry.write_text(damage, encoding="utf-8")
        again = _run(project, "audit")
        assert again.torch and again.code == cold.code and _untimed_text(again.stdout) == _untimed_text(cold.stdout)
        assert json.loads(entry.read_text(encoding="utf-8"))["key"] == good["key"]  # rewritten whole
    assert not _run(project, "audit").torch


def test_no_cache_neither_reads_nor_writes_and_cache_clear_empties_it(project: Path) -> None:
    assert _run(project, "audit", "--no-cache").torch
    assert not (project / CACHE_DIR_NAME).exists()
    assert _run(project, "audit").torch and len(_entries(project)) == 1

    cleared = _run(project, "cache", "clear")
    assert cleared.code == 0 and not cleared.torch and "(1 entry)" in cleared.stderr
    assert not (project / CACHE_DIR_NAME).exists()
    assert "no cache at" in _run(project, "cache", "clear").stderr


def test_the_cache_folder_keeps_itself_out_of_git(project: Path) -> None:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True, timeout=60)
    cache = AuditCache(project)
    cache.store(cache.key("model.py", {}, None, frozenset()), {}, _report())
    assert _entries(project)
    status = subprocess.run([*git, "status", "--porcelain", "--untracked-files=all"], cwd=project, check=True,
                            capture_output=True, text=True, timeout=60).stdout
    assert "model.py" in status and CACHE_DIR_NAME not in status


# --- the store, in this process -------------------------------------------------------------------

def _report(target: str = "net.py") -> Report:
    source = SourceLocation("net.py", 7)
    site = Site(id="drop", module="drop", op="Dropout", p=0.25, site=SiteKind.BRANCH_PRE_BN, reaches=("bn",),
                source=source, declared=SourceLocation("net.py", 3), why="feeds bn")
    finding = Finding(rule="DC001", name="dropout-before-batchnorm", severity=Severity.ERROR, dropout="drop",
                      message="m", fix="f", reaches=("bn",), source=source)
    return Report(target=target, model="Net", input_shape=[1, 3, 8, 8],
                  capture=CaptureInfo(method="symbolic_trace", nodes=5, device="meta", has_batchnorm=True),
                  dropouts=[site], findings=[finding], notes=["a note"], seconds=0.125)


def test_a_report_comes_back_from_its_json_unchanged() -> None:
    report = _report()
    assert report_from_dict(report.to_dict()) == report
    for bad in ({**report.to_dict(), "status": "error"}, {**report.to_dict(), "added": 1},
                {k: v for k, v in report.to_dict().items() if k != "notes"}):
        with pytest.raises((KeyError, TypeError, ValueError)):
            report_from_dict(bad)


def test_lookup_misses_when_a_dependency_changes_or_goes(tmp_path: Path) -> None:
    cache = AuditCache(tmp_path)
    dep = tmp_path / "net.py"
    dep.write_text("x = 1\n", encoding="utf-8")
    key = cache.key("net.py", {"p": (1, 2)}, (1, 3, 8, 8), frozenset({"DC001"}))
    from dropcheck.cache.store import file_digest

    cache.store(key, {str(dep): file_digest(str(dep))}, _report())
    assert cache.lookup(key) == _report()
    assert cache.lookup(cache.key("net.py", {"p": [1, 2]}, (1, 3, 8, 8), frozenset({"DC001"}))) is None
    assert cache.lookup(cache.key("net.py", {"p": (1, 2)}, (1, 3, 8, 8), frozenset({"DC001", "DC002"}))) is None
    dep.write_text("x = 2\n", encoding="utf-8")
    assert cache.lookup(key) is None
    dep.unlink()
    assert cache.lookup(key) is None


@pytest.mark.parametrize("damage", ["", "{", "[1, 2, 3]", "null", '{"format": "dropcheck-audit-cache/1"}',
                                    "\x00\xff binary", "KEY_BUT_NO_REPORT", "KEY_BAD_DEPS", "KEY_BAD_REPORT"])
def test_lookup_of_a_damaged_entry_is_a_miss_and_store_rewrites_it(tmp_path: Path, damage: str) -> None:
    from dropcheck.cache.store import ENTRY_FORMAT

    cache = AuditCache(tmp_path)
    key = cache.key("net.py", {}, None, frozenset())
    cache.store(key, {}, _report())
    [entry] = (tmp_path / CACHE_DIR_NAME / "audit").glob("*.json")
    whole = {"format": ENTRY_FORMAT, "key": key}
    damaged = {"KEY_BUT_NO_REPORT": json.dumps({**whole, "deps": {}}),
               "KEY_BAD_DEPS": json.dumps({**whole, "deps": [1], "report": _report().to_dict()}),
               "KEY_BAD_REPORT": json.dumps({**whole, "deps": {}, "report": {**_report().to_dict(), "dropouts": 3}}),
               }.get(damage, damage)
    entry.write_bytes(damaged.encode("utf-8", "surrogateescape"))
    assert cache.lookup(key) is None
    cache.store(key, {}, _report())
    assert cache.lookup(key) == _report()


def _write_many(root: str, key: dict[str, Any], dep: str, digest: str, rounds: int) -> None:
    cache = AuditCache(Path(root))
    for index in range(rounds):
        cache.store(key, {dep: digest}, _report(f"net{index % 3}.py"))


def test_concurrent_writers_leave_whole_entries_only(tmp_path: Path) -> None:
    dep = tmp_path / "net.py"
    dep.write_text("x = 1\n", encoding="utf-8")
    from dropcheck.cache.store import file_digest

    digest = file_digest(str(dep))
    assert digest is not None
    cache = AuditCache(tmp_path)
    key = cache.key("net.py", {}, None, frozenset())
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(str(tmp_path), key, str(dep), digest, 60))
               for _ in range(3)]
    for writer in writers:
        writer.start()
    seen: set[Any] = set()
    while any(w.is_alive() for w in writers):
        found = cache.lookup(key)
        if found is not None:
            seen.add(found.target)
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    assert cache.lookup(key) is not None and seen <= {"net0.py", "net1.py", "net2.py"}
    assert not [p for p in (tmp_path / CACHE_DIR_NAME / "audit").iterdir() if p.suffix != ".json"]


@pytest.mark.parametrize("spec, args", [("examples/preresnet.py", {"position": "P3", "head_position": "H5"}),
                                        ("examples/functional_bug.py", {}), ("examples/transformer.py", {}),
                                        ("examples/mobilenet_head.py", {})])
def test_a_cached_report_renders_as_the_fresh_one_in_every_format(spec: str, args: dict[str, Any]) -> None:
    import io

    from rich.console import Console

    from dropcheck.analysis.catalog import load_rules
    from dropcheck.analysis.pipeline import audit_target
    from dropcheck.output.formats import FORMATS, render_audit

    fresh = audit_target(str(ROOT / spec), args)
    assert fresh.status == "ok" and fresh.dropouts
    fresh.seconds = round(fresh.seconds, 3)  # as the CLI keeps it
    cached = report_from_dict(json.loads(json.dumps(fresh.to_dict())))
    for fmt in FORMATS:
        out = []
        for report in (fresh, cached):
            buffer = io.StringIO()
            render_audit([report], fmt, Console(file=buffer, width=100, no_color=True), load_rules())
            out.append(buffer.getvalue())
        assert out[0] == out[1], fmt


def test_a_data_file_the_model_reads_is_a_dependency(project: Path) -> None:
    (project / "arch.json").write_text('{"p": 0.25}\n', encoding="utf-8")
    _edit(project / "model.py", "    def __init__(self, width=8, p=DROP_P):\n        super().__init__()\n",
          "    def __init__(self, width=8, p=None):\n        super().__init__()\n"
          "        with open(Path(__file__).with_name('arch.json')) as handle:\n"
          "            p = p or json.load(handle)['p']\n")
    _edit(project / "model.py", "import torch\n", "import json\nfrom pathlib import Path\n\nimport torch\n")
    cold = _run(project, "audit")
    assert cold.code == 1 and "Dropout(p=0.25)" in cold.stdout, cold.stderr
    deps = json.loads(_entries(project)[0].read_text(encoding="utf-8"))["deps"]
    assert sorted(Path(f).name for f in deps) == ["arch.json", "blocks.py", "model.py", "settings.py"]
    assert not _run(project, "audit").torch
    (project / "arch.json").write_text('{"p": 0.35}\n', encoding="utf-8")
    edited = _run(project, "audit")
    assert edited.torch and "Dropout(p=0.35)" in edited.stdout


def test_a_file_changed_while_its_target_was_audited_is_not_cached(tmp_path: Path) -> None:
    from dropcheck.cache.sources import target_dependencies

    data = tmp_path / "arch.json"
    data.write_text("{}\n", encoding="utf-8")
    os.utime(data, ns=(time.time_ns() - 10**9, time.time_ns() - 10**9))
    started = time.time_ns()
    assert target_dependencies("timm:resnet18", set(), [str(data)], started) is not None
    data.write_text('{"p": 0.3}\n', encoding="utf-8")  # edited during the audit: its digest is not what was audited
    assert target_dependencies("timm:resnet18", set(), [str(data)], started) is None


def test_a_package_module_target_depends_on_the_package_modules_it_imports(tmp_path: Path) -> None:
    root = tmp_path / "project"
    (root / "nets").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[tool.dropcheck]\ntargets = ["nets.model:Net"]\n', encoding="utf-8")
    (root / "nets" / "__init__.py").write_text("", encoding="utf-8")
    (root / "nets" / "blocks.py").write_text(BLOCKS, encoding="utf-8")
    (root / "nets" / "model.py").write_text(
        MODEL.replace("from blocks import conv_block\nfrom settings import DROP_P\n",
                      "from .blocks import conv_block\n\nDROP_P = 0.2\n"), encoding="utf-8")
    cold = _run(root, "audit")
    assert cold.code == 1 and "Dropout(p=0.2)" in cold.stdout, cold.stderr
    deps = json.loads(_entries(root)[0].read_text(encoding="utf-8"))["deps"]
    assert sorted(Path(f).relative_to(root.resolve()).as_posix() for f in deps) == [
        "nets/__init__.py", "nets/blocks.py", "nets/model.py"]
    assert not _run(root, "audit").torch
    _edit(root / "nets" / "blocks.py", "nn.Dropout(p)", "nn.Dropout(p / 2)")
    edited = _run(root, "audit")
    assert edited.torch and "Dropout(p=0.1)" in edited.stdout


def test_the_same_file_configured_twice_records_its_imports_for_both_entries(project: Path) -> None:
    (project / "pyproject.toml").write_text(
        '[tool.dropcheck]\ntargets = ["model.py", {target = "model.py", model-args = {p = 0.3}}]\n', encoding="utf-8")
    cold = _run(project, "audit")
    assert cold.code == 1 and "Dropout(p=0.3)" in cold.stdout, cold.stderr
    entries = _entries(project)
    assert len(entries) == 2
    for entry in entries:  # the second audit imports nothing new: its module came from the first
        deps = json.loads(entry.read_text(encoding="utf-8"))["deps"]
        assert sorted(Path(f).name for f in deps) == ["blocks.py", "model.py", "settings.py"]
