"""Audit reports for CI: SARIF 2.1.0 (code scanning), GitHub workflow commands, Markdown.

Each renderer is a pure function of the reports: `to_sarif` returns the SARIF log as a
dict, `to_github` and `to_markdown` return text. `report.render` dispatches here for
`--format sarif|github|markdown`. Paths are written as the audit recorded them, relative
to the working directory where the file lies inside it, so running dropcheck from the
repository root puts every result on the right file and line. Nothing here imports torch.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from .. import __version__
from ..analysis.catalog import load_rules
from ..records import Finding, Report, Rule, Severity, SourceLocation
from .report import error_line, explain_markdown, summary_line

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
SRCROOT = "%SRCROOT%"
_SARIF_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
_GITHUB_COMMAND = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}
_SECTION = re.compile(r"^## +(.+?)\s*$", re.MULTILINE)


# --- SARIF ---------------------------------------------------------------------------------------

def to_sarif(reports: Sequence[Report]) -> dict[str, Any]:
    """One SARIF 2.1.0 log with one run: the catalogue as rules, every finding as a result
    (suppressed findings too, with an in-source suppression), failed targets as notifications."""
    rules = load_rules()
    index = {rule.code: i for i, rule in enumerate(rules)}
    results = [_sarif_result(finding, report, index) for report in reports for finding in report.findings]
    for report in reports:  # silenced by `# dropcheck: ignore`: kept, marked as suppressed in source
        for finding in getattr(report, "suppressed", None) or ():
            results.append({**_sarif_result(finding, report, index), "suppressions": [{"kind": "inSource"}]})
    failed = [report for report in reports if report.status == "error"]
    invocation: dict[str, Any] = {"executionSuccessful": not failed}
    if failed:
        invocation["toolExecutionNotifications"] = [_sarif_notification(report) for report in failed]
    run: dict[str, Any] = {
        "tool": {"driver": {
            "name": "dropcheck",
            "version": __version__,
            "semanticVersion": __version__,
            "rules": [_sarif_rule(rule) for rule in rules],
        }},
        "originalUriBaseIds": {SRCROOT: {"uri": Path.cwd().as_uri().rstrip("/") + "/"}},
        "invocations": [invocation],
        "results": results,
        "columnKind": "unicodeCodePoints",
    }
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}


def _sarif_rule(rule: Rule) -> dict[str, Any]:
    return {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": _what_it_flags(rule) or rule.summary},
        "help": {"text": f"{rule.summary} Run `dropcheck explain {rule.code}` for the full page.",
                 "markdown": explain_markdown(rule)},
        "defaultConfiguration": {"level": _SARIF_LEVEL[rule.severity]},
        "properties": {"tags": ["dropout", "batchnorm"], "sites": list(rule.sites), "paper": rule.paper},
    }


def _what_it_flags(rule: Rule) -> str:
    """The first paragraph of the rule's "What it flags" section, on one line."""
    parts = _SECTION.split(rule.body)
    for heading, text in zip(parts[1::2], parts[2::2]):
        if heading == "What it flags":
            paragraph = text.strip().split("\n\n", 1)[0]
            return " ".join(paragraph.split())
    return ""


def _sarif_result(finding: Finding, report: Report, index: dict[str, int]) -> dict[str, Any]:
    result: dict[str, Any] = {"ruleId": finding.rule}
    if finding.rule in index:
        result["ruleIndex"] = index[finding.rule]
    result["level"] = _SARIF_LEVEL[finding.severity]
    text = f"{finding.dropout}: {finding.message}" + (f". Fix: {finding.fix}" if finding.fix else "")
    result["message"] = {"text": text}
    location = _finding_location(finding, report)
    if location is not None:
        result["locations"] = [{"physicalLocation": _sarif_physical(location)}]
    result["properties"] = {"target": report.target, "dropout": finding.dropout, "fix": finding.fix,
                            "reaches": list(finding.reaches)}
    return result


def _sarif_physical(location: SourceLocation) -> dict[str, Any]:
    physical: dict[str, Any] = {"artifactLocation": artifact_location(location.file)}
    if location.line >= 1:
        physical["region"] = {"startLine": location.line}
    return physical


def artifact_location(file: str) -> dict[str, str]:
    """A SARIF artifactLocation: a relative path becomes a URI reference under %SRCROOT%."""
    path = Path(file)
    if path.is_absolute():
        return {"uri": path.as_uri()}
    posix = PurePosixPath(*path.parts) if path.parts else PurePosixPath(file.replace(os.sep, "/"))
    return {"uri": quote(str(posix), safe="/"), "uriBaseId": SRCROOT}


def _sarif_notification(report: Report) -> dict[str, Any]:
    notification: dict[str, Any] = {"level": "error", "message": {"text": error_line(report)}}
    where = target_file(report.target)
    if where is not None:
        notification["locations"] = [{"physicalLocation": {"artifactLocation": artifact_location(where)}}]
    kind = report.error.kind if report.error else "unknown"
    notification["properties"] = {"target": report.target, "kind": kind}
    return notification


# --- shared --------------------------------------------------------------------------------------

def target_file(target: str) -> str | None:
    """The source file a target spec names (`path/model.py`, `path/model.py:Name`), else None."""
    head, sep, tail = target.rpartition(":")
    if sep and tail.isidentifier() and not (len(head) == 1 and head.isalpha()):
        target = head  # `path/model.py:Name`; keep a Windows drive letter ("C:\\m.py") whole
    return target if target.endswith(".py") else None


def _finding_location(finding: Finding, report: Report) -> SourceLocation | None:
    """Where the finding points: its dropout's source line, else the target's file (no line)."""
    if finding.source is not None:
        return finding.source
    where = target_file(report.target)
    return SourceLocation(where, 0) if where is not None else None


# --- GitHub workflow commands --------------------------------------------------------------------

def to_github(reports: Sequence[Report]) -> str:
    """One `::error|warning|notice file=...,line=...,title=...::message` line per finding."""
    lines: list[str] = []
    for report in reports:
        if report.status == "error":
            lines.append(_github_command("error", {"title": "dropcheck"}, error_line(report)))
            continue
        for finding in report.findings:
            properties: dict[str, str] = {}
            location = _finding_location(finding, report)
            if location is not None:
                properties["file"] = location.file.replace(os.sep, "/")
                if location.line >= 1:
                    properties["line"] = str(location.line)
            properties["title"] = f"{finding.rule} {finding.name}"
            message = f"{finding.dropout}: {finding.message}"
            if location is None:
                message = f"{report.target}: {message}"
            if finding.fix:
                message += f"\nfix: {finding.fix}"
            lines.append(_github_command(_GITHUB_COMMAND[finding.severity], properties, message))
    return "\n".join(lines)


def _github_command(command: str, properties: dict[str, str], message: str) -> str:
    props = ",".join(f"{key}={escape_property(value)}" for key, value in properties.items())
    return f"::{command} {props}::{escape_data(message)}" if props else f"::{command}::{escape_data(message)}"


def escape_data(text: str) -> str:
    """A workflow command's message: `%`, CR and LF are percent-encoded."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value: as `escape_data`, plus `:` and `,`."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


# --- Markdown ------------------------------------------------------------------------------------

def to_markdown(reports: Sequence[Report]) -> str:
    """A job summary or PR comment: per target a table of findings, then the summary line."""
    lines = ["## dropcheck audit", ""]
    for report in reports:
        if report.status == "error":
            continue
        count = len(report.findings)
        about = f"{report.model or '?'}, {count} finding{'' if count == 1 else 's'}"
        lines += [f"### {_code(report.target)}", "", about, ""]
        if not report.findings:
            continue
        lines += ["| rule | severity | dropout | location | message |", "| --- | --- | --- | --- | --- |"]
        for finding in report.findings:
            location = _finding_location(finding, report)
            where = _code(str(location) if location and location.line >= 1 else (location.file if location else "-"))
            message = finding.message + (f"\nfix: {finding.fix}" if finding.fix else "")
            lines.append("| " + " | ".join([f"{finding.rule} {finding.name}", finding.severity.value,
                                             _code(finding.dropout), where, _cell(message)]) + " |")
        lines.append("")
    failed = [report for report in reports if report.status == "error"]
    if failed:
        lines += ["### Failed targets", ""]
        for report in failed:
            error = report.error
            kind, text = (error.kind, error.one_line()) if error else ("unknown", "no error recorded")
            lines.append(f"- {_code(report.target)}: error ({kind}): {_cell(text)}")
        lines.append("")
    lines.append(f"**{summary_line(reports)}**")
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text safe in one table cell: pipes escaped, line breaks as <br>."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>")


def _code(text: str) -> str:
    """An inline code span that survives backticks and pipes inside a table."""
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    body = text.replace("|", "\\|")
    return f"{fence}{pad}{body}{pad}{fence}"
