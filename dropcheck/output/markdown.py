"""Markdown: the audit as a job summary or PR comment, and a rule's page.

train-compare's Markdown table is `Comparison.markdown()` in records/training.py: its JSON
document embeds the same table, so the record builds it.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..records import Report, Rule
from .grouping import FindingGroup, group_findings
from .locations import finding_location
from .summary import summary_line


def to_markdown(reports: Sequence[Report], verbose: bool = False) -> str:
    """A job summary or PR comment: per target a table of findings (identical ones, one rule on one
    source line, share a row listing every id, unless `verbose`), then the summary line."""
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
        groups = [FindingGroup((f,)) for f in report.findings] if verbose else group_findings(report.findings)
        for group in groups:
            finding = group.first
            location = finding_location(finding, report)
            where = _code(str(location) if location and location.line >= 1 else (location.file if location else "-"))
            message = finding.message if group.count == 1 else f"e.g. {finding.dropout}: {finding.message}"
            message += f"\nfix: {finding.fix}" if finding.fix else ""
            rule = f"{finding.rule} {finding.name}" + (f" (x{group.count})" if group.count > 1 else "")
            dropouts = "<br>".join(_code(i) for i in group.ids)
            lines.append("| " + " | ".join([rule, finding.severity.value, dropouts, where, _cell(message)]) + " |")
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


def explain_markdown(rule: Rule) -> str:
    """The rule file as one Markdown page: a title and its metadata, then the body."""
    meta = f"**Severity:** {rule.severity.value} · **Sites:** {', '.join(rule.sites)} · **Paper:** {rule.paper}"
    return f"# {rule.code} {rule.name}\n\n{meta}\n\n{rule.summary}\n\n{rule.body}"


def _cell(text: str) -> str:
    """Text safe in one table cell: pipes escaped, line breaks as <br>."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>")


def _code(text: str) -> str:
    """An inline code span that survives backticks and pipes inside a table."""
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    body = text.replace("|", "\\|")
    return f"{fence}{pad}{body}{pad}{fence}"
