"""Where the commands write: the report to stdout (or atomically to --output), all else to stderr.

Logs, progress bars, errors, and whatever a model file prints while it loads go to stderr, so
`dropcheck audit --format json > out.json` stays one valid document.
"""
from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from ..analysis.catalog import load_rules
from ..atomic import write_atomic
from ..output.formats import render_audit
from ..records import Report


def stderr_console() -> Console:
    return Console(stderr=True)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Inside: a model file that prints while importing must not corrupt `--format json > out.json`."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def emit(reports: list[Report], fmt: str, output: Path | None, verbose: bool = False) -> None:
    """The audit or measure report in `fmt`: to stdout, or to the file `output` (atomically, no colour).
    `verbose`: every finding on its own line (else identical ones are folded)."""
    rules = load_rules() if fmt == "sarif" else None  # SARIF lists the catalogue
    if output is None:
        render_audit(reports, fmt, Console(), rules, verbose)
        return
    buffer = io.StringIO()
    render_audit(reports, fmt, Console(file=buffer, force_terminal=False, no_color=True, width=100), rules, verbose)
    write_atomic(output, buffer.getvalue())
