"""The `dropcheck` command line: parse flags, call the stages, render, pick the exit code.

The only module that imports typer. No analysis happens here. The pipeline (and so torch)
is imported inside `audit` and `fix` only, so `--help`, `rules` and `explain` start fast.
Exit codes: 0 clean, 1 findings at or above --fail-on, 2 usage/config/load/trace error.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from .. import __version__
from ..analysis import catalog
from ..output.formats import BASIC_FORMATS, FORMATS, render_audit, render_reproduction, render_rules
from ..output.json_documents import render_fix_json
from ..output.progress import audit_progress, reproduce_progress, step_progress
from ..output.text.fix import render_fix, render_fix_outcome
from ..output.text.rules import render_explain
from ..atomic import write_atomic, write_with
from ..config import (Config, TargetConfig, check_output, load_config, parse_input_shape, parse_model_args, plan_targets)
from ..records import DropcheckError, FixResult, Report, Severity

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
FAIL_ON = {"error": Severity.ERROR.rank, "warning": Severity.WARNING.rank, "info": Severity.INFO.rank, "never": None}
_NO_TARGET_HINT = "name a model, e.g. dropcheck audit path/model.py, torchvision:resnet18 or timm:resnet18"
_NO_AUDIT_TARGET_HINT = (_NO_TARGET_HINT + ", or list them in pyproject.toml: [tool.dropcheck] "
                         'targets = ["path/model.py"]')

# declarations shared by the commands that take model targets
TargetsArg = Annotated[list[str] | None, typer.Argument(
    metavar="TARGET", show_default=False,
    help="path/model.py, path/model.py:Name, package.module:Name, torchvision:NAME or timm:NAME.")]
ModelArgsOption = Annotated[list[str] | None, typer.Option(
    "--model-arg", "-a", metavar="KEY=VALUE", show_default=False,
    help="Constructor keyword (a Python literal) for every target; repeat for more.")]

app = typer.Typer(
    name="dropcheck",
    help="Audit PyTorch models for dropout placed where it hurts BatchNorm (Kim et al.).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


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


# --- audit ---------------------------------------------------------------------------------------

@app.command()
def audit(
    targets: TargetsArg = None,
    model_arg: ModelArgsOption = None,
    input_shape: Annotated[str | None, typer.Option(
        "--input-shape", metavar="N,C,H,W", show_default=False,
        help="Example input shape, e.g. 1,3,224,224 (default: the model's own, else 1,3,224,224).")] = None,
    fmt: Annotated[str, typer.Option("--format", metavar="FORMAT",
                                     help="text, json, sarif, github or markdown.")] = "text",
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="FILE", show_default=False,
        help="Write the report to FILE (atomically) instead of stdout.")] = None,
    fail_on: Annotated[str | None, typer.Option(
        "--fail-on", metavar="LEVEL", show_default=False,
        help="Exit 1 on findings at or above: error, warning, info or never (default: error).")] = None,
    select: Annotated[list[str] | None, typer.Option(
        "--select", metavar="CODES", show_default=False,
        help="Only these rules: comma-separated codes, prefixes or names (default: all).")] = None,
    ignore: Annotated[list[str] | None, typer.Option(
        "--ignore", metavar="CODES", show_default=False, help="Skip these rules: codes, prefixes or names.")] = None,
    config_file: Annotated[Path | None, typer.Option(
        "--config", metavar="FILE", show_default=False,
        help="Read [tool.dropcheck] from FILE instead of the nearest pyproject.toml.")] = None,
    no_config: Annotated[bool, typer.Option("--no-config", help="Ignore [tool.dropcheck] in pyproject.toml.")] = False,
    show_unused_ignores: Annotated[bool, typer.Option(
        "--show-unused-ignores", help="Report '# dropcheck: ignore' comments that silenced nothing.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks of failed targets.")] = False,
    measure_too: Annotated[bool, typer.Option(
        "--measure", help="Also measure Δ at every BatchNorm (normal data, 4 batches of 32; see dropcheck "
                          "measure for the options).")] = False,
) -> None:
    """Audit each TARGET (default: the targets in the tool.dropcheck table of pyproject.toml) and report where
    its dropout disturbs BatchNorm. Command-line flags override the file."""
    err = _stderr_console()
    try:
        config = Config() if no_config else load_config(config_file)
        kwargs = parse_model_args(model_arg or [])
        shape = parse_input_shape(input_shape) if input_shape is not None else None
        jobs = plan_targets(config, targets, kwargs, shape)
        if not jobs:
            raise DropcheckError("usage", "no targets given", _NO_AUDIT_TARGET_HINT)
        threshold = _check_options([job.spec for job in jobs], fmt, fail_on or config.fail_on or "error", output)
        enabled = catalog.resolve_selection(select if select is not None else config.select,
                                            ignore if ignore is not None else config.ignore)
    except DropcheckError as exc:
        _fail(err, exc)
    if measure_too:
        reports = _measure_all(jobs, {"enabled": enabled}, None, False, err)
    else:
        reports = _audit_all(jobs, enabled, err)
    if show_unused_ignores:
        from ..analysis.suppress import unused_ignores

        unused_ignores(reports)
    if verbose:
        _print_tracebacks(reports)
    try:
        _emit(reports, fmt, output)
    except DropcheckError as exc:
        _fail(err, exc)
    raise typer.Exit(exit_code(reports, threshold))


def exit_code(reports: list[Report], threshold: int | None) -> int:
    """2 if a target failed; else 1 if a finding reaches `threshold` (a severity rank); else 0."""
    if any(r.status == "error" for r in reports):
        return EXIT_ERROR
    if threshold is not None and any(f.severity.rank >= threshold for r in reports for f in r.findings):
        return EXIT_FINDINGS
    return EXIT_CLEAN


def _check_options(targets: list[str] | None, fmt: str, fail_on: str, output: Path | None) -> int | None:
    """Cheap checks first, so a typo costs no model import; returns the --fail-on rank."""
    if not targets:
        raise DropcheckError("usage", "no targets given", _NO_TARGET_HINT)
    if fmt not in FORMATS:
        raise DropcheckError("usage", f"unknown --format '{fmt}'", f"choose one of {', '.join(FORMATS)}")
    if fail_on.lower() not in FAIL_ON:
        raise DropcheckError("usage", f"unknown --fail-on '{fail_on}'", f"choose one of {', '.join(FAIL_ON)}")
    if output is not None:
        _check_output(output)
    return FAIL_ON[fail_on.lower()]


def _check_output(path: Path) -> None:
    # fail before a long audit, not after it
    if path.is_dir():
        raise DropcheckError("usage", f"--output {path} is a directory", "give a file name, e.g. -o report.json")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise DropcheckError("usage", f"--output {path}: directory {parent} does not exist", "create it first")


def _audit_all(jobs: list[TargetConfig], enabled: frozenset[str], err: Console) -> list[Report]:
    from ..analysis.pipeline import audit_target  # torch and the analysis load here, never for --help

    reports: list[Report] = []
    try:
        with audit_progress(err, len(jobs)) as progress, _stdout_to_stderr():
            for index, job in enumerate(jobs, 1):
                progress(job.spec, index)
                reports.append(audit_target(job.spec, job.model_args, job.input_shape, enabled))
    except KeyboardInterrupt:
        err.print(Text("dropcheck: interrupted", style="bold red"), soft_wrap=True)
        raise typer.Exit(130) from None
    return reports


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    # a model file that prints while importing must not corrupt `--format json > out.json`
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _print_tracebacks(reports: list[Report]) -> None:
    for rep in reports:
        if rep.status != "error" or rep.error is None:
            continue
        exc: BaseException = rep.error.__cause__ or rep.error
        sys.stderr.write(f"traceback for {rep.target}:\n")
        sys.stderr.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    sys.stderr.flush()


def _emit(reports: list[Report], fmt: str, output: Path | None) -> None:
    rules = catalog.load_rules() if fmt == "sarif" else None  # SARIF lists the catalogue
    if output is None:
        render_audit(reports, fmt, Console(), rules)
        return
    buffer = io.StringIO()
    render_audit(reports, fmt, Console(file=buffer, force_terminal=False, no_color=True, width=100), rules)
    write_atomic(output, buffer.getvalue())


# --- fix -----------------------------------------------------------------------------------------

@app.command()
def fix(
    targets: TargetsArg = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="OUT", show_default=False,
        help="Write the fixed model here: a directory (code, weights, changes.json), or a .pt file.")] = None,
    model_arg: ModelArgsOption = None,
    input_shape: Annotated[str | None, typer.Option(
        "--input-shape", metavar="N,C,H,W", show_default=False,
        help="Example input shape, e.g. 1,3,224,224 (default: the model's own, else 1,3,224,224).")] = None,
    p: Annotated[float | None, typer.Option(
        "--p", metavar="P", show_default=False,
        help="Dropout probability of every fixed dropout (default: each keeps its own).")] = None,
    add: Annotated[float | None, typer.Option(
        "--add", metavar="P", show_default=False,
        help="Insert guideline dropout with probability P into every branch and the head that have none.")] = None,
    diff: Annotated[bool, typer.Option("--diff", help="Print the forward code before and after as a diff.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Fix and verify, but write nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    fmt: Annotated[str, typer.Option("--format", metavar="FORMAT", help="text or json.")] = "text",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the traceback of a failure.")] = False,
) -> None:
    """Rewrite TARGET to follow Guidelines 1 and 2, verify nothing else changed, and write it to OUT."""
    err = _stderr_console()
    try:
        spec = _check_fix_options(targets, output, dry_run, fmt, p, add)
        kwargs = parse_model_args(model_arg or [])
        shape = parse_input_shape(input_shape) if input_shape is not None else None
    except DropcheckError as exc:
        _fail(err, exc)
    if output is not None and not dry_run:
        _guard(err, spec, fmt, verbose, lambda: check_output(output, force))  # before the model loads
    result = _guard(err, spec, fmt, verbose, lambda: _fix_one(spec, kwargs, shape, p, add, err))
    console = Console()
    if fmt == "text":
        render_fix(result, console, diff)
    written: list[Path] = []
    if result.ok and not dry_run and output is not None:
        with step_progress(err, f"writing {output}"):
            written = _guard(err, spec, fmt, verbose, lambda: _export().write_output(result, output, force),
                             result=result)
    if fmt == "json":
        render_fix_json(result, console, written, diff)
        if not result.ok:
            err.print(Text(_nothing_written(result), style="bold red"), soft_wrap=True, highlight=False)
    else:
        blocked = _dry_run_blocker(output, force) if dry_run and result.ok else None
        render_fix_outcome(console, _fix_outcome(result, output, dry_run, written, blocked), result.ok)
    raise typer.Exit(EXIT_CLEAN if result.ok else EXIT_ERROR)


def _check_fix_options(targets: list[str] | None, output: Path | None, dry_run: bool, fmt: str,
                       p: float | None, add: float | None) -> str:
    """Cheap checks first, so a typo costs no model import; returns the one target."""
    if not targets:
        raise DropcheckError("usage", "no target given", _NO_TARGET_HINT.replace("audit", "fix"))
    if len(targets) > 1:
        raise DropcheckError("usage", f"fix takes one TARGET, got {len(targets)}: {', '.join(targets)}",
                             "run dropcheck fix once per model")
    if fmt not in BASIC_FORMATS:
        raise DropcheckError("usage", f"unknown --format '{fmt}'", f"choose one of {', '.join(BASIC_FORMATS)}")
    for flag, value in (("--p", p), ("--add", add)):
        if value is not None and not 0 <= value < 1:
            raise DropcheckError("usage", f"{flag} {value:g} is not a dropout probability",
                                 "give a number in [0, 1), e.g. 0.1")
    if output is None and not dry_run:
        raise DropcheckError("usage", "no output given", "name one with -o OUT (a directory, or a .pt file), "
                             "or pass --dry-run to only see the changes")
    return targets[0]


def _export() -> Any:
    from ..fixer import export  # the writer imports torch: only when there is something to check or write

    return export


def _fix_one(spec: str, kwargs: dict[str, Any], shape: tuple[int, ...] | None, p: float | None,
             add: float | None, err: Console) -> FixResult:
    from ..fixer.pipeline import fix_target  # torch and the analysis load here, never for --help

    with step_progress(err, f"fixing {spec}") as step, _stdout_to_stderr():
        return fix_target(spec, kwargs, shape, p, add, progress=lambda what: step(f"{what} {spec}"))


def _guard(err: Console, spec: str, fmt: str, verbose: bool, action: Callable[[], Any],
           result: FixResult | None = None) -> Any:
    """Run one step of `fix`; a failure becomes one line `TARGET: error (kind): ...` and exit 2."""
    try:
        return action()
    except KeyboardInterrupt:
        err.print(Text("dropcheck: interrupted", style="bold red"), soft_wrap=True)
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - a bug of ours must still end in one line, not a traceback
        error = exc if isinstance(exc, DropcheckError) else _internal_error(spec, exc)
    if verbose:
        _print_traceback(spec, error)
    if fmt == "json":
        render_fix_json(result, Console(), [], False, error=error, target=spec)
    err.print(Text.assemble((f"{spec}: error ({error.kind}): ", "bold red"), error.one_line()),
              soft_wrap=True, highlight=False)
    raise typer.Exit(EXIT_ERROR)


def _internal_error(spec: str, exc: BaseException, what: str = "",
                    hint: str = "please report this; --verbose shows the traceback") -> DropcheckError:
    """An unexpected exception as one line (`what`, default "internal error while fixing SPEC")."""
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    error = DropcheckError("internal", f"{what or f'internal error while fixing {spec}'}: "
                           f"{type(exc).__name__}: {first}", hint)
    error.__cause__ = exc
    return error


def _print_traceback(spec: str, error: DropcheckError) -> None:
    exc: BaseException = error.__cause__ or error
    sys.stderr.write(f"traceback for {spec}:\n")
    sys.stderr.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    sys.stderr.flush()


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
    if not result.ok:
        return _nothing_written(result)
    if dry_run:
        if output is None:
            return "dry run: nothing written"
        if blocked is not None:
            return f"dry run: nothing written (writing {output} would fail: {blocked.one_line()})"
        return f"dry run: nothing written (would write {output})"
    return "\n".join(f"wrote {path}" for path in written) or f"wrote {output}"


def _nothing_written(result: FixResult) -> str:
    failed = [c.name for c in result.checks if not c.ok]
    reasons = ([f"{len(result.unfixable)} site(s) cannot be fixed"] if result.unfixable else []) + \
        ([f"check(s) failed: {', '.join(failed)}"] if failed else [])
    return f"nothing written: {'; '.join(reasons)}"


# --- rules and explain ---------------------------------------------------------------------------

@app.command()
def rules(
    fmt: Annotated[str, typer.Option("--format", metavar="FORMAT", help="text or json.")] = "text",
) -> None:
    """List every rule: code, name, severity and summary."""
    _run_catalog_command(lambda console: render_rules(catalog.load_rules(), fmt, console))


@app.command()
def explain(
    rule: Annotated[str, typer.Argument(metavar="RULE", help="A rule code (DC001) or name.")],
) -> None:
    """Show a rule's page: what it flags, why it hurts, examples and the fix."""
    _run_catalog_command(lambda console: render_explain(catalog.get_rule(rule), console))


def _run_catalog_command(action: Callable[[Console], None]) -> None:
    try:
        action(Console())
    except DropcheckError as exc:
        _fail(_stderr_console(), exc)


# --- errors --------------------------------------------------------------------------------------

def _stderr_console() -> Console:
    return Console(stderr=True)


def _fail(err: Console, exc: DropcheckError) -> NoReturn:
    """One line on stderr and exit 2: 'dropcheck: error: message (hint: ...)'."""
    line = Text.assemble(("dropcheck: error: ", "bold red"), exc.one_line())
    err.print(line, soft_wrap=True, highlight=False)
    raise typer.Exit(EXIT_ERROR)


# --- reproduce -----------------------------------------------------------------------------------

_FIGURES = ("fig1", "fig3", "prop5")  # = reproduce.FIGURES, repeated so a typo costs no torch import
_DEVICES = ("auto", "cpu", "cuda")


@app.command("reproduce")
def reproduce_command(
    figure: Annotated[str, typer.Argument(
        metavar="FIGURE", help="fig1 (Proposition 2), fig3 (Propositions 3-4) or prop5 (Proposition 5).")],
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", metavar="B", show_default=False,
        help="Samples per batch (default: the paper's 10^5 on CUDA, 8192 on CPU).")] = None,
    batches: Annotated[int, typer.Option(
        "--batches", metavar="K", help="Batches to calibrate BatchNorm with, then to measure.")] = 4,
    device: Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option("--seed", metavar="S", help="Random seed: the same seed, the same numbers.")] = 0,
    plot: Annotated[Path | None, typer.Option(
        "--plot", metavar="FILE.png", show_default=False,
        help="Also draw the figure into FILE.png (needs matplotlib: pip install dropcheck\\[plot]).")] = None,
    fmt: Annotated[str, typer.Option("--format", metavar="FORMAT", help="text or json.")] = "text",
) -> None:
    """Rerun one of the paper's module tests and print it next to the closed-form values."""
    err = _stderr_console()
    try:
        _check_reproduce_options(figure, device, fmt, batch_size, batches, plot)
        from ..measurement import reproduce as stage  # torch loads here, never for --help

        if plot is not None:
            stage.require_matplotlib()  # before the run, not after it
        setup = stage.make_setup(device, batch_size, batches, seed)
        with reproduce_progress(err, stage.total_steps(figure, setup)) as step:
            result = stage.reproduce_figure(figure, setup, progress=step)
        if plot is not None:
            stage.plot_reproduction(result, plot)
    except DropcheckError as exc:
        _fail(err, exc)
    except KeyboardInterrupt:
        err.print(Text("dropcheck: interrupted", style="bold red"), soft_wrap=True)
        raise typer.Exit(130) from None
    render_reproduction(result, fmt, Console(), plot)


def _check_reproduce_options(figure: str, device: str, fmt: str, batch_size: int | None, batches: int,
                             plot: Path | None) -> None:
    """Cheap checks first, so a typo costs no torch import."""
    choices = {"figure": (figure, _FIGURES), "--device": (device, _DEVICES), "--format": (fmt, BASIC_FORMATS)}
    for what, (value, allowed) in choices.items():
        if value not in allowed:
            raise DropcheckError("usage", f"unknown {what} '{value}'", f"choose one of {', '.join(allowed)}")
    if batch_size is not None and batch_size < 2:
        raise DropcheckError("usage", f"--batch-size {batch_size} is too small", "give at least 2 samples per batch")
    if batches < 1:
        raise DropcheckError("usage", f"--batches {batches} is too small", "give at least one batch")
    if plot is not None:
        _check_output(plot)


# --- measure and recalibrate ---------------------------------------------------------------------

_DATA_HELP = "normal (N(0,1), like the paper's module tests), digits (scikit-learn's, bundled) or imagefolder:PATH."


@app.command()
def measure(
    targets: TargetsArg = None,
    model_arg: ModelArgsOption = None,
    input_shape: Annotated[str | None, typer.Option(
        "--input-shape", metavar="N,C,H,W", show_default=False,
        help="Input shape (its batch size is replaced by --batch-size).")] = None,
    batches: Annotated[int, typer.Option("--batches", min=1, help="Batches per pass.")] = 4,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="Samples per batch.")] = 32,
    data: Annotated[str, typer.Option("--data", metavar="DATA", help=_DATA_HELP)] = "normal",
    device: Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu or cuda.")] = "auto",
    pretrained: Annotated[bool, typer.Option(
        "--pretrained", help="Keep the BatchNorm statistics as loaded (no calibration in train mode).")] = False,
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", metavar="PATH", show_default=False,
        help="Trained weights (a state_dict, loaded with weights_only=True); implies --pretrained.")] = None,
    trust_pickle: Annotated[bool, typer.Option(
        "--trust-pickle", help="Allow a checkpoint that is a pickled model (only from a source you trust).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the data and the dropout masks.")] = 0,
    plot: Annotated[Path | None, typer.Option(
        "--plot", metavar="FILE.png", show_default=False, help="Draw Δ along depth.")] = None,
    fmt: Annotated[str, typer.Option("--format", metavar="FORMAT", help="text or json.")] = "text",
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="FILE", show_default=False, help="Write the report to FILE (atomically).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks of failed targets.")] = False,
) -> None:
    """Measure Δ = Var_test / Var_train at every BatchNorm and residual merge (paper, Definition 2)."""
    err = _stderr_console()
    try:
        _check_options(targets, fmt, "never", output)
        _check_measure_options(device, data)
        kwargs = parse_model_args(model_arg or [])
        shape = parse_input_shape(input_shape) if input_shape is not None else None
    except DropcheckError as exc:
        _fail(err, exc)
    options = {"batches": batches, "batch_size": batch_size, "data": data, "device": device,
               "pretrained": pretrained or checkpoint is not None, "seed": seed}
    jobs = [TargetConfig(spec, kwargs, shape) for spec in targets or []]
    reports = _measure_all(jobs, options, checkpoint, trust_pickle, err)
    if verbose:
        _print_tracebacks(reports)
    try:
        if plot is not None:
            from ..output.figures import plot_deltas

            plot_deltas(reports, plot)
        _emit(reports, fmt, output)
    except DropcheckError as exc:
        _fail(err, exc)
    raise typer.Exit(EXIT_ERROR if any(r.status == "error" for r in reports) else EXIT_CLEAN)


def _check_device(device: str) -> None:
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise DropcheckError("usage", f"unknown --device '{device}'", "choose auto, cpu or cuda")


def _check_measure_options(device: str, data: str) -> None:
    _check_device(device)
    if data not in ("normal", "digits") and not data.startswith("imagefolder:"):
        raise DropcheckError("usage", f"unknown --data '{data}'", _DATA_HELP)


def _measure_all(jobs: list[TargetConfig], options: dict[str, Any], checkpoint: Path | None, trust_pickle: bool,
                 err: Console) -> list[Report]:
    from ..measurement.pipeline import measure_target  # torch loads here

    reports: list[Report] = []
    try:
        with step_progress(err, "measuring") as step, _stdout_to_stderr():
            for index, job in enumerate(jobs, 1):
                prefix = f"{job.spec} ({index}/{len(jobs)})"
                reports.append(measure_target(job.spec, job.model_args, job.input_shape,
                                              str(checkpoint) if checkpoint else None,
                                              trust_pickle, progress=lambda what: step(f"{prefix}: {what}"),
                                              **options))
    except KeyboardInterrupt:
        err.print(Text("dropcheck: interrupted", style="bold red"), soft_wrap=True)
        raise typer.Exit(130) from None
    return reports


@app.command()
def recalibrate(
    target: Annotated[str, typer.Argument(metavar="TARGET", help="The model the checkpoint belongs to.")],
    checkpoint: Annotated[Path, typer.Option(
        "--checkpoint", metavar="PATH", help="The trained weights (a state_dict).")],
    output: Annotated[Path, typer.Option(
        "--output", "-o", metavar="OUT.pt", help="Where the recalibrated state_dict goes (never over the input).")],
    model_arg: Annotated[list[str] | None, typer.Option(
        "--model-arg", "-a", metavar="KEY=VALUE", show_default=False, help="Constructor keyword.")] = None,
    input_shape: Annotated[str | None, typer.Option("--input-shape", metavar="N,C,H,W", show_default=False)] = None,
    data: Annotated[str, typer.Option("--data", metavar="DATA", help=_DATA_HELP)] = "digits",
    batches: Annotated[int, typer.Option("--batches", min=1, help="Batches for re-estimating the statistics.")] = 20,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2)] = 64,
    device: Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu or cuda.")] = "auto",
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    fmt: Annotated[str, typer.Option("--format", metavar="FORMAT", help="text or json.")] = "text",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Re-estimate BatchNorm statistics with dropout off: removes the variance shift without retraining."""
    err = _stderr_console()
    try:
        if output.resolve() == checkpoint.resolve():
            raise DropcheckError("usage", "--output is the input checkpoint", "write the result to a new file")
        _check_measure_options(device, data)
        if fmt not in BASIC_FORMATS:
            raise DropcheckError("usage", f"unknown --format '{fmt}'",
                                 f"choose one of {', '.join(BASIC_FORMATS)}")
        check_output(output, force)
        kwargs = parse_model_args(model_arg or [])
        shape = parse_input_shape(input_shape) if input_shape is not None else None
    except DropcheckError as exc:
        _fail(err, exc)
    from ..measurement.pipeline import recalibrate_target

    try:
        with step_progress(err, f"recalibrating {target}") as step, _stdout_to_stderr():
            result = recalibrate_target(target, kwargs, shape, str(checkpoint), trust_pickle, data=data,
                                        batches=batches, batch_size=batch_size, device=device, progress=step)
        _write_state_dict(result.pop("state_dict"), output)
    except DropcheckError as exc:
        if verbose:
            _print_tracebacks([Report(target=target, status="error", error=exc)])
        _fail(err, exc)
    result["written"] = str(output)
    from ..output.formats import render_recalibration

    render_recalibration(result, fmt, Console())
    raise typer.Exit(EXIT_CLEAN)


def _write_state_dict(state: dict[str, Any], path: Path) -> None:
    import torch

    write_with(path, lambda temp: torch.save(state, temp))


# --- train-compare -------------------------------------------------------------------------------

_VARIANTS_HELP = "Comma-separated: original, fixed, none (dropout removed), or sweep positions P0..P7, H3..H6."
_DATASET_HELP = "digits (scikit-learn's, bundled: the default), cifar10, cifar100, imagefolder:PATH or fake."


@app.command("train-compare")
def train_compare(
    target: Annotated[str, typer.Argument(metavar="TARGET", help="The model, as for audit.")],
    model_arg: ModelArgsOption = None,
    input_shape: Annotated[str | None, typer.Option(
        "--input-shape", metavar="N,C,H,W", show_default=False,
        help="Input size to train at (default: the model's; digits on a larger image model: 16x16).")] = None,
    variants: Annotated[str, typer.Option("--variants", metavar="LIST", help=_VARIANTS_HELP)] = "original,fixed",
    sweep: Annotated[str | None, typer.Option(
        "--sweep", metavar="POSITIONS", show_default=False,
        help="The paper's Table 1: no dropout, then one dropout at each of these positions in every block "
             "(e.g. P0,P1,P2,P3,P4,P5,P6,P7,H4,H5). Replaces --variants.")] = None,
    baseline: Annotated[str | None, typer.Option(
        "--baseline", metavar="VARIANT", show_default=False,
        help="What the others are compared with (default: original, else none).")] = None,
    seeds: Annotated[str, typer.Option("--seeds", metavar="N|LIST", help="A count (3 = seeds 0,1,2) or a list.")] = "3",
    epochs: Annotated[int | None, typer.Option(
        "--epochs", min=1, show_default=False, help="Default: 15 on digits, 30 elsewhere, 3 on fake.")] = None,
    dataset: Annotated[str, typer.Option("--dataset", metavar="DATA", help=_DATASET_HELP)] = "digits",
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", metavar="DIR", show_default=False, help="Where CIFAR lives (default ~/.cache/dropcheck/data).")] = None,
    download: Annotated[bool, typer.Option("--download", help="Download CIFAR if it is not in --data-dir.")] = False,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=2, help="Images per step (the global batch: under torchrun, split between processes).")] = 128,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Peak learning rate (SGD, cosine to 0).")] = 0.1,
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0, help="SGD weight decay.")] = 5e-4,
    p: Annotated[float | None, typer.Option(
        "--p", min=0.01, max=0.99, show_default=False,
        help="Dropout probability for fixed/sweep dropouts (default: the model's own; 0.1 in a sweep).")] = None,
    device: Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu or cuda.")] = "auto",
    amp: Annotated[bool | None, typer.Option(
        "--amp/--no-amp", show_default=False, help="Mixed precision (default: on with CUDA).")] = None,
    channels_last: Annotated[bool | None, typer.Option(
        "--channels-last/--no-channels-last", show_default=False, help="Default: on with CUDA.")] = None,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile each model.")] = False,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, show_default=False, help="CPU threads (results depend on it; pinned on --resume).")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="FILE.json", show_default=False,
        help="Results (JSON), rewritten after every finished run.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the runs in --output.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace --output if it exists.")] = False,
    plot: Annotated[Path | None, typer.Option(
        "--plot", metavar="FILE.png", show_default=False, help="Accuracy and loss curves.")] = None,
    fmt: Annotated[str, typer.Option("--format", metavar="FORMAT", help="text, json or markdown.")] = "text",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the traceback of an error.")] = False,
) -> None:
    """Train the original and the fixed model (or a sweep of positions) on paired seeds, and compare."""
    err = _stderr_console()
    from ..training.distributed import world_from_env

    world = world_from_env()
    try:
        names = _variant_names(variants, sweep)
        saved = _train_options(fmt, output, resume, force, plot, device)
        from ..training.loop import default_epochs, seeds_from

        seed_list = seeds_from(seeds)
        kwargs = parse_model_args(model_arg or [])
        shape = parse_input_shape(input_shape) if input_shape is not None else None
    except DropcheckError as exc:
        _fail(err, exc)
    comparison = _train(err, world, verbose, lambda listener, run_on: _pipeline_train(
        target, kwargs, shape, names, seed_list, dataset, data_dir, download, batch_size, lr, weight_decay, p,
        epochs or default_epochs(dataset), amp, channels_last, compile_model, threads, baseline, run_on, saved,
        world, listener), output, device)
    if world.leader:
        try:
            if plot is not None:
                from ..output.figures import plot_curves

                plot_curves(comparison, plot)
        except DropcheckError as exc:
            _fail(err, exc)
        from ..output.formats import render_comparison

        render_comparison(comparison, fmt, Console())
    raise typer.Exit(EXIT_CLEAN)


def _variant_names(variants: str, sweep: str | None) -> list[str]:
    from ..training.variants import parse_variants

    if sweep is not None:
        from ..training.variants import SWEEP_POSITIONS

        positions = parse_variants(sweep)
        if any(name not in SWEEP_POSITIONS for name in positions):
            raise DropcheckError("usage", f"--sweep takes positions, not {', '.join(n for n in positions if n not in SWEEP_POSITIONS)}",
                                 f"choose from {', '.join(SWEEP_POSITIONS)}; the sweep adds 'none' itself")
        return ["none", *positions]
    return parse_variants(variants)


def _train_options(fmt: str, output: Path | None, resume: bool, force: bool, plot: Path | None,
                   device: str) -> Any:
    """Checks before torch loads; returns the Comparison to resume, if any."""
    if fmt not in ("text", "json", "markdown"):
        raise DropcheckError("usage", f"unknown --format '{fmt}'", "choose text, json or markdown")
    _check_device(device)
    if resume and force:
        raise DropcheckError("usage", "--resume and --force contradict each other",
                             "--resume continues --output; --force starts it again")
    if plot is not None and plot.suffix.lower() != ".png":
        raise DropcheckError("usage", f"--plot {plot}: the plot is a PNG", "name it FILE.png")
    if resume:
        if output is None or not output.is_file():
            raise DropcheckError("usage", "--resume needs the --output file of an earlier run"
                                 + (f" ({output} does not exist)" if output is not None else ""),
                                 "pass -o FILE.json that an interrupted train-compare wrote")
        from ..output.json_documents import comparison_from_document

        return comparison_from_document(output.read_text(encoding="utf-8"), str(output))
    if output is not None:
        check_output(output, force)
    return None


def _pipeline_train(target: str, kwargs: dict[str, Any], shape: tuple[int, ...] | None, names: list[str],
                    seed_list: list[int], dataset: str, data_dir: Path | None, download: bool, batch_size: int,
                    lr: float, weight_decay: float, p: float | None, epochs: int, amp: bool | None,
                    channels_last: bool | None, compile_model: bool, threads: int | None, baseline: str | None,
                    run_on: Any, saved: Any, world: Any, listener: Any) -> Any:
    import torch

    from ..training.pipeline import train_compare_target
    from ..training.loop import Recipe

    if threads is None and saved is not None:
        threads = saved.settings.get("threads")  # same threads, same numbers: a resumed run stays paired
    if threads:
        torch.set_num_threads(threads)
    on_cuda = run_on.type == "cuda"
    recipe = Recipe(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                    amp=on_cuda if amp is None else amp and on_cuda,
                    channels_last=on_cuda if channels_last is None else channels_last, compile=compile_model)
    return train_compare_target(target, kwargs, shape, variants=names, seeds=seed_list, dataset=dataset,
                                data_dir=str(data_dir) if data_dir else None, download=download, recipe=recipe,
                                device=str(run_on), p=p, baseline=baseline, resume=saved, world=world,
                                listener=listener, progress=listener.status)


def _train(err: Console, world: Any, verbose: bool, run: Callable[[Any, Any], Any], output: Path | None,
           device: str) -> Any:
    """Run the comparison with progress and saving; Ctrl-C keeps the finished runs in --output."""
    from ..training import distributed
    from ..measurement.device import resolve_device
    from ..output.json_documents import comparison_document
    from ..output.progress import TrainProgress

    def save(comparison: Any) -> None:
        if output is not None and world.leader:
            write_atomic(output, json.dumps(comparison_document(comparison), indent=2) + "\n")

    progress = TrainProgress(err if world.leader else Console(stderr=True, quiet=True), save)
    try:
        run_on = distributed.start(world, resolve_device(device))
        with progress, _stdout_to_stderr():
            comparison = run(progress, run_on)
        if output is not None:
            save(comparison)
        return comparison
    except KeyboardInterrupt:
        if not world.leader:
            raise typer.Exit(130) from None
        done = progress.runs_done
        kept = f"; {done} finished run(s) kept in {output}: continue with --resume" if output and done else (
            "; pass --output FILE.json to keep finished runs" if not output else "")
        err.print(Text(f"dropcheck: interrupted{kept}", style="bold red"), soft_wrap=True)
        raise typer.Exit(130) from None
    except DropcheckError as exc:
        if verbose:
            _print_traceback("train-compare", exc)
        _fail(err, exc)
    except Exception as exc:  # noqa: BLE001 - a bug of ours (or the user's forward): one line, exit 2
        error = _internal_error("train-compare", exc, "train-compare failed",
                                "--verbose shows the traceback; please report it if the model is not at fault")
        if verbose:
            _print_traceback("train-compare", error)
        _fail(err, error)
    finally:
        distributed.stop(world)
