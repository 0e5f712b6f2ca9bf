"""Which formats each command offers, and which module draws each: the one place that dispatches.

A new format is a module beside json_documents.py, sarif.py, github.py and markdown.py (a pure
function of the records) plus a branch here and its name in FORMATS.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console

from ..records import Comparison, DropcheckError, Report, Reproduction, Rule
from .console import write_plain
from .github import to_github
from .json_documents import (audit_document, comparison_document, render_recalibration_json, reproduction_document,
                             rules_document, write_json)
from .markdown import to_markdown
from .sarif import to_sarif
from .text.audit import render_audit_text
from .text.measure import render_recalibration_text
from .text.reproduce import render_reproduction_text
from .text.rules import render_rules_text
from .text.training import render_comparison_text

FORMATS = ("text", "json", "sarif", "github", "markdown")  # audit and measure
BASIC_FORMATS = ("text", "json")  # fix, rules, reproduce, recalibrate


def render_audit(reports: Sequence[Report], fmt: str, console: Console,
                 rules: Sequence[Rule] | None = None, verbose: bool = False) -> None:
    """Write the audit of every target to `console` in format `fmt` (one of FORMATS). SARIF lists
    the rule catalogue: pass it as `rules` (the CLI passes `load_rules()`). Text, GitHub and Markdown
    fold identical findings (one rule on one source line) unless `verbose`; JSON and SARIF never do."""
    if fmt == "json":
        write_json(console, audit_document(reports))
    elif fmt == "sarif":
        if rules is None:  # a log without its rules would lose every result's ruleIndex
            raise ValueError("render_audit: SARIF needs the rule catalogue as `rules`")
        write_json(console, to_sarif(reports, rules))
    elif fmt == "github":
        write_plain(console, to_github(reports, verbose))
    elif fmt == "markdown":
        write_plain(console, to_markdown(reports, verbose))
    elif fmt == "text":
        render_audit_text(reports, console, verbose)
    else:
        raise _unknown_format(fmt, FORMATS)


def render_rules(rules: Sequence[Rule], fmt: str, console: Console) -> None:
    """The catalogue as a table (text) or a list of `Rule.to_dict()` (json)."""
    if fmt == "json":
        write_json(console, rules_document(rules))
    elif fmt == "text":
        render_rules_text(rules, console)
    else:
        raise _unknown_format(fmt, BASIC_FORMATS)


def render_reproduction(result: Reproduction, fmt: str, console: Console, plot: Any = None) -> None:
    """A reproduced figure: measured values next to the closed forms (text), or its JSON document."""
    if fmt == "json":
        write_json(console, reproduction_document(result, plot))
    elif fmt == "text":
        render_reproduction_text(result, console, plot)
    else:
        raise _unknown_format(fmt, BASIC_FORMATS)


def render_recalibration(result: dict[str, Any], fmt: str, console: Console) -> None:
    """Before/after consistency of each BatchNorm: JSON for "json", else text (the CLI checks `fmt`)."""
    if fmt == "json":
        render_recalibration_json(result, console)
    else:
        render_recalibration_text(result, console)


def render_comparison(comparison: Comparison, fmt: str, console: Console) -> None:
    """A train-compare: its JSON document, the Markdown table, or text (the CLI checks `fmt`)."""
    if fmt == "json":
        write_json(console, comparison_document(comparison))
    elif fmt == "markdown":
        write_plain(console, comparison.markdown())
    else:
        render_comparison_text(comparison, console)


def _unknown_format(fmt: str, choices: Sequence[str]) -> DropcheckError:
    return DropcheckError("usage", f"unknown format '{fmt}'", f"choose one of {', '.join(choices)}")
