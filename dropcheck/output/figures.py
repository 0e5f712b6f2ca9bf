"""Figures (matplotlib, PNG): Δ along depth for `measure --plot`, accuracy and loss curves for
`train-compare --plot`. matplotlib is optional (`dropcheck[plot]`) and loads only here, on use.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_with
from ..records import Comparison, DropcheckError, Measurement, Report


def plot_deltas(reports: Sequence[Report], path: Path) -> Path:
    """Δ along depth for each measured target (one PNG); flagged BatchNorms in red."""
    plt = _pyplot()
    measured = [r for r in reports if r.measurements]
    fig, axes = plt.subplots(len(measured) or 1, 1, figsize=(9, 3.2 * max(1, len(measured))), squeeze=False)
    for ax, report in zip(axes[:, 0], measured):
        _plot_deltas_of(ax, report.measurements or [])
        ax.set_title(report.target, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(comparison: Comparison, path: Path) -> Path:
    """Test accuracy and training loss per epoch: mean over seeds per variant, the seeds' range shaded."""
    plt = _pyplot()
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


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed), or a usage error saying how to get it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise DropcheckError("usage", "--plot needs matplotlib", "pip install 'dropcheck[plot]'") from exc
    return plt


def _plot_deltas_of(ax: Any, rows: Sequence[Measurement]) -> None:
    xs = list(range(len(rows)))
    ax.axhline(1.0, color="grey", linewidth=0.8)
    for kind, marker in (("batchnorm", "o"), ("merge", "s")):
        points = [(x, m) for x, m in zip(xs, rows) if m.kind == kind]
        if points:
            ax.scatter([x for x, _ in points], [m.delta_mean for _, m in points], marker=marker, s=18,
                       c=["tab:red" if m.flagged else "tab:blue" for _, m in points], label=kind)
    ax.set_xlabel("BatchNorm input / residual merge output, in graph order")
    ax.set_ylabel("Δ (mean over channels)")
    ax.legend(loc="lower left", fontsize=8)


def _band(ax: Any, curves: Sequence[Sequence[dict[str, float]]], key: str, label: str) -> None:
    n = min(len(c) for c in curves)
    xs = list(range(1, n + 1))
    values = [[c[i][key] for c in curves] for i in range(n)]
    ax.plot(xs, [sum(v) / len(v) for v in values], label=label)
    if len(curves) > 1:
        ax.fill_between(xs, [min(v) for v in values], [max(v) for v in values], alpha=0.2)
