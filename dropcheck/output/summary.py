"""The words every audit format shares: the summary line and a failed target's line.

Text, Markdown, GitHub annotations and SARIF notifications all say these the same way.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..records import Report, Severity


def summary_line(reports: Sequence[Report]) -> str:
    """'3 targets audited: 4 errors, 1 warning, 0 info, 2 suppressed; 1 target failed' (no 'suppressed' at 0)."""
    counts = severity_counts(reports)
    failed = sum(r.status == "error" for r in reports)
    line = (f"{plural(len(reports), 'target')} audited: {plural(counts[Severity.ERROR], 'error')}, "
            f"{plural(counts[Severity.WARNING], 'warning')}, {counts[Severity.INFO]} info")
    suppressed = sum(len(r.suppressed) for r in reports)
    line += f", {suppressed} suppressed" if suppressed else ""
    return f"{line}; {plural(failed, 'target')} failed" if failed else line


def error_line(report: Report) -> str:
    """A failed target as one line: 'target: error (kind): message (hint: ...)'."""
    error = report.error
    if error is None:
        return f"{report.target}: error (unknown): no error recorded"
    return f"{report.target}: error ({error.kind}): {error.one_line()}"


def severity_counts(reports: Sequence[Report]) -> dict[Severity, int]:
    """Active findings per severity over all reports (suppressed ones are not counted)."""
    counts = dict.fromkeys(Severity, 0)
    for report in reports:
        for finding in report.findings:
            counts[finding.severity] += 1
    return counts


def plural(count: int, word: str) -> str:
    """'1 target', '2 targets'."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"
