"""train-compare as text: the setup, the result table in the paper's Table 1 form, the notes.

The table: accuracy mean ± std over seeds, and the paired difference with the baseline, its 95%
interval and a verdict. Its rows come from `Comparison.rows()`, shared with the Markdown table.
"""
from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ...records import Comparison, RunResult, check_pairing
from ..console import columns, write_plain

_VERDICT_STYLE = {"better": "green", "worse": "red", "no detectable difference": "yellow", "too few seeds": "dim"}


def render_comparison_text(comparison: Comparison, console: Console) -> None:
    """Setup lines, the table, then notes and pairing: rich on a terminal, plain lines when piped."""
    if not console.is_terminal:
        for line in [*_header(comparison), *columns(_headers(comparison), comparison.rows()), *_footer(comparison)]:
            write_plain(console, line)
        return
    for line in _header(comparison):
        console.print(Text(line, style="bold" if not line.startswith(" ") else "dim"), soft_wrap=True)
    console.print(comparison_table(comparison))
    for line in _footer(comparison):
        console.print(Text(line, style="dim"), soft_wrap=True)


def comparison_table(comparison: Comparison) -> Table:
    """The result table for a terminal (also drawn above the progress bars while training)."""
    table = Table(*_headers(comparison), box=box.SIMPLE_HEAD)
    for row in comparison.rows():
        table.add_row(*row[:4], Text(row[4], style=_VERDICT_STYLE.get(row[4], "")))
    return table


def run_line(comparison: Comparison, result: RunResult) -> str:
    """One finished run: '[3/6] fixed seed 1: final 97.50%, best 97.78% (epoch 9), 5120 img/s, 3.1 s'."""
    done = len(comparison.runs)
    extra = "" if result.status == "done" else f" ({result.status})"
    return (f"[{done}/{comparison.total_runs}] {result.variant} seed {result.seed}: final {result.final_acc:.2f}%, "
            f"best {result.best_acc:.2f}% (epoch {result.best_epoch}), {result.images_per_s:.0f} img/s, "
            f"{result.seconds:.1f} s{extra}")


def _headers(comparison: Comparison) -> tuple[str, ...]:
    return ("variant", "final acc. (%)", "best acc. (%)", f"vs {comparison.baseline} (95% CI)", "verdict")


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
