"""`dropcheck rules` and `dropcheck explain`: the rule catalogue. Neither imports torch."""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console

from ..analysis import catalog
from ..output.formats import render_rules
from ..output.text.rules import render_explain
from ..records import DropcheckError
from .errors import fail
from .options import BasicFormatOption
from .streams import stderr_console


def rules(fmt: BasicFormatOption = "text") -> None:
    """List every rule: code, name, severity and summary."""
    _show(lambda console: render_rules(catalog.load_rules(), fmt, console))


def explain(
    rule: Annotated[str, typer.Argument(metavar="RULE", help="A rule code (DC001) or name.")],
) -> None:
    """Show a rule's page: what it flags, why it hurts, examples and the fix."""
    _show(lambda console: render_explain(catalog.get_rule(rule), console))


def _show(action: Callable[[Console], None]) -> None:
    try:
        action(Console())
    except DropcheckError as exc:
        fail(stderr_console(), exc)
