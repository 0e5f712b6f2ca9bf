"""`dropcheck recalibrate`: re-estimate a checkpoint's BatchNorm statistics with dropout off."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ..atomic import write_with
from ..config import check_output
from ..output.formats import BASIC_FORMATS
from ..output.progress import step_progress
from ..records import DropcheckError
from .errors import EXIT_CLEAN, fail, one_line_errors
from .interrupts import exit_on_interrupt
from .measure import DATA_HELP, check_measure_options
from .options import (BasicFormatOption, DeviceOption, check_format, force_option, input_shape_option,
                      model_arg_option, model_inputs, verbose_option)
from .streams import stderr_console, stdout_to_stderr


def recalibrate(
    target: Annotated[str, typer.Argument(metavar="TARGET", help="The model the checkpoint belongs to.")],
    checkpoint: Annotated[Path, typer.Option(
        "--checkpoint", metavar="PATH", help="The trained weights (a state_dict).")],
    output: Annotated[Path, typer.Option(
        "--output", "-o", metavar="OUT.pt", help="Where the recalibrated state_dict goes (never over the input).")],
    model_arg: Annotated[list[str] | None, model_arg_option("Constructor keyword.")] = None,
    input_shape: Annotated[str | None, input_shape_option(None)] = None,
    data: Annotated[str, typer.Option("--data", metavar="DATA", help=DATA_HELP)] = "digits",
    batches: Annotated[int, typer.Option("--batches", min=1, help="Batches for re-estimating the statistics.")] = 20,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2)] = 64,
    device: DeviceOption = "auto",
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle")] = False,
    force: Annotated[bool, force_option()] = False,
    fmt: BasicFormatOption = "text",
    verbose: Annotated[bool, verbose_option(None)] = False,
) -> None:
    """Re-estimate BatchNorm statistics with dropout off: removes the variance shift without retraining."""
    err = stderr_console()
    try:
        if output.resolve() == checkpoint.resolve():
            raise DropcheckError("usage", "--output is the input checkpoint", "write the result to a new file")
        check_measure_options(device, data)
        check_format(fmt, BASIC_FORMATS)
        check_output(output, force)
        kwargs, shape = model_inputs(model_arg, input_shape)
    except DropcheckError as exc:
        fail(err, exc)
    from ..measurement.pipeline import recalibrate_target  # torch loads here

    with exit_on_interrupt(err), one_line_errors(err, target, "recalibrating", verbose):
        with step_progress(err, f"recalibrating {target}") as step, stdout_to_stderr():
            result = recalibrate_target(target, kwargs, shape, str(checkpoint), trust_pickle, data=data,
                                        batches=batches, batch_size=batch_size, device=device, progress=step)
        _write_state_dict(result.pop("state_dict"), output)
    result["written"] = str(output)
    from ..output.formats import render_recalibration

    render_recalibration(result, fmt, Console())
    raise typer.Exit(EXIT_CLEAN)


def _write_state_dict(state: dict[str, Any], path: Path) -> None:
    import torch

    write_with(path, lambda temp: torch.save(state, temp))
