"""`dropcheck fix`: rewrite one target to follow Guidelines 1 and 2, verify it, write it out."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from ..config import check_output
from ..output.formats import BASIC_FORMATS
from ..output.json_documents import render_fix_json
from ..output.progress import step_progress
from ..output.text.fix import render_fix, render_fix_outcome
from ..records import DropcheckError, FixResult
from .errors import EXIT_CLEAN, EXIT_ERROR, EXIT_FINDINGS, as_error, fail, print_traceback
from .fix_checkpoint import check_checkpoint_options
from .interrupts import exit_on_interrupt
from .options import (NO_TARGET_HINT, InputShapeOption, ModelArgsOption, TargetsArg, check_format, force_option,
                      format_option, model_inputs, verbose_option)
from .streams import stderr_console, stdout_to_stderr


def fix(
    targets: TargetsArg = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="OUT", show_default=False,
        help="Write the fixed model here: a directory (code, weights, changes.json), or a .pt file.")] = None,
    model_arg: ModelArgsOption = None,
    input_shape: InputShapeOption = None,
    p: Annotated[float | None, typer.Option(
        "--p", metavar="P", show_default=False,
        help="Dropout probability of every fixed dropout (default: each keeps its own).")] = None,
    add: Annotated[float | None, typer.Option(
        "--add", metavar="P", show_default=False,
        help="Insert guideline dropout with probability P into every branch and the head that have none.")] = None,
    diff: Annotated[bool, typer.Option("--diff", help=(
        "Your own code (a file or module target) without -o: print the patch to your source files and write "
        "nothing. With -o or a library target: each change with the forward lines it touches (with --verbose: "
        "the whole generated code's diff)."))] = False,
    in_place: Annotated[bool, typer.Option("--in-place", help=(
        "Apply the patch to your own source files (a file or module target), after checking it."))] = False,
    remove: Annotated[bool, typer.Option("--remove", help=(
        "Remove dropout that reaches a BatchNorm with no residual merge downstream (MLPs, U-Nets, plain "
        "CNNs) instead of moving it after the last BatchNorm."))] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Fix and verify, but write nothing.")] = False,
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", metavar="OLD", show_default=False, help=(
            "Your checkpoint of this model: lets the source patch move a dropout within an nn.Sequential past "
            "layers with weights, which renames their state_dict keys; the key mapping is shown, and with "
            "--in-place the converted checkpoint is written to --checkpoint-out."))] = None,
    checkpoint_out: Annotated[Path | None, typer.Option(
        "--checkpoint-out", metavar="NEW", show_default=False,
        help="Where the converted checkpoint goes (with --checkpoint; never over OLD).")] = None,
    force: Annotated[bool, force_option()] = False,
    fmt: Annotated[str, format_option("text or json.")] = "text",
    verbose: Annotated[bool, verbose_option("Show the traceback of a failure; with --diff, the whole "
                                            "generated code's diff.")] = False,
) -> None:
    """Rewrite TARGET to follow Guidelines 1 and 2, verify nothing else changed, and write it to OUT."""
    err = stderr_console()
    try:
        spec = _check_fix_options(targets, output, dry_run, fmt, p, add, in_place)
        in_source = _is_user_code(spec) and output is None and (in_place or diff or not dry_run)
        check_checkpoint_options(checkpoint, checkpoint_out, in_source, force)
        kwargs, shape = model_inputs(model_arg, input_shape)
    except DropcheckError as exc:
        fail(err, exc)
    if in_source:
        from .fix_source import fix_in_source  # the user's own files: a patch, not an exported model

        fix_in_source(spec, kwargs, shape, p, add, in_place, diff and not in_place, fmt, verbose, _guard,
                      (checkpoint, checkpoint_out) if checkpoint is not None else None, remove)
    if output is not None and not dry_run:
        _guard(err, spec, fmt, verbose, lambda: check_output(output, force))  # before the model loads
    result = _guard(err, spec, fmt, verbose, lambda: _fix_one(spec, kwargs, shape, p, add, err, remove))
    console = Console()
    if fmt == "text":
        render_fix(result, console, diff, full_diff=verbose)
    written: list[Path] = []
    verified = all(c.ok for c in result.checks)  # unfixable sites are a result: the rest is still written
    if verified and not dry_run and output is not None:
        with step_progress(err, f"writing {output}"):
            written = _guard(err, spec, fmt, verbose, lambda: _export().write_output(result, output, force),
                             result=result)
    if fmt == "json":
        render_fix_json(result, console, written, diff)
        if not verified:
            err.print(Text(_nothing_written(result), style="bold red"), soft_wrap=True, highlight=False)
    else:
        blocked = _dry_run_blocker(output, force) if dry_run and verified else None
        render_fix_outcome(console, _fix_outcome(result, output, dry_run, written, blocked), result.ok)
    # 2: a failed check (nothing written); 1: findings remain on the sites fix could not fix, as audit says
    raise typer.Exit(EXIT_ERROR if not verified else EXIT_FINDINGS if result.unfixable else EXIT_CLEAN)


def _is_user_code(spec: str) -> bool:
    return not spec.startswith(("timm:", "torchvision:"))


def _check_fix_options(targets: list[str] | None, output: Path | None, dry_run: bool, fmt: str,
                       p: float | None, add: float | None, in_place: bool = False) -> str:
    """Cheap checks first, so a typo costs no model import; returns the one target."""
    if not targets:
        raise DropcheckError("usage", "no target given", NO_TARGET_HINT.replace("audit", "fix"))
    if len(targets) > 1:
        raise DropcheckError("usage", f"fix takes one TARGET, got {len(targets)}: {', '.join(targets)}",
                             "run dropcheck fix once per model")
    check_format(fmt, BASIC_FORMATS)
    for flag, value in (("--p", p), ("--add", add)):
        if value is not None and not 0 <= value < 1:
            raise DropcheckError("usage", f"{flag} {value:g} is not a dropout probability",
                                 "give a number in [0, 1), e.g. 0.1")
    user = _is_user_code(targets[0])
    if in_place and (output is not None or dry_run or not user):
        why = "-o" if output is not None else "--dry-run" if dry_run else "a library target"
        raise DropcheckError("usage", f"--in-place edits your own source files; it cannot go with {why}",
                             "drop --in-place, or give a file or module target without -o and --dry-run")
    if output is None and not dry_run and not user:
        raise DropcheckError("usage", "no output given", "name one with -o OUT (a directory, or a .pt file), "
                             "or pass --dry-run to only see the changes")
    return targets[0]


def _export() -> Any:
    from ..fixer import export  # the writer imports torch: only when there is something to check or write

    return export


def _fix_one(spec: str, kwargs: dict[str, Any], shape: tuple[int, ...] | None, p: float | None,
             add: float | None, err: Console, remove: bool = False) -> FixResult:
    from ..fixer.pipeline import fix_target  # torch and the analysis load here, never for --help

    with step_progress(err, f"fixing {spec}") as step, stdout_to_stderr():
        return fix_target(spec, kwargs, shape, p, add, progress=lambda what: step(f"{what} {spec}"), remove=remove)


def _guard(err: Console, spec: str, fmt: str, verbose: bool, action: Callable[[], Any],
           result: FixResult | None = None) -> Any:
    """Run one step of `fix`; a failure becomes one line `TARGET: error (kind): ...` (and the JSON
    document with --format json), and exit 2."""
    with exit_on_interrupt(err):
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - a bug of ours must still end in one line, not a traceback
            error = as_error(exc, spec, "fixing")
    if verbose:
        print_traceback(spec, error)
    if fmt == "json":
        render_fix_json(result, Console(), [], False, error=error, target=spec)
    err.print(Text.assemble((f"{spec}: error ({error.kind}): ", "bold red"), error.one_line()),
              soft_wrap=True, highlight=False)
    raise typer.Exit(EXIT_ERROR)


def _dry_run_blocker(output: Path | None, force: bool) -> DropcheckError | None:
    """What would stop the real run from writing OUT (it exists, no such directory), if anything."""
    if output is None:
        return None
    try:
        check_output(output, force)
    except DropcheckError as exc:
        return exc
    return None


def _fix_outcome(result: FixResult, output: Path | None, dry_run: bool, written: list[Path],
                 blocked: DropcheckError | None = None) -> str:
    if not all(c.ok for c in result.checks):
        return _nothing_written(result)
    left = f" ({len(result.unfixable)} site(s) left as they were: cannot fix, above)" if result.unfixable else ""
    if dry_run:
        if output is None:
            return "dry run: nothing written" + left
        if blocked is not None:
            return f"dry run: nothing written (writing {output} would fail: {blocked.one_line()})" + left
        return f"dry run: nothing written (would write {output})" + left
    return ("\n".join(f"wrote {path}" for path in written) or f"wrote {output}") + left


def _nothing_written(result: FixResult) -> str:
    """Each failed check by name, with its reason (which output differed, what the re-audit found where)."""
    failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.ok]
    return f"nothing written: check failed: {'; '.join(failed)}"
