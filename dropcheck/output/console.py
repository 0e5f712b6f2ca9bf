"""Plain text to a rich Console: written byte for byte, and rows aligned in columns.

Piped output (CI logs, pre-commit, `--format json > out.json`) must not be wrapped, cropped
or highlighted by rich, so every format writes its plain text through `write_plain`.
"""
from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console


def write_plain(console: Console, text: str) -> None:
    """Write `text` and a newline; rich neither wraps it nor reads markup in it."""
    # console.out neither wraps nor reads markup: JSON and plain lines go out byte for byte
    console.out(text, highlight=False)


def columns(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers) - 1)]

    def line(cells: Sequence[str]) -> str:
        padded = [str(cell).ljust(width) for cell, width in zip(cells, widths)]
        return "  ".join([*padded, str(cells[-1])]).rstrip()

    return [line(headers), *(line(row) for row in rows)]
