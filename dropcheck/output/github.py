"""GitHub Actions workflow commands: one `::error|warning|notice` annotation per finding, identical
findings (one rule on one source line) folded into one annotation with their count and every id.

A failed target becomes one `::error` line. Paths are written as the audit recorded them,
relative to the working directory, so a job run from the repository root annotates the right
file and line.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from ..records import Report, Severity
from .grouping import FindingGroup, group_findings
from .locations import finding_location
from .summary import error_line

_GITHUB_COMMAND = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def to_github(reports: Sequence[Report], verbose: bool = False) -> str:
    """One `::error|warning|notice file=...,line=...,title=...::message` line per finding, or per
    group of identical findings (each on its own with `verbose`)."""
    lines: list[str] = []
    for report in reports:
        if report.status == "error":
            lines.append(_github_command("error", {"title": "dropcheck"}, error_line(report)))
            continue
        groups = [FindingGroup((f,)) for f in report.findings] if verbose else group_findings(report.findings)
        for group in groups:
            finding = group.first
            properties: dict[str, str] = {}
            location = finding_location(finding, report)
            if location is not None:
                properties["file"] = location.file.replace(os.sep, "/")
                if location.line >= 1:
                    properties["line"] = str(location.line)
            properties["title"] = f"{finding.rule} {finding.name}" + (f" (x{group.count})" if group.count > 1 else "")
            message = f"{finding.dropout}: {finding.message}"
            if group.count > 1:  # an annotation has room for every id; the message is the first's
                message = f"{group.count} dropouts on this line: {', '.join(group.ids)}\ne.g. {message}"
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
