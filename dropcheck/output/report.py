"""Rendering: audit reports, fix results, the rule list and one rule's page, as text or JSON.

Everything is drawn from the records and their `to_dict()`. Text has two faces, chosen by
`console.is_terminal`: rich colour and tables on a terminal; plain lines when piped (CI
logs, pre-commit), with findings in ruff's `file:line: CODE [severity] site: message` form
so editors and problem matchers can jump to them. Plain output goes through `console.out`,
which never wraps, so a finding or an error stays one line whatever the width.
Nothing here imports torch.
"""
from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.markdown import Markdown
from rich.padding import Padding
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from .. import __version__
from ..records import DropcheckError, Finding, FixResult, Report, Rule, Severity, Site

FORMATS = ("text", "json", "sarif", "github", "markdown")  # audit and measure
BASIC_FORMATS = ("text", "json")  # fix, rules, reproduce, recalibrate
SCHEMA = 1
_SEVERITY_STYLE = {Severity.ERROR: "red", Severity.WARNING: "yellow", Severity.INFO: "blue"}
_SITE_COLUMNS = ("id", "op", "p", "site", "paper", "verdict", "why")
_WHY_MIN_WIDTH = 100  # terminal columns below which the site table leaves out "why"


def render(reports: Sequence[Report], fmt: str, console: Console) -> None:
    """Write the audit of every target to `console` in format `fmt` (one of FORMATS)."""
    if fmt == "json":
        _out(console, json.dumps(to_json_document(reports), indent=2))
    elif fmt in ("sarif", "github", "markdown"):
        from . import ci as report_ci  # imports this module: loaded on use

        if fmt == "sarif":
            _out(console, json.dumps(report_ci.to_sarif(reports), indent=2))
        else:
            _out(console, report_ci.to_github(reports) if fmt == "github" else report_ci.to_markdown(reports))
    elif fmt == "text":
        if any(r.measurements is not None for r in reports):
            _render_measured(reports, console)
        elif console.is_terminal:
            _render_rich(reports, console)
        else:
            _out(console, "\n".join(_plain_lines(reports)))
    else:
        raise DropcheckError("usage", f"unknown format '{fmt}'", f"choose one of {', '.join(FORMATS)}")


def to_json_document(reports: Sequence[Report]) -> dict[str, Any]:
    """The schema-1 document of design §4."""
    return {"schema": SCHEMA, "dropcheck_version": __version__, "results": [r.to_dict() for r in reports]}


def render_rules(rules: Sequence[Rule], fmt: str, console: Console) -> None:
    """The catalogue as a table (text) or a list of `Rule.to_dict()` (json)."""
    if fmt == "json":
        _out(console, json.dumps([rule.to_dict() for rule in rules], indent=2))
        return
    if fmt != "text":
        raise DropcheckError("usage", f"unknown format '{fmt}'", f"choose one of {', '.join(BASIC_FORMATS)}")
    if not console.is_terminal:
        rows = [(r.code, r.name, r.severity.value, r.summary) for r in rules]
        _out(console, "\n".join(_columns(("code", "name", "severity", "summary"), rows)))
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for header in ("code", "name", "severity", "summary"):
        table.add_column(header, overflow="fold")
    for rule in rules:
        table.add_row(Text(rule.code, style="bold"), rule.name,
                      Text(rule.severity.value, style=_SEVERITY_STYLE[rule.severity]), rule.summary)
    console.print(table)


def render_explain(rule: Rule, console: Console) -> None:
    """One rule's page: rendered Markdown on a terminal, the Markdown source when piped."""
    text = explain_markdown(rule)
    if console.is_terminal:
        console.print(Markdown(text))
    else:
        _out(console, text.rstrip("\n"))


def explain_markdown(rule: Rule) -> str:
    """The rule file as one Markdown page: a title and its metadata, then the body."""
    meta = f"**Severity:** {rule.severity.value} · **Sites:** {', '.join(rule.sites)} · **Paper:** {rule.paper}"
    return f"# {rule.code} {rule.name}\n\n{meta}\n\n{rule.summary}\n\n{rule.body}"


@contextmanager
def audit_progress(console: Console, total: int) -> Iterator[Callable[[str, int], None]]:
    """A spinner naming the target being audited; silent unless `console` is a terminal."""
    if not console.is_terminal:
        yield lambda spec, index: None
        return
    with console.status("auditing", spinner="dots") as status:
        yield lambda spec, index: status.update(Text(f"auditing {spec} ({index}/{total})"))


def summary_line(reports: Sequence[Report]) -> str:
    """'3 targets audited: 4 errors, 1 warning, 0 info, 2 suppressed; 1 target failed' (no 'suppressed' at 0)."""
    counts = _severity_counts(reports)
    failed = sum(r.status == "error" for r in reports)
    line = (f"{_plural(len(reports), 'target')} audited: {_plural(counts[Severity.ERROR], 'error')}, "
            f"{_plural(counts[Severity.WARNING], 'warning')}, {counts[Severity.INFO]} info")
    suppressed = sum(len(r.suppressed) for r in reports)
    line += f", {suppressed} suppressed" if suppressed else ""
    return f"{line}; {_plural(failed, 'target')} failed" if failed else line


def error_line(report: Report) -> str:
    """A failed target as one line: 'target: error (kind): message (hint: ...)'."""
    error = report.error
    if error is None:
        return f"{report.target}: error (unknown): no error recorded"
    return f"{report.target}: error ({error.kind}): {error.one_line()}"


# --- shared pieces -------------------------------------------------------------------------------

def _site_findings(site: Site, findings: Sequence[Finding]) -> list[Finding]:
    """The findings on `site`, in the order the rules produced them."""
    return [f for f in findings if f.dropout == site.id]


def _verdict_word(site: Site, on_site: Sequence[Finding]) -> str:
    if on_site:
        return ",".join(f.rule for f in on_site)
    return "ok" if site.active else "inactive"


def _header_parts(report: Report) -> list[str]:
    parts = [report.model or "?"]
    if report.input_shape:
        parts.append("input " + "x".join(str(d) for d in report.input_shape))
    if report.capture:
        parts.append(f"{report.capture.method} on {report.capture.device}, {report.capture.nodes} nodes")
    parts.append(f"{report.seconds:.2f} s")
    return parts


def _notes(report: Report) -> list[str]:
    """Model notes, opaque regions that no note names yet, and stochastic depth in one line."""
    notes = list(report.notes)
    for region in report.opaque_regions:
        if not any(region.module in note for note in notes):
            notes.append(f"opaque region {region.module} ({region.type}) could not be traced ({region.reason}); "
                         f"it holds {len(region.batchnorms)} BatchNorm and {len(region.dropouts)} dropout module(s)")
    if report.stochastic_depth:
        ops = ", ".join(dict.fromkeys(s.op for s in report.stochastic_depth))
        count = _plural(len(report.stochastic_depth), "stochastic-depth site")
        notes.append(f"{count} ({ops}): reported, not dropout in the paper's sense")
    return notes


def _location(finding: Finding, report: Report) -> str:
    return str(finding.source) if finding.source else report.target


def _severity_counts(reports: Sequence[Report]) -> dict[Severity, int]:
    counts = dict.fromkeys(Severity, 0)
    for report in reports:
        for finding in report.findings:
            counts[finding.severity] += 1
    return counts


def _worst_style(reports: Sequence[Report]) -> str:
    counts = _severity_counts(reports)
    if counts[Severity.ERROR] or any(r.status == "error" for r in reports):
        return "bold red"
    return "bold yellow" if counts[Severity.WARNING] else "bold green"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _format_p(p: float) -> str:
    return f"{p:g}"


def _out(console: Console, text: str) -> None:
    # console.out neither wraps nor reads markup: JSON and plain lines go out byte for byte
    console.out(text, highlight=False)


# --- plain text (piped) --------------------------------------------------------------------------

def _render_measured(reports: Sequence[Report], console: Console) -> None:
    """Each target's audit followed by its Δ table, then the summary."""
    from .measure import render_measurements

    for index, rep in enumerate(reports):
        if index:
            console.print()
        if console.is_terminal:
            console.print(_rich_report(rep, console.width))
        else:
            _out(console, "\n".join(_plain_report(rep)))
        if rep.status == "ok":
            render_measurements(rep, console, limit=None if len(rep.measurements or []) <= 40 else 25)
    console.print()
    console.print(Text(summary_line(reports), style=_worst_style(reports) if console.is_terminal else ""))


def _plain_lines(reports: Sequence[Report]) -> list[str]:
    lines: list[str] = []
    for index, report in enumerate(reports):
        if index:
            lines.append("")
        lines.extend(_plain_report(report))
    # one failed target already said everything in its one line
    if not (len(reports) == 1 and reports[0].status == "error"):
        lines.extend(["", summary_line(reports)] if lines else [summary_line(reports)])
    return lines


def _plain_report(report: Report) -> list[str]:
    if report.status == "error":
        return [error_line(report)]
    lines = [f"{report.target}: " + ", ".join(_header_parts(report))]
    if report.dropouts:
        deltas = _deltas(report)
        rows = [_site_row(site, _site_findings(site, report.findings), deltas) for site in report.dropouts]
        headers = _SITE_COLUMNS if deltas is None else (*_SITE_COLUMNS[:-1], "Δ", _SITE_COLUMNS[-1])
        lines.extend("  " + row for row in _columns(headers, rows))
    else:
        lines.append("  no dropout sites")
    for finding in report.findings:
        lines.append(f"{_location(finding, report)}: {finding.rule} [{finding.severity.value}] "
                     f"{finding.dropout}: {finding.message}")
        if finding.fix:
            lines.append(f"    fix: {finding.fix}")
    lines.extend(f"note: {note}" for note in _notes(report))
    return lines


def _site_row(site: Site, on_site: Sequence[Finding], deltas: dict[str, float] | None = None) -> tuple[str, ...]:
    delta = () if deltas is None else (f"{deltas[site.id]:.3f}" if site.id in deltas else "-",)
    return (site.id, site.op, _format_p(site.p), site.site.value, site.paper_position or "-",
            _verdict_word(site, on_site), *delta, site.why)


def _deltas(report: Report) -> dict[str, float] | None:
    """Measured Δ per dropout (lowest at the BatchNorms it reaches), when the report was measured."""
    if report.measurements is None:
        return None
    from .measure import delta_by_site

    return delta_by_site(report)


def _columns(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers) - 1)]

    def line(cells: Sequence[str]) -> str:
        padded = [str(cell).ljust(width) for cell, width in zip(cells, widths)]
        return "  ".join([*padded, str(cells[-1])]).rstrip()

    return [line(headers), *(line(row) for row in rows)]


# --- rich (terminal) -----------------------------------------------------------------------------

def _render_rich(reports: Sequence[Report], console: Console) -> None:
    for index, report in enumerate(reports):
        if index:
            console.print()
        console.print(_rich_report(report, console.width))
    console.print()
    console.print(Text(summary_line(reports), style=_worst_style(reports)))


def _rich_report(report: Report, width: int) -> RenderableType:
    if report.status == "error":
        error = report.error
        parts: list[RenderableType] = [Text(f"{report.target}: error ({error.kind if error else 'unknown'}): "
                                            f"{error.message if error else 'no error recorded'}", style="bold red")]
        if error and error.hint:
            parts.append(Text.assemble(("hint: ", "bold"), error.hint))
        return Group(*parts)
    header = Text.assemble((report.target, "bold"), "  ", (report.model or "?", "cyan"), "  ",
                           (" · ".join(_header_parts(report)[1:]), "dim"))
    parts = [header, _rich_sites(report, width) if report.dropouts else Text("no dropout sites", style="dim")]
    if report.findings:
        parts.append(Text())
        parts.extend(_rich_finding(finding, report) for finding in report.findings)
    notes = _notes(report)
    if notes:
        parts.append(Text())
        parts.extend(Text.assemble(("note: ", "bold cyan"), note) for note in notes)
    return Group(*parts)


def _rich_sites(report: Report, console_width: int) -> Table:
    # "why" squeezed into a narrow terminal wraps into unreadable slivers; there the findings
    # below still say why each flagged site is flagged, and plain/JSON output always has it
    deltas = _deltas(report)
    base = _SITE_COLUMNS if deltas is None else (*_SITE_COLUMNS[:-1], "Δ", _SITE_COLUMNS[-1])
    columns = base if console_width >= _WHY_MIN_WIDTH else base[:-1]
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for header in columns:
        table.add_column(header, justify="right" if header in ("p", "Δ") else "left", overflow="fold")
    for site in report.dropouts:
        on_site = _site_findings(site, report.findings)
        cells: list[RenderableType] = [site.id, site.op, _format_p(site.p), site.site.value,
                                       site.paper_position or "", _rich_verdict(site, on_site)]
        if deltas is not None:
            cells.append(f"{deltas[site.id]:.3f}" if site.id in deltas else "-")
        table.add_row(*cells, *([Text(site.why, style="dim")] if len(columns) > len(cells) else []))
    return table


def _rich_verdict(site: Site, on_site: Sequence[Finding]) -> Text:
    if not on_site:
        return Text("ok", style="green") if site.active else Text("inactive", style="dim")
    verdict = Text()
    for i, finding in enumerate(on_site):
        if i:
            verdict.append(" ")
        verdict.append(finding.rule, style=_SEVERITY_STYLE[finding.severity])
    return verdict


def _rich_finding(finding: Finding, report: Report) -> RenderableType:
    style = _SEVERITY_STYLE[finding.severity]
    head = Text.assemble((finding.rule, f"bold {style}"), " ", (finding.severity.value.ljust(7), style), "  ",
                         (finding.dropout, "bold"), "  ", (_location(finding, report), "dim"))
    lines: list[RenderableType] = [head, Padding(Text(finding.message), (0, 0, 0, 2))]
    if finding.fix:
        lines.append(Padding(Text.assemble(("fix: ", "green"), finding.fix), (0, 0, 0, 2)))
    return Group(*lines)


# --- fix -----------------------------------------------------------------------------------------

@contextmanager
def fix_progress(console: Console, text: str) -> Iterator[Callable[[str], None]]:
    """A spinner showing `text` ("fixing TARGET"); silent unless `console` is a terminal.
    Yields a function that replaces the text with the current step ("verifying")."""
    if not console.is_terminal:
        yield lambda step: None
        return
    with console.status(Text(text), spinner="dots") as status:
        yield lambda step: status.update(Text(step))


def fix_to_json_document(result: FixResult | None, written: Sequence[Any] = (), diff: bool = False,
                         error: DropcheckError | None = None, target: str = "") -> dict[str, Any]:
    """`{"schema": 1, "dropcheck_version", "fix": FixResult.to_dict(), "written": [paths]}`, plus
    `"error"` when the fix failed (`"fix"` is null if it failed before there was a result)."""
    document: dict[str, Any] = {"schema": SCHEMA, "dropcheck_version": __version__,
                                "fix": result.to_dict() if result is not None else None,
                                "written": [str(path) for path in written]}
    if error is not None:
        document["target"] = result.target if result is not None else target
        document["error"] = error.to_dict()
    if diff and result is not None:
        document["diff"] = fix_diff(result)
    return document


def render_fix_json(result: FixResult | None, console: Console, written: Sequence[Any] = (), diff: bool = False,
                    error: DropcheckError | None = None, target: str = "") -> None:
    _out(console, json.dumps(fix_to_json_document(result, written, diff, error, target), indent=2))


def render_fix(result: FixResult, console: Console, diff: bool = False) -> None:
    """What `dropcheck fix` did: a header, the diff (if asked), one line per change, what could
    not be fixed, then the verification lines. Rich on a terminal, plain lines when piped."""
    rich = console.is_terminal
    shape = "x".join(str(d) for d in result.input_shape) if result.input_shape else "?"
    model = getattr(result.model, "fixed_from", None) or type(result.model).__name__
    if rich:
        console.print(Text.assemble((result.target, "bold"), "  ", (model, "cyan"), "  ", (f"input {shape}", "dim")))
    else:
        _out(console, f"{result.target}: {model}, input {shape}")
    if diff:
        _render_diff(fix_diff(result), console)
    lines: list[Text] = [_change_line(change, result.model) for change in result.changes]
    if not result.changes:
        lines.append(Text("no changes", style="dim") if result.unfixable else
                     Text("no changes: the model already follows Guidelines 1 and 2", style="green"))
    lines.extend(Text(f"cannot fix  {item}", style="bold red") for item in result.unfixable)
    for check in result.checks:
        if rich:
            lines.append(Text.assemble(("✓ " if check.ok else "✗ ", "bold green" if check.ok else "bold red"),
                                       (check.name, "bold"), f": {check.detail}"))
        else:
            lines.append(Text(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}"))
    for line in lines:
        if rich:  # soft_wrap: a long line wraps in the terminal, never cropped
            console.print(Text("  ") + line, soft_wrap=True, highlight=False)
        else:
            _out(console, "  " + line.plain)


def render_fix_outcome(console: Console, message: str, ok: bool) -> None:
    """The last line of `dropcheck fix`: what was written, or why nothing was."""
    if console.is_terminal:
        console.print(Text(message, style="bold green" if ok else "bold red"), soft_wrap=True)
    else:
        _out(console, message)


def fix_diff(result: FixResult) -> str:
    """Unified diff of the forward code (train and eval graphs) before and after the fix."""
    lines = difflib.unified_diff(result.code_before.splitlines(keepends=True),
                                 result.code_after.splitlines(keepends=True),
                                 fromfile=f"{result.target} (original)", tofile=f"{result.target} (fixed)")
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def _render_diff(text: str, console: Console) -> None:
    if not text:
        text = "(the forward code is unchanged)\n"
    if console.is_terminal:
        console.print(Syntax(text.rstrip("\n"), "diff", theme="ansi_dark", background_color="default",
                             word_wrap=True))
    else:
        _out(console, text.rstrip("\n"))


def change_text(change: Any, model: Any) -> str:
    """One change of `dropcheck fix` as plain text, as `render_fix` prints it when piped."""
    return _change_line(change, model).plain


def _change_line(change: Any, model: Any) -> Text:
    """`move  stages.0.0.drop  P3 -> P6 before stages.0.0.conv2  (DC001, p=0.2)` and its kin."""
    p = f"p={_format_p(change.p)}"
    why = f"{change.rule}, {p}" if change.rule else p
    if change.action == "move":
        where = " ".join(part for part in (change.to_position, change.to) if part)
        subject, detail = change.dropout, f"{change.from_position or '?'} -> {where}"
        if change.module != change.dropout:
            detail += f" as {change.module}"
    elif change.action == "remove":
        kept = change.module + (f" at {change.to_position}" if change.to_position else "")
        subject, detail, why = change.dropout, f"{change.from_position or '-'}, one dropout stays: {kept}", \
            change.rule or p
    elif change.action == "convert":
        subject, detail = change.dropout, f"-> nn.{_module_type(model, change.module)} {change.module} {change.to}"
    elif change.action == "add":
        where = " ".join(part for part in (change.to_position, change.to) if part)
        subject, detail = change.module, where
    else:
        subject, detail = change.dropout or change.module, change.to
    style = {"move": "yellow", "remove": "red", "convert": "cyan", "add": "green"}.get(change.action, "")
    return Text.assemble((change.action, f"bold {style}".strip()), "  ", (subject, "bold"), "  ", detail,
                         "  ", (f"({why})", "dim"))


def _module_type(model: Any, qualname: str) -> str:
    """The class name of the module `qualname` in the fixed model ("Dropout" if it cannot be told)."""
    try:
        return type(model.get_submodule(qualname)).__name__
    except (AttributeError, TypeError):
        return "Dropout"


# --- reproduce -----------------------------------------------------------------------------------

from typing import TYPE_CHECKING  # noqa: E402 - kept with the block that needs it

if TYPE_CHECKING:  # reproduce.py imports torch; this module never does
    from ..records import Reproduction


@contextmanager
def reproduce_progress(console: Console, total: int) -> Iterator[Callable[[str], None]]:
    """A progress bar over `total` batches; silent unless `console` is a terminal.
    Yields a function that advances it by one batch and shows what is running."""
    if not console.is_terminal:
        yield lambda what: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("starting", total=total)
        yield lambda what: bar.update(task, advance=1, description=what)


def reproduction_to_json_document(result: Reproduction, plot: Any = None) -> dict[str, Any]:
    """`{"schema": 1, "dropcheck_version", "reproduce": Reproduction.to_dict(), "plot": path or null}`."""
    return {"schema": SCHEMA, "dropcheck_version": __version__, "reproduce": result.to_dict(),
            "plot": str(plot) if plot is not None else None}


def render_reproduction(result: Reproduction, fmt: str, console: Console, plot: Any = None) -> None:
    """A reproduced figure: title, setup, measured values next to the closed forms, and whether
    the paper's ordering held. Rich table on a terminal, plain columns when piped."""
    if fmt == "json":
        _out(console, json.dumps(reproduction_to_json_document(result, plot), indent=2))
        return
    if fmt != "text":
        raise DropcheckError("usage", f"unknown format '{fmt}'", f"choose one of {', '.join(BASIC_FORMATS)}")
    headers = [header for _, header in result.columns]
    rows = [[_repro_cell(row[key]) for key, _ in result.columns] for row in result.rows]
    notes = [f"note: {note}" for note in result.notes]
    written = [f"wrote {plot}"] if plot is not None else []
    if not console.is_terminal:
        _out(console, "\n".join([result.title, result.setup, "", *_columns(headers, rows), "", *notes,
                                 reproduction_summary(result), *written]))
        return
    console.print(Text(result.title, style="bold"), soft_wrap=True)
    console.print(Text(result.setup, style="dim"), soft_wrap=True)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for header in headers:
        table.add_column(header, justify="right")
    for cells in rows:  # colour the holds cell; every other cell is a plain number
        table.add_row(*(Text(cell, style=_REPRO_HOLDS_STYLE.get(cell, "")) for cell in cells))
    console.print(table)
    for line in notes:
        console.print(Text(line, style="dim"), soft_wrap=True, highlight=False)
    style = "green" if result.held == result.tested else "bold red"
    console.print(Text(reproduction_summary(result), style=style), soft_wrap=True, highlight=False)
    for line in written:
        console.print(Text(line), soft_wrap=True, highlight=False)


def reproduction_summary(result: Reproduction) -> str:
    """'Δ(non-residual) < Δ(residual) < 1: holds in 25 of 25 rows; measured within 0.5% of the closed forms'."""
    return (f"{result.claim}: holds in {result.held} of {result.tested} rows; "
            f"measured within {100 * result.max_rel_error:.1f}% of the closed forms")


_REPRO_HOLDS_STYLE = {"yes": "green", "NO": "bold red", "-": "dim"}


def _repro_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
