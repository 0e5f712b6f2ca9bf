"""SARIF 2.1.0 for code scanning: the rule catalogue as the driver's rules, every finding a result.

The catalogue comes in as a parameter (the CLI passes `load_rules()`), so output reads records
only. Relative paths become URI references under %SRCROOT% (the working directory), so running
dropcheck from the repository root puts every result on the right file and line.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from ..version import __version__
from ..records import Finding, Report, Rule, Severity, SourceLocation
from .locations import finding_location, target_file
from .markdown import explain_markdown
from .summary import error_line

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
SRCROOT = "%SRCROOT%"
_SARIF_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
_SECTION = re.compile(r"^## +(.+?)\s*$", re.MULTILINE)


def to_sarif(reports: Sequence[Report], rules: Sequence[Rule]) -> dict[str, Any]:
    """One SARIF 2.1.0 log with one run: `rules` (the catalogue) as the driver's rules, every
    finding as a result (suppressed findings too, with an in-source suppression), failed
    targets as notifications."""
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


def artifact_location(file: str) -> dict[str, str]:
    """A SARIF artifactLocation: a relative path becomes a URI reference under %SRCROOT%."""
    path = Path(file)
    if path.is_absolute():
        return {"uri": path.as_uri()}
    posix = PurePosixPath(*path.parts) if path.parts else PurePosixPath(file.replace(os.sep, "/"))
    return {"uri": quote(str(posix), safe="/"), "uriBaseId": SRCROOT}


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
    location = finding_location(finding, report)
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


def _sarif_notification(report: Report) -> dict[str, Any]:
    notification: dict[str, Any] = {"level": "error", "message": {"text": error_line(report)}}
    where = target_file(report.target)
    if where is not None:
        notification["locations"] = [{"physicalLocation": {"artifactLocation": artifact_location(where)}}]
    kind = report.error.kind if report.error else "unknown"
    notification["properties"] = {"target": report.target, "kind": kind}
    return notification
