"""`dropcheck cache clear`: delete the project's audit cache (.dropcheck_cache/)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cache import CACHE_DIR_NAME, cache_root, clear_cache
from ..records import DropcheckError
from .errors import fail
from .streams import stderr_console

app = typer.Typer(help=f"The audit cache ({CACHE_DIR_NAME}/ beside pyproject.toml).", no_args_is_help=True,
                  add_completion=False)


@app.command()
def clear(
    config_file: Annotated[Path | None, typer.Option(
        "--config", metavar="FILE", show_default=False,
        help="Clear the cache beside FILE instead of the nearest pyproject.toml's.")] = None,
) -> None:
    """Delete the audit cache of this project: the next audit runs every target afresh."""
    err = stderr_console()
    try:
        folder = cache_root(config_file) / CACHE_DIR_NAME
        removed = clear_cache(folder.parent)
    except DropcheckError as exc:
        fail(err, exc)
    if removed is None:
        err.print(f"no cache at {folder}", highlight=False, soft_wrap=True)
    else:
        err.print(f"removed {folder} ({removed} {'entry' if removed == 1 else 'entries'})", highlight=False,
                  soft_wrap=True)
