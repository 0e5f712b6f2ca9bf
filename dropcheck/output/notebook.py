"""Records in a notebook: an HTML table (`_repr_html_`) and a rich renderable for each record a user holds.

Importing this module registers the renderers with `records.display` (records may not import
output, so they ask the registry); `import dropcheck` imports it. Each record becomes a `View`: a
title, tables and notes, drawn once as HTML (every string escaped) and once for rich, so the two
never disagree. Every dropout gets its row here (no folding: a notebook scrolls). Nothing here
imports rich until a record is drawn, so `import dropcheck` stays light.

  Report        dropouts with their verdicts (and lowest Δ when measured), findings, Δ per BatchNorm
  FixResult     changes (from -> to, why) and the verification checks
  Measurement   its one row of the Δ table
  Reproduction  the figure's rows, measured beside the closed forms
  Comparison    accuracy per variant with the paired difference and verdict, and per seed
"""
from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..records import Comparison, FixResult, Measurement, Report, Reproduction
from ..records.display import register
from .locations import finding_location


@dataclass(frozen=True)
class Section:
    caption: str
    headers: tuple[str, ...]
    rows: list[tuple[str, ...]]


@dataclass
class View:
    title: str
    sections: list[Section] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


# --- one View per record ---------------------------------------------------------------------------

def report_view(report: Report) -> View:
    # the text modules import rich: loaded here, so `import dropcheck` stays light
    from .text.audit import site_findings, verdict_word
    from .text.measure import delta_by_site

    view = View(report.headline())
    if report.status == "error":
        if report.error is not None and report.error.hint:
            view.notes.append(f"hint: {report.error.hint}")
        return view
    deltas = delta_by_site(report) if report.measurements is not None else None
    headers = ("id", "op", "p", "site", "paper position", "findings") + (("lowest Δ",) if deltas is not None else ())
    rows = []
    for site in report.dropouts:
        row = (site.id, site.op, f"{site.p:g}", site.site.value, site.paper_position or "-",
               verdict_word(site, site_findings(site, report.findings)))
        rows.append(row + ((_number(deltas.get(site.id)),) if deltas is not None else ()))
    view.sections.append(Section("dropouts", headers, rows))
    if report.findings:
        view.sections.append(Section("findings", ("rule", "severity", "dropout", "location", "message"), [
            (f.rule, f.severity.value, f.dropout, str(finding_location(f, report) or "-"), f.message)
            for f in report.findings]))
    if report.measurements:
        view.sections.append(Section("Δ = Var_test / Var_train per BatchNorm and residual merge",
                                     _MEASUREMENT_HEADERS, [_measurement_row(m) for m in report.measurements]))
    view.notes.extend(report.notes)
    return view


_MEASUREMENT_HEADERS = ("module", "kind", "Δ mean", "Δ min", "reached by", "flagged")


def _measurement_row(m: Measurement) -> tuple[str, ...]:
    return (m.module or m.node, m.kind, f"{m.delta_mean:.4f}", f"{m.delta_min:.4f}",
            ", ".join(m.reached_by) or "-", ", ".join(m.flagged_by) if m.flagged else "")


def measurement_view(m: Measurement) -> View:
    return View(m.headline(), [Section("", _MEASUREMENT_HEADERS, [_measurement_row(m)])])


def fix_view(result: FixResult) -> View:
    view = View(result.headline())
    changes = [(change.action, *result.describe_change(change)) for change in result.changes]
    view.sections.append(Section("changes", ("action", "dropout", "from -> to", "why"), changes))
    view.sections.append(Section("verification", ("check", "ok", "detail"),
                                 [(c.name, "yes" if c.ok else "NO", c.detail) for c in result.checks]))
    view.notes.extend(f"unfixable: {why}" for why in result.unfixable)
    return view


def reproduction_view(result: Reproduction) -> View:
    columns = list(result.columns) + ([] if any(key == "holds" for key, _ in result.columns) else [("holds", "holds")])
    rows = [tuple(_number(row.get(key)) for key, _ in columns) for row in result.rows]
    view = View(result.headline(), [Section(result.title, tuple(header for _, header in columns), rows)])
    view.notes.extend([f"claim: {result.claim}", f"setup: {result.setup}", *result.notes])
    return view


def comparison_view(comparison: Comparison) -> View:
    view = View(comparison.headline())
    view.sections.append(Section("accuracy over seeds (mean ± std) and the paired difference",
                                 ("variant", "final acc. (%)", "best acc. (%)",
                                  f"vs {comparison.baseline} (95% CI)", "verdict"), comparison.rows()))
    names = comparison.variant_names
    per_seed = []
    for seed in comparison.seeds:
        runs = [comparison.run(name, seed) for name in names]
        per_seed.append((str(seed), *(f"{r.final_acc:.2f}" if r is not None else "-" for r in runs)))
    view.sections.append(Section("final test accuracy (%) per seed", ("seed", *names), per_seed))
    view.notes.extend(comparison.notes)
    return view


# --- drawing -----------------------------------------------------------------------------------------

def to_html(view: View) -> str:
    """The view as an HTML fragment: a bold title, one <table> per section, the notes as a list."""
    e = html.escape
    parts = ['<div class="dropcheck">', f"<p><strong>{e(view.title)}</strong></p>"]
    for section in view.sections:
        parts.append("<table>")
        if section.caption:
            parts.append(f'<caption style="text-align:left">{e(section.caption)}</caption>')
        parts.append("<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in section.headers) + "</tr></thead>")
        parts.append("<tbody>" + "".join("<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>"
                                         for row in section.rows) + "</tbody>")
        parts.append("</table>")
    if view.notes:
        parts.append("<ul>" + "".join(f"<li>{e(note)}</li>" for note in view.notes) + "</ul>")
    parts.append("</div>")
    return "\n".join(parts)


def to_rich(view: View) -> Any:
    """The view as a rich Group: the title, a Table per section, the notes (the console fits the width)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = [Text(view.title, style="bold")]
    for section in view.sections:
        table = Table(*section.headers, title=section.caption or None, title_justify="left", box=box.SIMPLE_HEAD,
                      min_width=len(section.caption) + 2)  # a caption wider than its table stays one line
        for row in section.rows:
            table.add_row(*(Text(cell) for cell in row))  # Text: markup in an id is not read
        parts.append(table)
    parts.extend(Text("note: " + note, style="dim") for note in view.notes)
    return Group(*parts)


VIEWS: dict[type, Callable[[Any], View]] = {Report: report_view, FixResult: fix_view, Measurement: measurement_view,
                                            Reproduction: reproduction_view, Comparison: comparison_view}


def _register(cls: type, make_view: Callable[[Any], View]) -> None:
    register(cls, "html", lambda obj: to_html(make_view(obj)))
    register(cls, "rich", lambda obj, width=None: to_rich(make_view(obj)))  # the console fits the width


for _cls, _make_view in VIEWS.items():  # once, on import: `import dropcheck` does it
    _register(_cls, _make_view)
