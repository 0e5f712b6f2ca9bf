"""Errors, for every command: one line on stderr with a hint, exit 2; --verbose adds the traceback.

A DropcheckError (bad input, a model that cannot load or trace) is the user's to fix; any other
exception is a bug of ours (or of the model's forward) and becomes an `internal` error built by
the analysis stage's `internal_error`, its cause kept for --verbose.
"""
from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator
from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

from ..analysis.pipeline import internal_error
from ..records import DropcheckError, Report

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


def fail(err: Console, exc: DropcheckError) -> NoReturn:
    """One line on stderr and exit 2: 'dropcheck: error: message (hint: ...)'."""
    line = Text.assemble(("dropcheck: error: ", "bold red"), exc.one_line())
    err.print(line, soft_wrap=True, highlight=False)
    raise typer.Exit(EXIT_ERROR)


def as_error(exc: Exception, spec: str, doing: str) -> DropcheckError:
    """`exc` as the one error type the commands report; anything unexpected is an internal error."""
    return exc if isinstance(exc, DropcheckError) else internal_error(spec, exc, doing)


@contextlib.contextmanager
def one_line_errors(err: Console, spec: str, doing: str, verbose: bool) -> Iterator[None]:
    """Inside: any error ends the command with one line and exit 2 (the traceback first, with --verbose).
    `doing` names the work for an internal error: 'internal error while {doing} {spec}: ...'."""
    try:
        yield
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug of ours must still end in one line, not a traceback
        error = as_error(exc, spec, doing)
        if verbose:
            print_traceback(spec, error)
        fail(err, error)


def print_traceback(spec: str, error: DropcheckError) -> None:
    """The traceback of what went wrong inside (the cause), headed `traceback for SPEC:`."""
    exc: BaseException = error.__cause__ or error
    sys.stderr.write(f"traceback for {spec}:\n")
    sys.stderr.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    sys.stderr.flush()


def print_tracebacks(reports: list[Report]) -> None:
    """--verbose for the commands that take several targets: a traceback per failed target."""
    for rep in reports:
        if rep.status == "error" and rep.error is not None:
            print_traceback(rep.target, rep.error)
