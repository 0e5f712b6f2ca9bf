"""`# dropcheck: ignore[...]` comments on real model files: what they silence, what they do not,
how suppressed findings are counted, and `--show-unused-ignores`.

Audits are direct pipeline calls (torch is imported once per worker); one subprocess shows the
text a user sees.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dropcheck.output.summary import summary_line
from dropcheck.analysis import suppress
from dropcheck.records import Finding, Report, Severity, SourceLocation

TIMEOUT = 180

# conv-BN-ReLU, global pool, then a functional dropout: DC002 (warning) on "/dropout"
POST_GAP = """
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    input_shape = (2, 3, 16, 16)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.pool(F.relu(self.bn(self.conv(x)))).flatten(1)
        x = F.dropout(x, 0.2, training=self.training)COMMENT
        return self.fc(x)
"""

# an always-on dropout before the pool: DC006 (error) only
ALWAYS_ON = POST_GAP.replace("self.pool(F.relu(self.bn(self.conv(x)))).flatten(1)", "F.relu(self.bn(self.conv(x)))") \
    .replace("F.dropout(x, 0.2, training=self.training)COMMENT", "F.dropout(x, 0.2)COMMENT") \
    .replace("return self.fc(x)", "return self.fc(self.pool(x).flatten(1))")

# nn.Dropout inside an nn.Sequential spread over lines: its declaration is the `nn.Sequential(` line
SEQUENTIAL = """
from torch import nn


class Net(nn.Module):
    input_shape = (2, 3, 16, 16)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(SEQ_COMMENT
            nn.Flatten(),
            nn.Dropout(0.2),COMMENT
            nn.Linear(8, 4),
        )

    def forward(self, x):
        return self.head(self.pool(self.features(x)))
"""

# the same, with the Sequential on one line
SEQUENTIAL_ONE_LINE = SEQUENTIAL.replace(
    "nn.Sequential(SEQ_COMMENT\n            nn.Flatten(),\n            nn.Dropout(0.2),COMMENT\n"
    "            nn.Linear(8, 4),\n        )",
    "nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(8, 4))COMMENT")

MODELS = {
    "none": (POST_GAP, ""),
    "dc002": (POST_GAP, "  # dropcheck: ignore[DC002]"),
    "bare": (POST_GAP, "  # dropcheck: ignore"),
    "other_code": (POST_GAP, "  # dropcheck: ignore[DC004]"),
    "two_codes": (POST_GAP, "  # dropcheck: ignore[DC002, DC004]"),
    "by_name": (POST_GAP, "  # dropcheck: ignore[dropout-after-global-pool]"),
    "by_prefix": (POST_GAP, "  # Dropcheck:ignore[dc00] keep it: the paper's H5 on purpose"),
    "always_on": (ALWAYS_ON, "  # dropcheck: ignore[DC006]"),
    "seq_element": (SEQUENTIAL.replace("SEQ_COMMENT", ""), "  # dropcheck: ignore[DC002]"),
    "seq_declared": (SEQUENTIAL.replace("SEQ_COMMENT", "  # dropcheck: ignore[DC002]"), ""),
    "seq_one_line": (SEQUENTIAL_ONE_LINE, "  # dropcheck: ignore[DC002]"),
    "seq_none": (SEQUENTIAL.replace("SEQ_COMMENT", ""), ""),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("suppress")
    for name, (source, comment) in MODELS.items():
        text = textwrap.dedent(source).lstrip("\n").replace("COMMENT", comment)
        if name == "other_code":  # plus an ignore far from any dropout
            text += "\n\nUNUSED = 1  # dropcheck: ignore[DC001]\n"
        (directory / f"{name}.py").write_text(text)
    return directory


@pytest.fixture(scope="module")
def audited(models: Path) -> dict[str, Report]:
    from dropcheck.analysis.pipeline import audit_target

    reports = {name: audit_target(str(models / f"{name}.py")) for name in MODELS}
    for name, rep in reports.items():
        assert rep.status == "ok", (name, rep.error and rep.error.one_line())
    return reports


def _line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def _rules(findings: list[Finding]) -> list[str]:
    return [f.rule for f in findings]


def test_without_a_comment_the_finding_is_there(audited: dict[str, Report]) -> None:
    assert _rules(audited["none"].findings) == ["DC002"] and audited["none"].suppressed == []
    assert _rules(audited["seq_none"].findings) == ["DC002"]


@pytest.mark.parametrize("name", ["dc002", "bare", "two_codes", "by_name", "by_prefix"])
def test_an_ignore_on_the_source_line_suppresses_and_counts(audited: dict[str, Report], models: Path,
                                                            name: str) -> None:
    rep = audited[name]
    assert rep.findings == []
    (silenced,) = rep.suppressed
    assert silenced.rule == "DC002" and silenced.dropout == "/dropout"
    assert silenced.source == SourceLocation(str(models / f"{name}.py"), _line_of(models / f"{name}.py", "F.dropout"))
    assert summary_line([rep]).endswith("0 errors, 0 warnings, 0 info, 1 suppressed")
    assert [f["rule"] for f in rep.to_dict()["suppressed"]] == ["DC002"] and rep.to_dict()["findings"] == []


def test_an_ignore_for_another_code_does_not_suppress(audited: dict[str, Report]) -> None:
    rep = audited["other_code"]
    assert _rules(rep.findings) == ["DC002"] and rep.suppressed == []
    assert "suppressed" not in summary_line([rep])


@pytest.mark.parametrize("name", ["seq_element", "seq_declared", "seq_one_line"])
def test_an_ignore_on_the_declaration_of_a_dropout_in_sequential(audited: dict[str, Report], models: Path,
                                                                 name: str) -> None:
    rep = audited[name]
    (site,) = rep.dropouts
    assert site.id == "head.1" and site.declared is not None
    # the element's own line (issue 13: it was the `nn.Sequential(` line); the container's line
    # still covers its elements
    assert site.declared.line == _line_of(models / f"{name}.py", "nn.Dropout(0.2)")
    assert rep.findings == [] and _rules(rep.suppressed) == ["DC002"]


def test_a_suppressed_error_does_not_fail_the_audit(audited: dict[str, Report]) -> None:
    from dropcheck.cli import FAIL_ON, exit_code

    rep = audited["always_on"]
    assert rep.findings == [] and _rules(rep.suppressed) == ["DC006"]
    assert exit_code([rep], FAIL_ON["info"]) == 0


def test_unused_ignores_are_found_per_code(audited: dict[str, Report], models: Path) -> None:
    names = ["dc002", "two_codes", "other_code", "seq_element"]
    unused = suppress.unused_ignores([audited[name] for name in names])
    other, two = models / "other_code.py", models / "two_codes.py"
    assert [str(u) for u in unused] == [
        f"{two}:{_line_of(two, 'F.dropout')}: unused dropcheck: ignore[DC004]",
        f"{other}:{_line_of(other, 'F.dropout')}: unused dropcheck: ignore[DC004]",
        f"{other}:{_line_of(other, 'UNUSED = 1')}: unused dropcheck: ignore[DC001]",
    ]
    assert audited["dc002"].unused_ignores == [] and len(audited["other_code"].unused_ignores) == 2
    assert f"{str(unused[1])}" in audited["other_code"].notes
    assert audited["other_code"].to_dict()["unused_ignores"][1] == {
        "file": str(other), "line": _line_of(other, "UNUSED = 1"), "codes": ["DC001"]}


def test_comments_are_read_from_comments_only(tmp_path: Path) -> None:
    path = tmp_path / "strings.py"
    path.write_text('TEXT = "# dropcheck: ignore[DC002]"\nx = 1  # dropcheck: ignore[DC002,  DC004 ]\n'
                    "y = 2  # noqa: E501  # dropcheck: ignore\n")
    found = suppress.ignores_in(str(path))
    assert sorted(found) == [2, 3]
    assert found[2].codes == ("DC002", "DC004") and found[3].codes == ()
    assert suppress.ignores_in(str(tmp_path / "missing.py")) == {}


def test_summary_line_counts_suppressed_over_all_reports() -> None:
    finding = Finding(rule="DC002", name="dropout-after-global-pool", severity=Severity.WARNING, dropout="d",
                      message="m", fix="f")
    reports = [Report(target="a", suppressed=[finding]), Report(target="b", suppressed=[finding, finding])]
    assert summary_line(reports) == "2 targets audited: 0 errors, 0 warnings, 0 info, 3 suppressed"


# --- the command line ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_run(models: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dropcheck", "audit", "dc002.py", "other_code.py", "always_on.py",
                           "--show-unused-ignores"], cwd=models, capture_output=True, text=True, timeout=TIMEOUT)


def test_cli_counts_suppressed_and_lists_unused_ignores(cli_run: subprocess.CompletedProcess[str],
                                                        models: Path) -> None:
    assert cli_run.returncode == 0, cli_run.stdout + cli_run.stderr  # DC006 (error) is suppressed
    out = cli_run.stdout
    assert out.rstrip().endswith("3 targets audited: 0 errors, 1 warning, 0 info, 2 suppressed")
    line = _line_of(models / "other_code.py", "UNUSED = 1")
    assert f"other_code.py:{line}: unused dropcheck: ignore[DC001]" in out
    assert "other_code.py:" in out and "DC002 [warning] /dropout" in out  # the one not silenced
    assert "DC006" not in out


def test_json_has_suppressed_and_unused_ignores(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from dropcheck import cli

    monkeypatch.chdir(models)
    runner = CliRunner()
    shown = runner.invoke(cli.app, ["audit", "dc002.py", "other_code.py", "--format", "json", "--show-unused-ignores"])
    plain = runner.invoke(cli.app, ["audit", "dc002.py", "--format", "json"])
    first, second = json.loads(shown.stdout)["results"]
    assert [f["rule"] for f in first["suppressed"]] == ["DC002"] and first["findings"] == []
    assert first["unused_ignores"] == [] and [u["codes"] for u in second["unused_ignores"]] == [["DC004"], ["DC001"]]
    assert second["unused_ignores"][0]["file"] == "other_code.py"
    assert json.loads(plain.stdout)["results"][0]["unused_ignores"] is None
