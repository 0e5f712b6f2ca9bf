"""`dropcheck train-compare`: train the original and the fixed model (or a sweep) on paired seeds."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ..atomic import write_atomic
from ..config import check_output
from ..measurement.device import check_device
from ..records import DropcheckError
from .errors import EXIT_CLEAN, fail, one_line_errors
from .interrupts import exit_on_interrupt
from ..output.figures import require_matplotlib
from .options import (DeviceOption, ModelArgsOption, check_format, force_option, format_option, input_shape_option,
                      model_inputs, verbose_option)
from .streams import stderr_console, stdout_to_stderr

_FORMATS = ("text", "json", "markdown")
_VARIANTS_HELP = "Comma-separated: original, fixed, none (dropout removed), or sweep positions P0..P7, H3..H6."
_DATASET_HELP = "digits (scikit-learn's, bundled: the default), cifar10, cifar100, imagefolder:PATH or fake."


def train_compare(
    target: Annotated[str, typer.Argument(metavar="TARGET", help="The model, as for audit.")],
    model_arg: ModelArgsOption = None,
    input_shape: Annotated[str | None, input_shape_option(
        "Input size to train at (default: the model's; digits on a larger image model: 16x16).")] = None,
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
    device: DeviceOption = "auto",
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
    force: Annotated[bool, force_option("Replace --output if it exists.")] = False,
    plot: Annotated[Path | None, typer.Option(
        "--plot", metavar="FILE.png", show_default=False, help="Accuracy and loss curves.")] = None,
    fmt: Annotated[str, format_option("text, json or markdown.")] = "text",
    verbose: Annotated[bool, verbose_option("Show the traceback of an error.")] = False,
) -> None:
    """Train the original and the fixed model (or a sweep of positions) on paired seeds, and compare."""
    err = stderr_console()
    from ..training.distributed import world_from_env  # torch loads here

    world = world_from_env()
    try:
        from ..training.loop import seeds_from
        from ..training.pipeline import TrainOptions, variant_names

        names = variant_names(variants, sweep)
        saved = _check_train_options(fmt, output, resume, force, plot, device)
        options = TrainOptions(
            variants=tuple(names), seeds=tuple(seeds_from(seeds)), dataset=dataset,
            data_dir=str(data_dir) if data_dir else None, download=download, epochs=epochs, batch_size=batch_size,
            lr=lr, weight_decay=weight_decay, p=p, baseline=baseline, device=device, amp=amp,
            channels_last=channels_last, compile=compile_model, threads=threads)
        kwargs, shape = model_inputs(model_arg, input_shape)
    except DropcheckError as exc:
        fail(err, exc)
    comparison = _train(err, world, verbose, target, kwargs, shape, options, saved, output)
    if world.leader:
        try:
            if plot is not None:
                from ..output.figures import plot_curves

                plot_curves(comparison, plot)
        except DropcheckError as exc:
            fail(err, exc)
        from ..output.formats import render_comparison

        render_comparison(comparison, fmt, Console())
    raise typer.Exit(EXIT_CLEAN)


def _check_train_options(fmt: str, output: Path | None, resume: bool, force: bool, plot: Path | None,
                         device: str) -> Any:
    """Checks before any model loads or trains; returns the Comparison to resume, if any."""
    check_format(fmt, _FORMATS)
    check_device(device)
    if resume and force:
        raise DropcheckError("usage", "--resume and --force contradict each other",
                             "--resume continues --output; --force starts it again")
    if plot is not None:
        if plot.suffix.lower() != ".png":
            raise DropcheckError("usage", f"--plot {plot}: the plot is a PNG", "name it FILE.png")
        require_matplotlib()  # before training, not after it
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


def _train(err: Console, world: Any, verbose: bool, target: str, kwargs: dict[str, Any],
           shape: tuple[int, ...] | None, options: Any, resume: Any, output: Path | None) -> Any:
    """Run the comparison with progress and saving; Ctrl-C keeps the finished runs in --output."""
    from ..output.json_documents import comparison_document
    from ..output.progress import TrainProgress
    from ..training.pipeline import run_train_compare

    def save(comparison: Any) -> None:
        if output is not None and world.leader:
            write_atomic(output, json.dumps(comparison_document(comparison), indent=2) + "\n")

    progress = TrainProgress(err if world.leader else Console(stderr=True, quiet=True), save)

    def kept() -> str:
        if output is None:
            return "; pass --output FILE.json to keep finished runs"
        done = progress.runs_done
        return f"; {done} finished run(s) kept in {output}: continue with --resume" if done else ""

    with exit_on_interrupt(err, kept, quiet=not world.leader), one_line_errors(err, target, "training", verbose):
        with progress, stdout_to_stderr():
            comparison = run_train_compare(target, kwargs, shape, options, resume=resume, world=world,
                                           listener=progress, progress=progress.status)
        save(comparison)
    return comparison
