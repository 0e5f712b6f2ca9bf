"""Figures (matplotlib, PNG): Δ along depth for `measure --plot`, accuracy and loss curves for
`train-compare --plot`, the paper's figures for `reproduce --plot`. matplotlib is optional
(`dropcheck[plot]`) and loads only here, on use; the CLI checks for it before any long run.
"""
from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_with
from ..records import Comparison, DropcheckError, Measurement, Report, Reproduction


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


def plot_reproduction(result: Reproduction, path: Path) -> Path:
    """A reproduced figure of the paper (`reproduce --plot`): measured points beside the closed forms."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    try:
        {"fig1": _plot_fig1, "fig3": _plot_fig3, "prop5": _plot_prop5}[result.figure](result, ax)
        ax.set_title(result.title, fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        write_with(path, lambda temp: fig.savefig(temp, format="png", dpi=120))
    finally:
        plt.close(fig)
    return path


def require_matplotlib() -> None:
    """--plot draws with matplotlib: the CLI asks before a long run, not after it."""
    try:
        importlib.import_module("matplotlib")
    except ImportError as exc:
        raise DropcheckError("dependency", "--plot needs matplotlib, which is not installed",
                             "pip install dropcheck[plot]") from exc


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def _lines(ax: Any, rows: Sequence[dict[str, Any]], group: str, x: str, y: str, label: str, style: str) -> None:
    # one colour per group value, so the solid and dashed lines of one setting match
    for index, value in enumerate(dict.fromkeys(row[group] for row in rows)):
        part = [row for row in rows if row[group] == value]
        ax.plot([row[x] for row in part], [row[y] for row in part], style, color=f"C{index}", marker="o",
                markersize=3, label=label.format(value))


def _plot_fig1(result: Reproduction, ax: Any) -> None:
    _lines(ax, result.rows, "mean_w", "width", "delta_post", "Post, E[W]={:g}", "-")
    _lines(ax, result.rows, "mean_w", "width", "delta_pre", "Pre, E[W]={:g}", "--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width n")
    ax.set_ylabel("Δ = Var_test / Var_train")


def _plot_fig3(result: Reproduction, ax: Any) -> None:
    _lines(ax, result.rows, "keep", "var_x0", "delta_res", "residual, p={:g}", "-")
    _lines(ax, result.rows, "keep", "var_x0", "delta_f", "non-residual, p={:g}", "--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("Var[x0]")
    ax.set_ylabel("Δ = Var_test / Var_train")


def _plot_prop5(result: Reproduction, ax: Any) -> None:
    labels = [f"{row['size']}\np={row['keep']:g}" for row in result.rows]
    places = range(len(labels))
    ax.bar([i - 0.2 for i in places], [row["var_h4"] for row in result.rows], 0.4, label="GAP(Dropout(x)) H4")
    ax.bar([i + 0.2 for i in places], [row["var_h5"] for row in result.rows], 0.4, label="Dropout(GAP(x)) H5")
    for offset, key in ((-0.2, "closed_h4"), (0.2, "closed_h5")):
        ax.scatter([i + offset for i in places], [row[key] for row in result.rows], marker="_", s=300, color="k",
                   label="closed form" if key == "closed_h4" else None)
    ax.set_xticks(list(places), labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("variance (train phase)")
