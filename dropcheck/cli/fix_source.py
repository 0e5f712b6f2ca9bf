"""`dropcheck fix` on the user's own code without -o: a checked patch to their source files.

`--diff` prints the patch and writes nothing; `--in-place` applies it (every file or none, each only
if unchanged since it was read) and names the files it changed; neither shows the plan, the checks
and the patch. A failed check: exit 2, nothing written, one line naming the check. With
`--checkpoint OLD --checkpoint-out NEW`, key-renaming edits are allowed: the key mapping is shown
and --in-place writes the converted checkpoint to NEW (before the source files).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from ..output.json_documents import render_fix_json
from ..output.progress import step_progress
from ..output.text.fix import (render_fix, render_fix_outcome, render_source_diff, render_source_fix,
                               source_fix_lines)
from ..records import FixResult
from .errors import EXIT_CLEAN, EXIT_ERROR, EXIT_FINDINGS
from .streams import stderr_console, stdout_to_stderr

Guard = Callable[..., Any]


def fix_in_source(spec: str, kwargs: dict[str, Any], shape: tuple[int, ...] | None, p: float | None,
                  add: float | None, in_place: bool, diff_only: bool, fmt: str, verbose: bool, guard: Guard,
                  checkpoint: tuple[Path, Path] | None = None, remove: bool = False) -> None:
    err = stderr_console()
    result: FixResult = guard(err, spec, fmt, verbose,
                              lambda: _fix(spec, kwargs, shape, p, add, err, checkpoint, remove))
    source = result.source
    assert source is not None
    failed = [c for c in result.checks if not c.ok]
    written: list[Any] = []
    if in_place and not failed and source.checkpoint is not None and checkpoint is not None:
        from ..fixer.checkpoint import write_checkpoint  # first: a failure here leaves the source as it was
        from ..fixer.source_fix import check_unchanged  # and a source file changed meanwhile: neither is written

        guard(err, spec, fmt, verbose, lambda: check_unchanged(list(source.patches)), result=result)
        written.append(guard(err, spec, fmt, verbose, lambda: write_checkpoint(
            source.checkpoint, source.key_map, checkpoint[1]), result=result))
        source.checkpoint_written = True
    if in_place and not failed and source.patches:
        from ..fixer.source_fix import write_source_patches

        written += guard(err, spec, fmt, verbose, lambda: write_source_patches(list(source.patches)),
                         result=result)
    console = Console()
    if fmt == "json":
        render_fix_json(result, console, written, False)
    elif diff_only:
        render_source_diff(result.source.diff, console)
        for item in result.source.not_in_source:
            err.print(f"{spec}: not in source: {item.site}: {item.reason} ({item.hint})", soft_wrap=True,
                      highlight=False, markup=False)
        for line in source_fix_lines(result.source):
            err.print(f"{spec}: {line.strip()}", soft_wrap=True, highlight=False, markup=False)
        for line in result.unfixable:
            err.print(f"{spec}: cannot fix: {line}", soft_wrap=True, highlight=False, markup=False)
    else:
        render_fix(result, console)
        render_source_fix(result, console, show_diff=not in_place)
    if failed:
        check = failed[0]
        err.print(Text(f"nothing written: check failed: {check.name}: {check.detail}", style="bold red"),
                  soft_wrap=True, highlight=False)
        raise typer.Exit(EXIT_ERROR)
    if fmt == "text" and not diff_only:
        if written:
            message = "\n".join(f"{'wrote' if path == written[0] and source.checkpoint_written else 'changed'} "
                                f"{path}" for path in written)
        elif not result.source.patches:
            message = "nothing to change in your source files"
        else:
            message = "nothing written (pass --in-place to apply the patch" + (
                " and write the converted checkpoint)" if source.checkpoint is not None else ")")
        render_fix_outcome(console, message, True)
    left = result.unfixable or result.source.not_in_source
    raise typer.Exit(EXIT_FINDINGS if left else EXIT_CLEAN)


def _fix(spec: str, kwargs: dict[str, Any], shape: tuple[int, ...] | None, p: float | None, add: float | None,
         err: Console, checkpoint: tuple[Path, Path] | None, remove: bool = False) -> FixResult:
    from ..fixer.pipeline import fix_source  # torch and the analysis load here, never for --help

    old, new = checkpoint if checkpoint is not None else (None, None)
    with step_progress(err, f"fixing {spec}") as step, stdout_to_stderr():
        return fix_source(spec, kwargs, shape, p, add, progress=lambda what: step(f"{what} {spec}"),
                          checkpoint=old, checkpoint_out=new, remove=remove)
