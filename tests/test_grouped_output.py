"""Identical findings print once: a CIFAR ResNet-18 with dropout in every BasicBlock has eight DC001s on
one source line; text, GitHub annotations and Markdown say it once with `x8` and the ids, while JSON,
SARIF and `--verbose` keep every one.

The model is written as users write it (one BasicBlock class, `self.dropout = nn.Dropout(0.2)` called
between the convs, so before bn2: DC001 on each of the eight blocks, all on line 21).
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from dropcheck.output.formats import render_audit
from dropcheck.output.grouping import group_findings
from dropcheck.records import Finding, Report, Severity, Site, SiteKind, SourceLocation

ROOT = Path(__file__).resolve().parents[1]
BLOCK_IDS = [f"layers.{i}.dropout" for i in range(8)]

RESNET18 = '''
import torch.nn as nn
import torch.nn.functional as F

INPUT_SHAPE = (2, 3, 32, 32)


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(0.2)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(self.dropout(out)))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes, blocks = 16, []
        for stage, width in enumerate((16, 32, 64, 128)):
            for i in range(2):
                blocks.append(BasicBlock(planes, width, 2 if stage and not i else 1))
                planes = width
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)
'''.lstrip("\n")
DROPOUT_LINE = 21  # `out = self.bn2(self.conv2(self.dropout(out)))`


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("grouped") / "resnet18.py"
    path.write_text(RESNET18)
    assert "self.dropout(out)" in RESNET18.splitlines()[DROPOUT_LINE - 1]
    return path


@pytest.fixture(scope="module")
def outputs(model_file: Path) -> dict[str, str]:
    """stdout of `dropcheck audit` in each way the test reads it."""
    runs = {"text": [], "verbose": ["--verbose"], "json": ["--format", "json"], "sarif": ["--format", "sarif"],
            "github": ["--format", "github"], "markdown": ["--format", "markdown"]}
    out = {}
    for name, extra in runs.items():
        done = subprocess.run([sys.executable, "-m", "dropcheck", "audit", str(model_file), *extra], cwd=ROOT,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 1, done.stderr
        out[name] = done.stdout
    return out


def test_text_prints_the_eight_block_findings_once_with_count_and_ids(outputs: dict[str, str],
                                                                      model_file: Path) -> None:
    lines = outputs["text"].splitlines()
    heads = [line for line in lines if ": DC001 [error]" in line]
    assert len(heads) == 1
    assert heads[0].startswith(f"{model_file}:{DROPOUT_LINE}: DC001 [error] x8 layers.0.dropout ... layers.7.dropout: ")
    # the site table folds the eight alike rows too: one row, the count in its id cell
    rows = [line for line in lines if line.startswith("  layers.")]
    assert rows == [next(line for line in lines if "layers.0.dropout ... layers.7.dropout (x8)" in line)]
    assert len(lines) <= 8, outputs["text"]
    assert lines[-1] == "1 target audited: 8 errors, 0 warnings, 0 info"


def test_verbose_lists_every_finding_and_every_site(outputs: dict[str, str], model_file: Path) -> None:
    lines = outputs["verbose"].splitlines()
    heads = [line for line in lines if ": DC001 [error]" in line]
    prefix = f"{model_file}:{DROPOUT_LINE}: DC001 [error] "
    assert all(line.startswith(prefix) for line in heads)
    assert [line[len(prefix):].split(": ")[0] for line in heads] == BLOCK_IDS
    assert [line.split()[0] for line in lines if line.startswith("  layers.")] == BLOCK_IDS
    assert "x8" not in outputs["verbose"]


def test_json_and_sarif_keep_one_entry_per_finding(outputs: dict[str, str]) -> None:
    result = json.loads(outputs["json"])["results"][0]
    assert [f["dropout"] for f in result["findings"] if f["rule"] == "DC001"] == BLOCK_IDS
    assert all(f["source"]["line"] == DROPOUT_LINE for f in result["findings"])
    sarif = json.loads(outputs["sarif"])["runs"][0]["results"]
    assert len([r for r in sarif if r["ruleId"] == "DC001"]) == 8


def test_github_writes_one_annotation_for_the_line_with_every_id(outputs: dict[str, str]) -> None:
    annotations = outputs["github"].splitlines()
    assert len(annotations) == 1
    assert annotations[0].startswith("::error ") and f"line={DROPOUT_LINE}," in annotations[0]
    assert "title=DC001 dropout-before-batchnorm (x8)::" in annotations[0]
    assert "8 dropouts on this line: " + ", ".join(BLOCK_IDS) in annotations[0]


def test_markdown_has_one_row_listing_every_id(outputs: dict[str, str]) -> None:
    rows = [line for line in outputs["markdown"].splitlines() if line.startswith("| DC001")]
    assert len(rows) == 1
    assert rows[0].startswith("| DC001 dropout-before-batchnorm (x8) | error | ")
    assert "<br>".join(f"`{i}`" for i in BLOCK_IDS) in rows[0]


# --- what folds and what does not (hand-built records, no torch) -------------------------------------

def _finding(site: str, rule: str = "DC001", line: int | None = 10) -> Finding:
    source = SourceLocation("model.py", line) if line is not None else None
    return Finding(rule=rule, name="n", severity=Severity.ERROR if rule == "DC001" else Severity.WARNING,
                   dropout=site, message=f"{site} message", fix="fix it", source=source)


def test_only_one_rule_on_one_known_line_folds() -> None:
    findings = [_finding("a"), _finding("b", "DC004"), _finding("c"), _finding("d", line=11),
                _finding("e", line=None), _finding("f", line=None)]
    groups = group_findings(findings)
    assert [g.ids for g in groups] == [["a", "c"], ["b"], ["d"], ["e"], ["f"]]


def _site(id_: str, p: float, line: int) -> Site:
    return Site(id=id_, module=id_, op="Dropout", p=p, site=SiteKind.BRANCH_PRE_BN, reaches=(f"{id_}.bn",),
                why=f"reaches {id_}.bn", source=SourceLocation("model.py", line))


def _text(report: Report, verbose: bool = False) -> list[str]:
    buffer = io.StringIO()
    render_audit([report], "text", Console(file=buffer, force_terminal=False, width=200), verbose=verbose)
    return buffer.getvalue().splitlines()


def test_sites_that_differ_in_p_or_line_keep_their_rows() -> None:
    sites = [_site(f"b{i}", 0.1, 10) for i in range(4)] + [_site("b4", 0.3, 10), _site("c0", 0.1, 12)]
    report = Report(target="model.py", model="Net", dropouts=sites,
                    findings=[_finding(s.id, line=s.source.line) for s in sites])
    lines = _text(report)
    rows = [line.split()[0] for line in lines if line.startswith("  b") or line.startswith("  c")]
    assert rows == ["b0", "b4", "c0"]
    assert "  b0 ... b3 (x4)  Dropout  0.1" in "\n".join(lines)
    # b4 differs only in p: its finding is still the same rule on the same line, so it joins the group
    assert [line for line in lines if ": DC001 [error]" in line] == [
        "model.py:10: DC001 [error] x5 b0 ... b4: e.g. b0: b0 message",
        "model.py:12: DC001 [error] c0: c0 message"]
    assert len([line for line in _text(report, verbose=True) if ": DC001 [error]" in line]) == 6


def test_three_alike_sites_keep_a_row_each_and_their_finding_lists_them() -> None:
    sites = [_site(f"b{i}", 0.1, 10) for i in range(3)]
    report = Report(target="model.py", model="Net", dropouts=sites, findings=[_finding(s.id) for s in sites])
    lines = _text(report)
    assert [line.split()[0] for line in lines if line.startswith("  b")] == ["b0", "b1", "b2"]
    assert "model.py:10: DC001 [error] x3 b0, b1, b2: e.g. b0: b0 message" in lines
