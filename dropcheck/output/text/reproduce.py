"""`dropcheck reproduce` as text: a paper figure's title and setup, measured values next to the
closed forms, and whether the paper's ordering held."""
from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ...records import Reproduction
from ..console import columns, write_plain

_HOLDS_STYLE = {"yes": "green", "NO": "bold red", "-": "dim"}


def render_reproduction_text(result: Reproduction, console: Console, plot: Any = None) -> None:
    """Rich table on a terminal, plain columns when piped; `plot` is the figure written, if any."""
    headers = [header for _, header in result.columns]
    rows = [[_cell(row[key]) for key, _ in result.columns] for row in result.rows]
    notes = [f"note: {note}" for note in result.notes]
    written = [f"wrote {plot}"] if plot is not None else []
    if not console.is_terminal:
        write_plain(console, "\n".join([result.title, result.setup, "", *columns(headers, rows), "", *notes,
                                        reproduction_summary(result), *written]))
        return
    console.print(Text(result.title, style="bold"), soft_wrap=True)
    console.print(Text(result.setup, style="dim"), soft_wrap=True)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for header in headers:
        table.add_column(header, justify="right")
    for cells in rows:  # colour the holds cell; every other cell is a plain number
        table.add_row(*(Text(cell, style=_HOLDS_STYLE.get(cell, "")) for cell in cells))
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


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
