"""Where a finding points in the user's files, for the formats that link to them (SARIF,
GitHub annotations, Markdown). Paths stay as the audit recorded them."""
from __future__ import annotations

from ..records import Finding, Report, SourceLocation


def target_file(target: str) -> str | None:
    """The source file a target spec names (`path/model.py`, `path/model.py:Name`), else None."""
    head, sep, tail = target.rpartition(":")
    if sep and tail.isidentifier() and not (len(head) == 1 and head.isalpha()):
        target = head  # `path/model.py:Name`; keep a Windows drive letter ("C:\\m.py") whole
    return target if target.endswith(".py") else None


def finding_location(finding: Finding, report: Report) -> SourceLocation | None:
    """Where the finding points: its dropout's source line, else the target's file (no line)."""
    if finding.source is not None:
        return finding.source
    where = target_file(report.target)
    return SourceLocation(where, 0) if where is not None else None
