"""The `dropcheck` command: the typer app, its commands in the order --help lists them, and main()."""
from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from ..version import __version__
from . import audit, cache, fix, measure, recalibrate, reproduce, rules, train_compare
from .errors import EXIT_ERROR

app = typer.Typer(
    name="dropcheck",
    help="Audit PyTorch models for dropout placed where it hurts BatchNorm (Kim et al.).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command()(audit.audit)
app.command()(fix.fix)
app.command()(rules.rules)
app.command()(rules.explain)
app.command("reproduce")(reproduce.reproduce_command)
app.command()(measure.measure)
app.command()(recalibrate.recalibrate)
app.command("train-compare")(train_compare.train_compare)
app.add_typer(cache.app, name="cache")


def main() -> None:
    """Console-script entry point."""
    try:
        app(prog_name="dropcheck")
    except BrokenPipeError:
        # `dropcheck rules | head`: the reader left; exit quietly instead of a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_ERROR)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"dropcheck {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Audit PyTorch models for dropout placed where it hurts BatchNorm (Kim et al.)."""
