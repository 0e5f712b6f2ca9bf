"""Ctrl-C, for every command: one line on stderr and exit 130, never a traceback."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import typer
from rich.console import Console
from rich.text import Text

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


@contextlib.contextmanager
def exit_on_interrupt(err: Console, kept: Callable[[], str] | None = None, quiet: bool = False) -> Iterator[None]:
    """Inside: Ctrl-C prints `dropcheck: interrupted` and what `kept()` adds (what was saved and how
    to go on), then exits 130. `quiet`: say nothing (a torchrun worker: rank 0 speaks for all)."""
    try:
        yield
    except KeyboardInterrupt:
        if not quiet:
            note = kept() if kept is not None else ""
            err.print(Text(f"dropcheck: interrupted{note}", style="bold red"), soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
