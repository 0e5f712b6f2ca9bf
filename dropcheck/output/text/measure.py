"""Measurements as text: each target's Δ table, the Δ column of the audit table, and recalibration.

Δ = Var_test / Var_train (paper, Definition 2) at every BatchNorm input and residual merge.
"""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ...records import Measurement, Report


def delta_by_site(report: Report) -> dict[str, float]:
    """For each dropout, the lowest Δ along its DC001 path: at every BatchNorm it reaches before its
    next residual merge (the audit table's Δ column); dropouts that reach none have no entry."""
    return {site: low for site, (low, _, _) in lowest_on_paths(report).items()}


def lowest_on_paths(report: Report) -> dict[str, tuple[float, str, int]]:
    """DC001 dropout -> (lowest Δ mean on its path, the BatchNorm where it is, how many BatchNorms)."""
    paths: dict[str, list[Measurement]] = {}
    for m in report.measurements or []:
        for site in m.flagged_by:
            paths.setdefault(site, []).append(m)
    if not paths:  # measurements from before flagged_by: the first BatchNorm on each path only
        at = {m.module or m.node: m for m in report.measurements or [] if m.kind == "batchnorm"}
        paths = {s.id: [at[bn] for bn in s.reaches if bn in at] for s in report.dropouts}
    out = {}
    for site, ms in paths.items():
        if ms:
            low = min(ms, key=lambda m: m.delta_mean)
            out[site] = (low.delta_mean, low.module or low.node, len(ms))
    return out


def render_measurements(report: Report, console: Console, limit: int | None = None) -> None:
    """Δ per BatchNorm and merge, in graph order; with `limit`, the lowest ones first."""
    rows = list(report.measurements or [])
    if not rows:
        console.print("  no BatchNorm or residual merge to measure", highlight=False)
        return
    shown = sorted(rows, key=lambda m: m.delta_mean)[:limit] if limit else rows
    settings = report.measure_settings or {}
    console.print(f"  Δ = Var_test / Var_train over {settings.get('batches')} batch(es) of "
                  f"{settings.get('batch_size')} ({settings.get('data')}) on {settings.get('device')}"
                  + ("" if settings.get("calibrated", True) else ", BatchNorm statistics as loaded"),
                  highlight=False, soft_wrap=True)
    headers = ("point", "kind", "Δ mean", "Δ min", "max(r,1/r)", "flagged", "reached by")
    table_rows = [_row(m) for m in shown]
    if console.is_terminal:
        table = Table(*headers, box=None, pad_edge=False, header_style="bold")
        for m, row in zip(shown, table_rows):
            style = "red" if m.flagged else ("yellow" if m.delta_mean < 1 else "green")
            table.add_row(*row[:2], Text(row[2], style=style), *row[3:])
        console.print(table)
    else:
        widths = [max(len(h), *(len(r[i]) for r in table_rows)) for i, h in enumerate(headers)]
        for line in [headers, *table_rows]:
            console.print("  " + "  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip(),
                          highlight=False, soft_wrap=True)
    if limit and len(rows) > limit:
        console.print(f"  ... {len(rows) - limit} more (all of them in --format json)", highlight=False)
    for site, (low, where, count) in lowest_on_paths(report).items():
        console.print(f"  DC001 path of {site}: lowest Δ {low:.4f} at {where} ({count} BatchNorm(s) before "
                      "its next residual merge)", highlight=False, soft_wrap=True)


def _row(m: Measurement) -> tuple[str, ...]:
    reached = ", ".join(m.reached_by[:3]) + (f" (+{len(m.reached_by) - 3})" if len(m.reached_by) > 3 else "")
    return (m.module or m.node, m.kind, f"{m.delta_mean:.4f}", f"{m.delta_min:.4f}", f"{m.symmetric_mean:.4f}",
            "DC001" if m.flagged else "", reached or "-")


def render_recalibration_text(result: dict[str, Any], console: Console) -> None:
    """Before/after per BatchNorm: Var(test-time input) / running_var (1 is consistent)."""
    before, after = result["consistency_before"], result["consistency_after"]
    console.print(f"{result['target']}: BatchNorm statistics re-estimated with dropout off on {result['batches']} "
                  f"batch(es) of {result['batch_size']} ({result['data']}), {result['device']}",
                  highlight=False, soft_wrap=True)
    shifted = [name for name, value in before.items() if abs(value - 1) > 0.01]
    mean = lambda values: sum(values) / len(values) if values else float("nan")  # noqa: E731
    console.print(f"  Var(test input) / running_var, mean over {len(before)} BatchNorm(s): "
                  f"{mean(list(before.values())):.4f} before -> {mean(list(after.values())):.4f} after "
                  f"(1 = consistent); {len(shifted)} were off by more than 1%", highlight=False, soft_wrap=True)
    for name in sorted(before, key=lambda n: before[n])[:8]:
        console.print(f"    {name:40s} {before[name]:.4f} -> {after.get(name, float('nan')):.4f}", highlight=False)
    if result["accuracy_before"] is not None and result["accuracy_after"] is not None:
        console.print(f"  accuracy: {100 * result['accuracy_before']:.2f}% before -> "
                      f"{100 * result['accuracy_after']:.2f}% after (held-out batches)", highlight=False)
    console.print(f"wrote {result['written']}", highlight=False)
