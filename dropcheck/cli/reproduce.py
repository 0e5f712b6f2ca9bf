"""`dropcheck reproduce`: one of the paper's module tests, next to its closed-form values."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..measurement.device import check_device
from ..output.formats import BASIC_FORMATS, render_reproduction
from ..output.progress import reproduce_progress
from ..records import DropcheckError
from .errors import fail
from .interrupts import exit_on_interrupt
from ..output.figures import require_matplotlib
from .options import BasicFormatOption, DeviceOption, check_format, check_report_path
from .streams import stderr_console

_FIGURES = ("fig1", "fig3", "prop5")  # = measurement.reproduce.FIGURES, repeated so a typo costs no torch import


def reproduce_command(
    figure: Annotated[str, typer.Argument(
        metavar="FIGURE", help="fig1 (Proposition 2), fig3 (Propositions 3-4) or prop5 (Proposition 5).")],
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", metavar="B", show_default=False,
        help="Samples per batch (default: the paper's 10^5 on CUDA, 8192 on CPU).")] = None,
    batches: Annotated[int, typer.Option(
        "--batches", metavar="K", help="Batches to calibrate BatchNorm with, then to measure.")] = 4,
    device: DeviceOption = "auto",
    seed: Annotated[int, typer.Option("--seed", metavar="S", help="Random seed: the same seed, the same numbers.")] = 0,
    plot: Annotated[Path | None, typer.Option(
        "--plot", metavar="FILE.png", show_default=False,
        help="Also draw the figure into FILE.png (needs matplotlib: pip install dropcheck\\[plot]).")] = None,
    fmt: BasicFormatOption = "text",
) -> None:
    """Rerun one of the paper's module tests and print it next to the closed-form values."""
    err = stderr_console()
    with exit_on_interrupt(err):
        try:
            _check_reproduce_options(figure, device, fmt, batch_size, batches, plot)
            from ..measurement import reproduce as stage  # torch loads here, never for --help

            setup = stage.make_setup(device, batch_size, batches, seed)
            with reproduce_progress(err, stage.total_steps(figure, setup)) as step:
                result = stage.reproduce_figure(figure, setup, progress=step)
            if plot is not None:
                from ..output.figures import plot_reproduction

                plot_reproduction(result, plot)
        except DropcheckError as exc:
            fail(err, exc)
    render_reproduction(result, fmt, Console(), plot)


def _check_reproduce_options(figure: str, device: str, fmt: str, batch_size: int | None, batches: int,
                             plot: Path | None) -> None:
    """Cheap checks first, so a typo costs no torch import."""
    if figure not in _FIGURES:
        raise DropcheckError("usage", f"unknown figure '{figure}'", f"choose one of {', '.join(_FIGURES)}")
    check_device(device)
    check_format(fmt, BASIC_FORMATS)
    if batch_size is not None and batch_size < 2:
        raise DropcheckError("usage", f"--batch-size {batch_size} is too small", "give at least 2 samples per batch")
    if batches < 1:
        raise DropcheckError("usage", f"--batches {batches} is too small", "give at least one batch")
    if plot is not None:
        check_report_path(plot)
        require_matplotlib()  # before the run, not after it

