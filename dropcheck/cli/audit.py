"""`dropcheck audit`: where each target's dropout disturbs BatchNorm, and the CI exit code."""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ..analysis import catalog
from ..cache import AuditCache, cache_disabled, cache_root
from ..config import Config, TargetConfig, load_config, plan_targets
from ..output.formats import FORMATS
from ..output.progress import audit_progress
from ..records import DropcheckError, Report, Severity
from .errors import EXIT_CLEAN, EXIT_ERROR, EXIT_FINDINGS, fail, print_tracebacks
from .interrupts import exit_on_interrupt
from .measure import measure_all
from .options import (NO_TARGET_HINT, InputShapeOption, ModelArgsOption, TargetsArg, check_format, check_report_path,
                      check_targets, format_option, model_inputs, verbose_option)
from .streams import emit, stderr_console, stdout_to_stderr

FAIL_ON = {"error": Severity.ERROR.rank, "warning": Severity.WARNING.rank, "info": Severity.INFO.rank, "never": None}
_NO_AUDIT_TARGET_HINT = NO_TARGET_HINT + ', or list them in pyproject.toml: [tool.dropcheck] targets = ["path/model.py"]'


def audit(
    targets: TargetsArg = None,
    model_arg: ModelArgsOption = None,
    input_shape: InputShapeOption = None,
    fmt: Annotated[str, format_option("text, json, sarif, github or markdown.")] = "text",
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
        help="Read \\[tool.dropcheck] from FILE instead of the nearest pyproject.toml.")] = None,
    no_config: Annotated[bool, typer.Option("--no-config", help="Ignore \\[tool.dropcheck] in pyproject.toml.")] = False,
    show_unused_ignores: Annotated[bool, typer.Option(
        "--show-unused-ignores", help="Report '# dropcheck: ignore' comments that silenced nothing.")] = False,
    verbose: Annotated[bool, verbose_option("Show tracebacks of failed targets, and every finding on its own line.")] = False,
    measure_too: Annotated[bool, typer.Option(
        "--measure", help="Also measure Δ at every BatchNorm (normal data, 4 batches of 32; see dropcheck "
                          "measure for the options).")] = False,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Audit every target afresh: neither read nor write .dropcheck_cache (a target is "
                           "answered from it only when nothing it depends on changed).")] = False,
) -> None:
    """Audit each TARGET (default: the targets in the tool.dropcheck table of pyproject.toml) and report where
    its dropout disturbs BatchNorm. Command-line flags override the file."""
    err = stderr_console()
    try:
        config = Config() if no_config else load_config(config_file)
        jobs = plan_targets(config, targets, *model_inputs(model_arg, input_shape))
        check_targets([job.spec for job in jobs], _NO_AUDIT_TARGET_HINT)
        check_format(fmt, FORMATS)
        threshold = _fail_on_rank(fail_on or config.fail_on or "error")
        if output is not None:
            check_report_path(output)
        enabled = catalog.resolve_selection(select if select is not None else config.select,
                                            ignore if ignore is not None else config.ignore)
    except DropcheckError as exc:
        fail(err, exc)
    if measure_too:
        reports = measure_all(jobs, {"enabled": enabled}, None, False, err)
    else:
        cache = None if no_cache or cache_disabled() else AuditCache(cache_root(config.path))
        reports = _audit_all(jobs, enabled, err, cache)
    if show_unused_ignores:
        from ..analysis.suppress import unused_ignores

        unused_ignores(reports)
    if verbose:
        print_tracebacks(reports)
    try:
        emit(reports, fmt, output, verbose)
    except DropcheckError as exc:
        fail(err, exc)
    raise typer.Exit(exit_code(reports, threshold))


def exit_code(reports: list[Report], threshold: int | None) -> int:
    """2 if a target failed; else 1 if a finding reaches `threshold` (a severity rank); else 0."""
    if any(r.status == "error" for r in reports):
        return EXIT_ERROR
    if threshold is not None and any(f.severity.rank >= threshold for r in reports for f in r.findings):
        return EXIT_FINDINGS
    return EXIT_CLEAN


def _fail_on_rank(level: str) -> int | None:
    """--fail-on LEVEL as the severity rank that fails the run (None: never)."""
    if level.lower() not in FAIL_ON:
        raise DropcheckError("usage", f"unknown --fail-on '{level}'", f"choose one of {', '.join(FAIL_ON)}")
    return FAIL_ON[level.lower()]


def _audit_all(jobs: list[TargetConfig], enabled: frozenset[str], err: Console,
               cache: AuditCache | None) -> list[Report]:
    """Each job's report: from the cache when nothing it depends on changed (no torch import),
    else audited afresh and, when it can be, kept in the cache."""
    keys = [cache.key(job.spec, job.model_args, job.input_shape, enabled) if cache else None for job in jobs]
    reports: list[Report | None] = [cache.lookup(key) if cache and key else None for key in keys]
    todo = [index for index, report in enumerate(reports) if report is None]
    if todo:
        from ..analysis.pipeline import audit_target  # torch and the analysis load here, never for --help
        from ..cache.reads import recording

        with exit_on_interrupt(err), audit_progress(err, len(todo)) as progress, stdout_to_stderr():
            for count, index in enumerate(todo, 1):
                job = jobs[index]
                progress(job.spec, count)
                before, started = set(sys.modules), time.time_ns()
                with recording(cache.root, cache.folder) if cache else contextlib.nullcontext(set()) as read:
                    report = audit_target(job.spec, job.model_args, job.input_shape, enabled)
                report.seconds = round(report.seconds, 3)  # as the JSON and a cached answer give it
                if cache is not None and keys[index] is not None and report.status == "ok":
                    _keep(cache, keys[index], job.spec, (before, read, started), report)
                reports[index] = report
    return [report for report in reports if report is not None]


def _keep(cache: AuditCache, key: dict[str, Any], spec: str, seen: tuple[set[str], set[str], int],
          report: Report) -> None:
    """Store a fresh ok report with what it depends on: `seen` is (sys.modules' names before its
    audit, the project files it read, when it started)."""
    from ..cache.sources import target_dependencies

    deps = target_dependencies(spec, *seen)
    if deps is not None:
        cache.store(key, deps, report)
