"""Rendering a train-compare: live progress, the result table (text, JSON, Markdown), the curves plot.

Progress goes to stderr: rich bars on a terminal (overall, and the current run with its variant,
seed, epoch, loss and accuracy), one plain line per finished run when piped. The result table is
the paper's Table 1 form: accuracy mean ± std over seeds, and the paired difference with the
baseline, its 95% interval and a verdict.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from .. import __version__
from ..records.training import SCHEMA, Comparison, Listener, RunResult, check_pairing
from ..records import DropcheckError

_VERDICT_STYLE = {"better": "green", "worse": "red", "no detectable difference": "yellow", "too few seeds": "dim"}


class TrainProgress(Listener):
    """Rich bars on a terminal (all runs, and the current one); a line per finished run otherwise.

    `save(comparison)` is called after every finished run (the --output file), so Ctrl-C loses at
    most the run in progress.
    """

    def __init__(self, console: Console, save: Any = None) -> None:
        self.console, self.save = console, save
        self.runs_done, self.where = 0, ""
        self.bar: Any = None
        if console.is_terminal and not console.quiet:
            self.bar = _ProgressWithTable(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                                transient=True)
            self.overall = self.bar.add_task("starting", total=None)
            self.current = self.bar.add_task("", total=1, visible=False)

    def __enter__(self) -> TrainProgress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def status(self, what: str) -> None:
        """Before training: what is being prepared (building, auditing the variants, loading data)."""
        if self.bar is not None:
            self.bar.update(self.overall, description=what)

    def comparison_started(self, comparison: Comparison, epochs: int, steps: int) -> None:
        left = comparison.total_runs - len(comparison.runs)
        if self.bar is not None:
            self.bar.update(self.overall, total=left * epochs * steps, completed=0,
                            description=f"{left} run(s) of {epochs} epochs")

    def run_started(self, variant: str, seed: int, epochs: int, steps: int) -> None:
        self.where, self.epochs = f"{variant} · seed {seed}", epochs
        if self.bar is not None:
            self.bar.reset(self.current, total=epochs * steps, visible=True, description=f"{self.where} · epoch 1/{epochs}")

    def step_done(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.current)
            self.bar.advance(self.overall)

    def epoch_done(self, variant: str, seed: int, record: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(self.current, description=(
                f"{self.where} · epoch {min(int(record['epoch']) + 1, self.epochs)}/{self.epochs} · loss {record['train_loss']:.3f} · "
                f"test {record['test_acc']:.2f}%"))

    def run_done(self, comparison: Comparison, result: RunResult) -> None:
        self.runs_done += 1
        if self.save is not None:
            self.save(comparison)
        line = run_line(comparison, result)
        if self.bar is not None:
            self.bar.results = _rich_table(comparison)  # the table so far, above the bars
            self.bar.console.print(Text(line), soft_wrap=True)
        elif not self.console.quiet:
            self.console.out(line, highlight=False)


class _ProgressWithTable(Progress):
    """Progress bars with the result table so far drawn above them."""

    results: Any = None

    def get_renderables(self) -> Any:
        if self.results is not None:
            yield self.results
        yield self.make_tasks_table(self.tasks)


def run_line(comparison: Comparison, result: RunResult) -> str:
    done = len(comparison.runs)
    extra = "" if result.status == "done" else f" ({result.status})"
    return (f"[{done}/{comparison.total_runs}] {result.variant} seed {result.seed}: final {result.final_acc:.2f}%, "
            f"best {result.best_acc:.2f}% (epoch {result.best_epoch}), {result.images_per_s:.0f} img/s, "
            f"{result.seconds:.1f} s{extra}")


def to_json_document(comparison: Comparison) -> dict[str, Any]:
    """`{"schema": 1, "dropcheck_version", "train_compare": Comparison.to_dict()}`: also the --resume file."""
    return {"schema": SCHEMA, "dropcheck_version": __version__, "train_compare": comparison.to_dict()}


def from_json_document(text: str, where: str) -> Comparison:
    try:
        doc = json.loads(text)
        return Comparison.from_dict(doc["train_compare"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DropcheckError("usage", f"--resume: {where} is not a train-compare results file",
                             "resume from the --output of an earlier train-compare") from exc


def render(comparison: Comparison, fmt: str, console: Console) -> None:
    if fmt == "json":
        console.out(json.dumps(to_json_document(comparison), indent=2), highlight=False)
    elif fmt == "markdown":
        console.out(comparison.markdown(), highlight=False)
    else:
        _render_text(comparison, console)


def _header(comparison: Comparison) -> list[str]:
    s = comparison.settings
    r, d = s["recipe"], s["dataset"]
    shape = "x".join(str(n) for n in s["input_shape"][1:])
    lines = [f"{comparison.target} on {d['name']} ({d.get('train_size', '?')} train / {d.get('test_size', '?')} "
             f"test images at {shape}), {len(comparison.seeds)} paired seeds, {r['epochs']} epochs, batch "
             f"{r['batch_size']}, SGD lr {r['lr']:g} cosine, weight decay {r['weight_decay']:g}, {s['device']}"
             + (f" x{s['world_size']} (DDP)" if s.get("world_size", 1) > 1 else "")]
    for v in comparison.variants:
        lines.append(f"  {v['name']}: {v['description']}")
    return lines


def _footer(comparison: Comparison) -> list[str]:
    lines = list(comparison.notes)
    diverged = [f"{r.variant} seed {r.seed}" for r in comparison.runs if r.status == "diverged"]
    if diverged:
        lines.append(f"diverged (loss not finite; counted with the accuracy it had): {', '.join(diverged)}")
    if not comparison.complete:
        lines.append(f"incomplete: {len(comparison.runs)} of {comparison.total_runs} runs")
    problems = check_pairing(comparison)
    lines.append("pairing: " + ("; ".join(problems) if problems else
                                "every seed's variants started from the same weights and saw the same batches"))
    lines.append("* follows the guidelines. Difference: variant minus baseline, final accuracy, paired by seed, "
                 "95% Student-t interval widened by the rounding to whole test images.")
    test_size = comparison.settings["dataset"].get("test_size")
    if test_size:
        lines.append(f"One test image is {100 / test_size:.2f}% of this test set: differences of a few images "
                     "show the machinery, not a gain.")
    return lines


def _render_text(comparison: Comparison, console: Console) -> None:
    headers = ("variant", "final acc. (%)", "best acc. (%)", f"vs {comparison.baseline} (95% CI)", "verdict")
    if not console.is_terminal:
        from .report import _columns

        for line in [*_header(comparison), *_columns(headers, comparison.rows()), *_footer(comparison)]:
            console.out(line, highlight=False)
        return
    for line in _header(comparison):
        console.print(Text(line, style="bold" if not line.startswith(" ") else "dim"), soft_wrap=True)
    console.print(_rich_table(comparison))
    for line in _footer(comparison):
        console.print(Text(line, style="dim"), soft_wrap=True)


def _rich_table(comparison: Comparison) -> Table:
    headers = ("variant", "final acc. (%)", "best acc. (%)", f"vs {comparison.baseline} (95% CI)", "verdict")
    table = Table(*headers, box=box.SIMPLE_HEAD)
    for row in comparison.rows():
        table.add_row(*row[:4], Text(row[4], style=_VERDICT_STYLE.get(row[4], "")))
    return table


def plot_curves(comparison: Comparison, path: Path) -> Path:
    """Test accuracy and training loss per epoch: mean over seeds per variant, the seeds' range shaded."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise DropcheckError("usage", "--plot needs matplotlib", "pip install 'dropcheck[plot]'") from exc
    from ..atomic import write_with

    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name in comparison.variant_names:
        curves = [r.epochs for r in comparison.runs if r.variant == name]
        if curves:
            _band(acc_ax, curves, "test_acc", name)
            _band(loss_ax, curves, "train_loss", name)
    acc_ax.set(xlabel="epoch", ylabel="test accuracy (%)", title=comparison.target)
    loss_ax.set(xlabel="epoch", ylabel="training loss", yscale="log")
    acc_ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        write_with(path, lambda temp: fig.savefig(temp, dpi=120, format="png"))
    finally:
        plt.close(fig)
    return path


def _band(ax: Any, curves: Sequence[Sequence[dict[str, float]]], key: str, label: str) -> None:
    n = min(len(c) for c in curves)
    xs = list(range(1, n + 1))
    values = [[c[i][key] for c in curves] for i in range(n)]
    ax.plot(xs, [sum(v) / len(v) for v in values], label=label)
    if len(curves) > 1:
        ax.fill_between(xs, [min(v) for v in values], [max(v) for v in values], alpha=0.2)
