"""`dropcheck measure`: the inconsistency ratio Δ at every BatchNorm and residual merge."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ..config import TargetConfig
from ..measurement.device import check_device
from ..output.formats import FORMATS
from ..output.progress import step_progress
from ..records import DropcheckError, Report
from .errors import EXIT_CLEAN, EXIT_ERROR, fail, print_tracebacks
from .interrupts import exit_on_interrupt
from ..output.figures import require_matplotlib
from .options import (BasicFormatOption, DeviceOption, ModelArgsOption, TargetsArg, check_format, check_report_path,
                      check_targets, input_shape_option, model_inputs, verbose_option)
from .streams import emit, stderr_console, stdout_to_stderr

DATA_HELP = "normal (N(0,1), like the paper's module tests), digits (scikit-learn's, bundled) or imagefolder:PATH."


def measure(
    targets: TargetsArg = None,
    model_arg: ModelArgsOption = None,
    input_shape: Annotated[str | None, input_shape_option(
        "Input shape (its batch size is replaced by --batch-size).")] = None,
    batches: Annotated[int, typer.Option("--batches", min=1, help="Batches per pass.")] = 4,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="Samples per batch.")] = 32,
    data: Annotated[str, typer.Option("--data", metavar="DATA", help=DATA_HELP)] = "normal",
    device: DeviceOption = "auto",
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
    fmt: BasicFormatOption = "text",
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="FILE", show_default=False, help="Write the report to FILE (atomically).")] = None,
    verbose: Annotated[bool, verbose_option("Show tracebacks of failed targets, and every finding on its own line.")] = False,
) -> None:
    """Measure Δ = Var_test / Var_train at every BatchNorm and residual merge (paper, Definition 2)."""
    err = stderr_console()
    try:
        specs = check_targets(targets)
        check_format(fmt, FORMATS)
        if output is not None:
            check_report_path(output)
        check_measure_options(device, data)
        if plot is not None:
            require_matplotlib()  # before measuring, not after it
        kwargs, shape = model_inputs(model_arg, input_shape)
    except DropcheckError as exc:
        fail(err, exc)
    options = {"batches": batches, "batch_size": batch_size, "data": data, "device": device,
               "pretrained": pretrained or checkpoint is not None, "seed": seed}
    jobs = [TargetConfig(spec, kwargs, shape) for spec in specs]
    reports = measure_all(jobs, options, checkpoint, trust_pickle, err)
    if verbose:
        print_tracebacks(reports)
    try:
        if plot is not None:
            from ..output.figures import plot_deltas

            plot_deltas(reports, plot)
        emit(reports, fmt, output, verbose)
    except DropcheckError as exc:
        fail(err, exc)
    raise typer.Exit(EXIT_ERROR if any(r.status == "error" for r in reports) else EXIT_CLEAN)


def check_measure_options(device: str, data: str) -> None:
    """--device and --data of measure and recalibrate, before torch loads."""
    check_device(device)
    if data not in ("normal", "digits") and not data.startswith("imagefolder:"):
        raise DropcheckError("usage", f"unknown --data '{data}'", DATA_HELP)


def measure_all(jobs: list[TargetConfig], options: dict[str, Any], checkpoint: Path | None, trust_pickle: bool,
                err: Console) -> list[Report]:
    """Measure each job (a failed one is an error Report); also `audit --measure`."""
    from ..measurement.pipeline import measure_target  # torch loads here

    reports: list[Report] = []
    with exit_on_interrupt(err), step_progress(err, "measuring") as step, stdout_to_stderr():
        for index, job in enumerate(jobs, 1):
            prefix = f"{job.spec} ({index}/{len(jobs)})"
            reports.append(measure_target(job.spec, job.model_args, job.input_shape,
                                          str(checkpoint) if checkpoint else None,
                                          trust_pickle, progress=lambda what: step(f"{prefix}: {what}"),
                                          **options))
    return reports
