"""Identical findings folded into one: same rule and severity on the same source line.

A ResNet written with one BasicBlock class has one dropout per block and one source line for
all of them: eight DC001s on `resnet18.py:33` say one thing. Text, GitHub annotations and
Markdown print them once with the count and the ids; JSON, SARIF and `--verbose` keep every one.
A finding without a source line is never folded (nothing says it is the same code).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..records import Finding

_SHOWN_IDS = 3  # more ids than this read "first ... last" where a line must stay short


@dataclass(frozen=True)
class FindingGroup:
    """One finding, or several of one rule on one source line (in the order the rules made them)."""

    findings: tuple[Finding, ...]

    @property
    def first(self) -> Finding:
        return self.findings[0]

    @property
    def count(self) -> int:
        return len(self.findings)

    @property
    def ids(self) -> list[str]:
        return [f.dropout for f in self.findings]

    @property
    def fix(self) -> str:
        """The fix advice (a rule's advice depends on the site kind, and so does the row: the first's)."""
        return self.first.fix

    @property
    def same_message(self) -> bool:
        return len({f.message for f in self.findings}) == 1

    def short_ids(self, limit: int = _SHOWN_IDS) -> str:
        """'a, b, c' or, beyond `limit`, 'first ... last' (the site table and --verbose list each)."""
        ids = self.ids
        return ", ".join(ids) if len(ids) <= limit else f"{ids[0]} ... {ids[-1]}"


def group_findings(findings: Sequence[Finding]) -> list[FindingGroup]:
    """Findings folded by (rule, severity, file, line), each group where its first finding was."""
    groups: dict[object, list[Finding]] = {}
    for index, finding in enumerate(findings):
        key: object = ((finding.rule, finding.severity, finding.source.file, finding.source.line)
                       if finding.source is not None else index)
        groups.setdefault(key, []).append(finding)
    return [FindingGroup(tuple(members)) for members in groups.values()]


def count_mark(count: int) -> str:
    """'x8 ' for a group, '' for a single finding."""
    return f"x{count} " if count > 1 else ""
