"""Live progress on stderr: spinners for audit, fix and measure, bars for reproduce and train-compare.

All of it is silent unless the console is a terminal, so logs and pipes get no control codes;
train-compare, piped, prints one plain line per finished run instead. rich.progress loads on
use, so `dropcheck rules`, `explain` and `--help` do not pay for it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.text import Text

from ..records import Comparison, Listener, RunResult
from .console import write_plain
from .text.training import comparison_table, run_line


@contextmanager
def audit_progress(console: Console, total: int) -> Iterator[Callable[[str, int], None]]:
    """A spinner naming the target being audited. Yields a function taking (spec, index)."""
    if not console.is_terminal:
        yield lambda spec, index: None
        return
    with console.status("auditing", spinner="dots") as status:
        yield lambda spec, index: status.update(Text(f"auditing {spec} ({index}/{total})"))


@contextmanager
def step_progress(console: Console, text: str) -> Iterator[Callable[[str], None]]:
    """A spinner showing `text` ("fixing TARGET", "measuring"). Yields a function that replaces
    the text with the current step ("verifying")."""
    if not console.is_terminal:
        yield lambda step: None
        return
    with console.status(Text(text), spinner="dots") as status:
        yield lambda step: status.update(Text(step))


@contextmanager
def reproduce_progress(console: Console, total: int) -> Iterator[Callable[[str], None]]:
    """A progress bar over `total` batches. Yields a function that advances it by one batch and
    shows what is running."""
    if not console.is_terminal:
        yield lambda what: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("starting", total=total)
        yield lambda what: bar.update(task, advance=1, description=what)


class TrainProgress(Listener):
    """Rich bars on a terminal (all runs, and the current one with its variant, seed, epoch, loss
    and accuracy; the result table so far above them); a line per finished run otherwise.

    `save(comparison)` is called after every finished run (the --output file), so Ctrl-C loses at
    most the run in progress.
    """

    def __init__(self, console: Console, save: Any = None) -> None:
        self.console, self.save = console, save
        self.runs_done, self.where = 0, ""
        self.bar: Any = None
        if console.is_terminal and not console.quiet:
            self.bar = _bars_under_a_table(console)
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
            self.bar.results = comparison_table(comparison)  # the table so far, above the bars
            self.bar.console.print(Text(line), soft_wrap=True)
        elif not self.console.quiet:
            write_plain(self.console, line)


def _bars_under_a_table(console: Console) -> Any:
    """Two progress bars (overall, current run) with `.results`, a table drawn above them."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    class ProgressWithTable(Progress):
        results: Any = None

        def get_renderables(self) -> Any:
            if self.results is not None:
                yield self.results
            yield self.make_tasks_table(self.tasks)

    return ProgressWithTable(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True)
