"""The rule catalogue as text: `dropcheck rules` (a table) and `dropcheck explain` (one page).

Only rich and the Rule records load here: both commands stay torch-free and fast.
"""
from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ...records import Rule
from ..console import columns, write_plain
from ..markdown import explain_markdown
from .audit import SEVERITY_STYLE

_HEADERS = ("code", "name", "severity", "summary")


def render_rules_text(rules: Sequence[Rule], console: Console) -> None:
    """One row per rule: code, name, severity, summary."""
    if not console.is_terminal:
        rows = [(r.code, r.name, r.severity.value, r.summary) for r in rules]
        write_plain(console, "\n".join(columns(_HEADERS, rows)))
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for header in _HEADERS:
        table.add_column(header, overflow="fold")
    for rule in rules:
        table.add_row(Text(rule.code, style="bold"), rule.name,
                      Text(rule.severity.value, style=SEVERITY_STYLE[rule.severity]), rule.summary)
    console.print(table)


def render_explain(rule: Rule, console: Console) -> None:
    """One rule's page: rendered Markdown on a terminal, the Markdown source when piped."""
    text = explain_markdown(rule)
    if console.is_terminal:
        from rich.markdown import Markdown  # a tenth of a second to import: only this command needs it

        console.print(Markdown(text))
    else:
        write_plain(console, text.rstrip("\n"))
