"""The audit as text: a site table, the findings and notes per target, then the summary line.

Piped, findings take ruff's `file:line: CODE [severity] site: message` form so editors and
problem matchers can jump to them. A measured audit (`dropcheck measure`) adds a Δ column and
each target's Δ table (text.measure). Identical findings (one rule, one source line: a block class
instantiated eight times) print once as `CODE [severity] x8 first ... last`, and dropouts that differ
only in their id share a table row (four or more); `verbose` prints every one on its own line (output.grouping).
"""
from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from ...records import Finding, Report, Severity, Site
from ..console import columns, write_plain
from ..grouping import FindingGroup, count_mark, group_findings
from ..summary import error_line, plural, severity_counts, summary_line
from .measure import delta_by_site, render_measurements

SEVERITY_STYLE = {Severity.ERROR: "red", Severity.WARNING: "yellow", Severity.INFO: "blue"}
_SITE_COLUMNS = ("id", "op", "p", "site", "paper", "verdict", "why")
_WHY_MIN_WIDTH = 100  # terminal columns below which the site table leaves out "why"
_FOLD_ROWS = 4  # this many alike dropouts (one source line) share a row of the site table
_MEASURED_ROWS = 40  # a longer Δ table shows its lowest 25 rows (all of them in --format json)


def render_audit_text(reports: Sequence[Report], console: Console, verbose: bool = False) -> None:
    """Every target's audit (and its Δ table when measured), then the summary line. Identical
    findings and sites are folded into one line each unless `verbose`."""
    if any(r.measurements is not None for r in reports):
        _render_measured(reports, console, verbose)
    elif console.is_terminal:
        _render_rich(reports, console, verbose)
    else:
        write_plain(console, "\n".join(_plain_lines(reports, verbose)))


# --- shared by both faces ------------------------------------------------------------------------

def site_findings(site: Site, findings: Sequence[Finding]) -> list[Finding]:
    """The findings on `site`, in the order the rules produced them."""
    return [f for f in findings if f.dropout == site.id]


def verdict_word(site: Site, on_site: Sequence[Finding]) -> str:
    """A dropout's verdict in a table cell: its findings' codes ('DC001,DC004'), 'ok' or 'inactive'."""
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
        count = plural(len(report.stochastic_depth), "stochastic-depth site")
        notes.append(f"{count} ({ops}): reported, not dropout in the paper's sense")
    return notes


def _groups(report: Report, verbose: bool) -> list[FindingGroup]:
    """The findings folded (or, verbose, one group each)."""
    if verbose:
        return [FindingGroup((finding,)) for finding in report.findings]
    return group_findings(report.findings)


def _group_head(group: FindingGroup) -> str:
    """'layer1.0.drop' or 'x8 layer1.0.drop ... layer4.1.drop'."""
    return count_mark(group.count) + group.short_ids() if group.count > 1 else group.first.dropout


def _group_message(group: FindingGroup) -> str:
    """The message; for a group whose messages differ (each names its own BatchNorm), the first's, said so."""
    if group.count == 1 or group.same_message:
        return group.first.message
    return f"e.g. {group.first.dropout}: {group.first.message}"


def _site_rows(report: Report, deltas: dict[str, float] | None, verbose: bool) -> list[tuple[list[Site], tuple[str, ...]]]:
    """The site table's rows, each with its sites: four or more dropouts alike in all but id (same op,
    p, site, position, verdict and Δ, called on one source line) share a row unless `verbose`."""
    rows: dict[object, tuple[list[Site], tuple[str, ...]]] = {}
    for index, site in enumerate(report.dropouts):
        row = _site_row(site, site_findings(site, report.findings), deltas)
        key: object = (row[1:-1], site.source) if site.source is not None and not verbose else index
        if key in rows:
            rows[key][0].append(site)
        else:
            rows[key] = ([site], row)
    out: list[tuple[list[Site], tuple[str, ...]]] = []
    for sites, row in rows.values():
        if len(sites) >= _FOLD_ROWS:
            out.append((sites, _folded_row(sites, row)))
        else:  # a few alike rows read better one by one
            out.extend(([site], _site_row(site, site_findings(site, report.findings), deltas)) for site in sites)
    return out


def _folded_row(sites: Sequence[Site], row: tuple[str, ...]) -> tuple[str, ...]:
    """The first site's row, its id cell 'first ... last (xN)'; a why that names the site's own
    BatchNorm is the first's, said so."""
    why = row[-1] if len({s.why for s in sites}) == 1 else f"e.g. {row[-1]}"
    return (f"{sites[0].id} ... {sites[-1].id} (x{len(sites)})", *row[1:-1], why)


def _location(finding: Finding, report: Report) -> str:
    return str(finding.source) if finding.source else report.target


def _worst_style(reports: Sequence[Report]) -> str:
    counts = severity_counts(reports)
    if counts[Severity.ERROR] or any(r.status == "error" for r in reports):
        return "bold red"
    return "bold yellow" if counts[Severity.WARNING] else "bold green"


def _format_p(p: float) -> str:
    return f"{p:g}"


def _deltas(report: Report) -> dict[str, float] | None:
    """Measured Δ per dropout (lowest at the BatchNorms it reaches), when the report was measured."""
    return None if report.measurements is None else delta_by_site(report)


def _site_headers(deltas: dict[str, float] | None) -> tuple[str, ...]:
    return _SITE_COLUMNS if deltas is None else (*_SITE_COLUMNS[:-1], "Δ", _SITE_COLUMNS[-1])


def _render_measured(reports: Sequence[Report], console: Console, verbose: bool) -> None:
    """Each target's audit followed by its Δ table, then the summary."""
    for index, rep in enumerate(reports):
        if index:
            console.print()
        if console.is_terminal:
            console.print(rich_report(rep, console.width, verbose))
        else:
            write_plain(console, "\n".join(_plain_report(rep, verbose)))
        if rep.status == "ok":
            render_measurements(rep, console, limit=None if len(rep.measurements or []) <= _MEASURED_ROWS else 25)
    console.print()
    console.print(Text(summary_line(reports), style=_worst_style(reports) if console.is_terminal else ""))


# --- plain text (piped) --------------------------------------------------------------------------

def _plain_lines(reports: Sequence[Report], verbose: bool) -> list[str]:
    lines: list[str] = []
    for index, report in enumerate(reports):
        if index:
            lines.append("")
        lines.extend(_plain_report(report, verbose))
    # one failed target already said everything in its one line
    if not (len(reports) == 1 and reports[0].status == "error"):
        lines.extend(["", summary_line(reports)] if lines else [summary_line(reports)])
    return lines


def _plain_report(report: Report, verbose: bool = False) -> list[str]:
    if report.status == "error":
        return [error_line(report)]
    lines = [f"{report.target}: " + ", ".join(_header_parts(report))]
    if report.dropouts:
        deltas = _deltas(report)
        rows = [row for _, row in _site_rows(report, deltas, verbose)]
        lines.extend("  " + row for row in columns(_site_headers(deltas), rows))
    else:
        lines.append("  no dropout sites")
    for group in _groups(report, verbose):
        finding = group.first
        lines.append(f"{_location(finding, report)}: {finding.rule} [{finding.severity.value}] "
                     f"{_group_head(group)}: {_group_message(group)}")
        if group.fix:
            lines.append(f"    fix: {group.fix}")
    lines.extend(f"note: {note}" for note in _notes(report))
    return lines


def _site_row(site: Site, on_site: Sequence[Finding], deltas: dict[str, float] | None = None) -> tuple[str, ...]:
    delta = () if deltas is None else (f"{deltas[site.id]:.3f}" if site.id in deltas else "-",)
    return (site.id, site.op, _format_p(site.p), site.site.value, site.paper_position or "-",
            verdict_word(site, on_site), *delta, site.why)


# --- rich (terminal) -----------------------------------------------------------------------------

def _render_rich(reports: Sequence[Report], console: Console, verbose: bool) -> None:
    for index, report in enumerate(reports):
        if index:
            console.print()
        console.print(rich_report(report, console.width, verbose))
    console.print()
    console.print(Text(summary_line(reports), style=_worst_style(reports)))


def rich_report(report: Report, width: int, verbose: bool = False) -> RenderableType:
    """One target's audit as a rich renderable for a terminal `width` columns wide (also the
    notebook's rich view of a Report)."""
    if report.status == "error":
        error = report.error
        parts: list[RenderableType] = [Text(f"{report.target}: error ({error.kind if error else 'unknown'}): "
                                            f"{error.message if error else 'no error recorded'}", style="bold red")]
        if error and error.hint:
            parts.append(Text.assemble(("hint: ", "bold"), error.hint))
        return Group(*parts)
    header = Text.assemble((report.target, "bold"), "  ", (report.model or "?", "cyan"), "  ",
                           (" · ".join(_header_parts(report)[1:]), "dim"))
    parts = [header, _rich_sites(report, width, verbose) if report.dropouts else Text("no dropout sites", style="dim")]
    if report.findings:
        parts.append(Text())
        parts.extend(_rich_finding(group, report) for group in _groups(report, verbose))
    notes = _notes(report)
    if notes:
        parts.append(Text())
        parts.extend(Text.assemble(("note: ", "bold cyan"), note) for note in notes)
    return Group(*parts)


def _rich_sites(report: Report, console_width: int, verbose: bool) -> Table:
    # "why" squeezed into a narrow terminal wraps into unreadable slivers; there the findings
    # below still say why each flagged site is flagged, and plain/JSON output always has it
    deltas = _deltas(report)
    base = _site_headers(deltas)
    headers = base if console_width >= _WHY_MIN_WIDTH else base[:-1]
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for header in headers:
        table.add_column(header, justify="right" if header in ("p", "Δ") else "left", overflow="fold")
    for sites, row in _site_rows(report, deltas, verbose):
        site = sites[0]
        on_site = site_findings(site, report.findings)
        cells: list[RenderableType] = [row[0], site.op, _format_p(site.p), site.site.value,
                                       site.paper_position or "", _rich_verdict(site, on_site)]
        if deltas is not None:
            cells.append(f"{deltas[site.id]:.3f}" if site.id in deltas else "-")
        table.add_row(*cells, *([Text(row[-1], style="dim")] if len(headers) > len(cells) else []))
    return table


def _rich_verdict(site: Site, on_site: Sequence[Finding]) -> Text:
    if not on_site:
        return Text("ok", style="green") if site.active else Text("inactive", style="dim")
    verdict = Text()
    for i, finding in enumerate(on_site):
        if i:
            verdict.append(" ")
        verdict.append(finding.rule, style=SEVERITY_STYLE[finding.severity])
    return verdict


def _rich_finding(group: FindingGroup, report: Report) -> RenderableType:
    finding = group.first
    style = SEVERITY_STYLE[finding.severity]
    head = Text.assemble((finding.rule, f"bold {style}"), " ", (finding.severity.value.ljust(7), style), "  ",
                         (_group_head(group), "bold"), "  ", (_location(finding, report), "dim"))
    lines: list[RenderableType] = [head, Padding(Text(_group_message(group)), (0, 0, 0, 2))]
    if group.fix:
        lines.append(Padding(Text.assemble(("fix: ", "green"), group.fix), (0, 0, 0, 2)))
    return Group(*lines)
