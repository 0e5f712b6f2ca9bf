"""output renders hand-built records: plain text when piped, rich on a terminal, JSON schema 1.

No torch here: the records are built by hand, so these tests pin the output format alone.
"""
from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console

from dropcheck import __version__
from dropcheck.output.formats import render_audit, render_rules
from dropcheck.output.json_documents import audit_document
from dropcheck.output.progress import audit_progress
from dropcheck.output.summary import summary_line
from dropcheck.output.text.rules import render_explain
from dropcheck.records import (CaptureInfo, DropcheckError, Finding, OpaqueRegion, Report, Rule, Severity, Site, SiteKind, SourceLocation, StochasticDepthSite)

SRC = SourceLocation("examples/preresnet.py", 104)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _site(id_: str, kind: SiteKind = SiteKind.BRANCH_GUIDELINE, position: str | None = "P6",
          active: bool = True) -> Site:
    return Site(id=id_, module=id_, op="Dropout", p=0.2, site=kind, paper_position=position, active=active,
                why=f"why {id_}", source=SRC)


def _finding(id_: str, rule: str, severity: Severity, source: SourceLocation | None = SRC) -> Finding:
    return Finding(rule=rule, name=f"name-{rule}", severity=severity, dropout=id_, message=f"{rule} message on {id_}",
                   fix=f"fix for {rule}", reaches=("stages.0.0.bn2",), source=source)


def _ok_report() -> Report:
    sites = [
        _site("stages.0.0.drop", SiteKind.BRANCH_PRE_BN, "P3"),
        _site("stages.1.0.drop", SiteKind.BRANCH_POST_WEIGHT, "P7"),
        _site("head_drop", SiteKind.HEAD_POST_GAP, "H5"),
        _site("clean.drop"),
        _site("zero.drop", active=False),
    ]
    findings = [
        _finding("stages.0.0.drop", "DC001", Severity.ERROR),
        _finding("stages.1.0.drop", "DC005", Severity.INFO),
        _finding("head_drop", "DC002", Severity.WARNING, source=None),
    ]
    return Report(
        target="examples/preresnet.py", model="PreResNet", input_shape=[1, 3, 224, 224],
        capture=CaptureInfo(method="symbolic_trace", nodes=34, device="meta", has_batchnorm=True),
        dropouts=sites, findings=findings, seconds=1.25,
        stochastic_depth=[StochasticDepthSite(id=f"l{i}.drop_path", module=f"l{i}.drop_path", op="DropPath",
                                              p=0.1, merge=None) for i in range(12)],
        opaque_regions=[OpaqueRegion(module="attn", type="Attention", batchnorms=(), dropouts=("attn.drop",),
                                     reason="attention module")],
        notes=["no BatchNorm in this model: DC001 cannot fire"],
    )


def _error_report(target: str = "broken.py") -> Report:
    error = DropcheckError("load", "broken.py: no such file", "check the path")
    return Report(target=target, status="error", error=error)


def _render(reports: list[Report], *, terminal: bool, fmt: str = "text") -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=terminal, width=120, color_system="truecolor" if terminal else None)
    render_audit(reports, fmt, console)
    return buffer.getvalue()


# --- plain text --------------------------------------------------------------------------------

def test_plain_findings_are_ruff_style_lines_with_an_indented_fix() -> None:
    lines = _render([_ok_report()], terminal=False).splitlines()
    line = "examples/preresnet.py:104: DC001 [error] stages.0.0.drop: DC001 message on stages.0.0.drop"
    assert line in lines
    assert lines[lines.index(line) + 1] == "    fix: fix for DC001"
    # no source location: the finding falls back to the target
    assert "examples/preresnet.py: DC002 [warning] head_drop: DC002 message on head_drop" in lines


def test_plain_text_has_no_colour_or_box_drawing() -> None:
    text = _render([_ok_report(), _error_report()], terminal=False)
    assert "\x1b[" not in text
    assert not set(text) & set("─│╭╮╰╯┃━┏┓┗┛")


def test_plain_header_names_model_shape_and_capture() -> None:
    header = _render([_ok_report()], terminal=False).splitlines()[0]
    assert header.startswith("examples/preresnet.py: PreResNet")
    assert "1x3x224x224" in header and "symbolic_trace" in header and "34 nodes" in header


def test_plain_site_table_keeps_graph_order_and_aligns_verdicts() -> None:
    lines = _render([_ok_report()], terminal=False).splitlines()
    header = next(line for line in lines if line.split()[:2] == ["id", "op"])
    rows = lines[lines.index(header) + 1: lines.index(header) + 6]
    assert [row.split()[0] for row in rows] == ["stages.0.0.drop", "stages.1.0.drop", "head_drop", "clean.drop",
                                               "zero.drop"]
    verdict_column = header.index("verdict")
    assert [row[verdict_column:].split()[0] for row in rows] == ["DC001", "DC005", "DC002", "ok", "inactive"]


def test_plain_notes_cover_model_notes_opaque_regions_and_stochastic_depth() -> None:
    text = _render([_ok_report()], terminal=False)
    assert "note: no BatchNorm in this model: DC001 cannot fire" in text
    assert "note: opaque region attn (Attention)" in text
    assert "note: 12 stochastic-depth sites (DropPath): reported, not dropout in the paper's sense" in text


def test_a_single_failed_target_is_one_line_with_kind_and_hint() -> None:
    text = _render([_error_report()], terminal=False)
    assert text.splitlines() == ["broken.py: error (load): broken.py: no such file (hint: check the path)"]


def test_summary_counts_findings_and_failed_targets() -> None:
    lines = _render([_ok_report(), _ok_report(), _error_report()], terminal=False).splitlines()
    assert lines[-1] == "3 targets audited: 2 errors, 2 warnings, 2 info; 1 target failed"
    assert summary_line([_ok_report()]) == "1 target audited: 1 error, 1 warning, 1 info"


def test_plain_lines_never_wrap_nor_read_markup() -> None:
    long = _ok_report()
    long.findings[0] = Finding(rule="DC001", name="n", severity=Severity.ERROR, dropout="stages.0.0.drop",
                               message="[red]x[/red] " + "x" * 300, fix="y", source=SRC)
    lines = _render([long], terminal=False).splitlines()
    assert any(line.endswith(": [red]x[/red] " + "x" * 300) for line in lines)  # no wrap, no markup


def test_an_ok_report_without_dropout_says_so() -> None:
    empty = Report(target="m.py", model="M", input_shape=[1, 3, 8, 8])
    text = _render([empty], terminal=False)
    assert "no dropout sites" in text
    assert text.splitlines()[-1] == "1 target audited: 0 errors, 0 warnings, 0 info"


# --- terminal ----------------------------------------------------------------------------------

def test_terminal_rendering_has_the_site_table_and_colour() -> None:
    coloured = _render([_ok_report(), _error_report()], terminal=True)
    assert "\x1b[" in coloured
    text = ANSI.sub("", coloured)
    for header in ("id", "op", "site", "paper", "verdict", "why"):
        assert header in text
    assert "DC001" in text and "fix:" in text and "hint: check the path" in text
    assert "2 targets audited: 1 error, 1 warning, 1 info; 1 target failed" in text


def test_terminal_verdicts_are_coloured_by_severity() -> None:
    text = _render([_ok_report()], terminal=True)
    # the standard red, yellow, blue and green foreground codes
    for code in ("DC001", "DC002", "DC005", "ok"):
        assert code in text
    assert "\x1b[31m" in text and "\x1b[33m" in text and "\x1b[34m" in text and "\x1b[32m" in text


# --- JSON ---------------------------------------------------------------------------------------

def test_json_document_has_schema_version_and_results() -> None:
    document = json.loads(_render([_ok_report(), _error_report()], terminal=False, fmt="json"))
    assert document == audit_document([_ok_report(), _error_report()])
    assert document["schema"] == 1 and document["dropcheck_version"] == __version__
    ok, failed = document["results"]
    for key in ("target", "status", "error", "model", "input_shape", "dropouts", "findings", "measurements"):
        assert key in ok
    assert [d["id"] for d in ok["dropouts"]][:2] == ["stages.0.0.drop", "stages.1.0.drop"]
    assert ok["findings"][0]["rule"] == "DC001" and ok["findings"][0]["severity"] == "error"
    assert failed["status"] == "error" and failed["error"]["kind"] == "load"


def test_json_on_a_terminal_is_still_plain_json() -> None:
    text = _render([_ok_report()], terminal=True, fmt="json")
    assert "\x1b[" not in text
    json.loads(text)


def test_unknown_format_is_a_usage_error() -> None:
    with pytest.raises(DropcheckError) as caught:
        _render([_ok_report()], terminal=False, fmt="yaml")
    assert caught.value.kind == "usage" and caught.value.hint


# --- rules and explain ----------------------------------------------------------------------------

RULE = Rule(code="DC001", name="dropout-before-batchnorm", severity=Severity.ERROR, summary="Flags things.",
            sites=("branch.pre_bn",), paper="P0-P4", path="rules/DC001.md", body="## What it flags\n\nStuff.\n")


def test_rules_table_plain_and_json() -> None:
    buffer = io.StringIO()
    render_rules([RULE], "text", Console(file=buffer, force_terminal=False))
    lines = buffer.getvalue().splitlines()
    assert lines[0].split() == ["code", "name", "severity", "summary"]
    assert lines[1].split()[:3] == ["DC001", "dropout-before-batchnorm", "error"]
    buffer = io.StringIO()
    render_rules([RULE], "json", Console(file=buffer, force_terminal=False))
    assert json.loads(buffer.getvalue()) == [RULE.to_dict()]


def test_explain_is_raw_markdown_when_piped_and_rendered_on_a_terminal() -> None:
    buffer = io.StringIO()
    render_explain(RULE, Console(file=buffer, force_terminal=False))
    assert buffer.getvalue().startswith("# DC001 dropout-before-batchnorm\n")
    assert "## What it flags" in buffer.getvalue()
    buffer = io.StringIO()
    render_explain(RULE, Console(file=buffer, force_terminal=True, width=80))
    assert "## What it flags" not in buffer.getvalue() and "What it flags" in buffer.getvalue()


def test_narrow_terminal_table_drops_why_but_keeps_verdicts() -> None:
    buffer = io.StringIO()
    render_audit([_ok_report()], "text", Console(file=buffer, force_terminal=True, width=80))
    text = ANSI.sub("", buffer.getvalue())
    assert "verdict" in text and "why stages.0.0.drop" not in text
    assert "DC001 message on stages.0.0.drop" in text  # the findings still say why


def test_progress_spinner_only_on_a_terminal() -> None:
    quiet = io.StringIO()
    with audit_progress(Console(file=quiet, force_terminal=False), 2) as progress:
        progress("timm:resnet18", 1)
    assert quiet.getvalue() == ""
    shown = io.StringIO()
    with audit_progress(Console(file=shown, force_terminal=True, width=80), 2) as progress:
        progress("timm:resnet18", 1)
    assert "auditing timm:resnet18 (1/2)" in ANSI.sub("", shown.getvalue())
