"""Figures (matplotlib, PNG): Δ along depth for `measure --plot`, accuracy and loss curves for
`train-compare --plot`, the paper's figures for `reproduce --plot`. matplotlib is optional
(`dropcheck[plot]`) and loads only here, on use; the CLI checks for it before any long run.

Each figure is built by a `*_figure` function on a bare `matplotlib.figure.Figure`, never through
pyplot, so drawing changes no global state (a notebook keeps its backend); `plot_*` writes it as a PNG,
atomically. Tests and notebooks take the Figure itself.
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_with
from ..records import Comparison, DropcheckError, Measurement, Report, Reproduction
from ..records.measure import DROP_PROBABILITY, KEEP_PROBABILITY

MAX_TICKS = 20  # module names along the depth axis; more are thinned to every k-th
MAX_DROPOUT_NAMES = 8  # DC001 dropouts named on the plot; with more, the lines alone
MAX_EPOCH_TICKS = 20  # one tick per epoch up to this many, then matplotlib's integer ticks
BAND_LABEL = "± std over seeds"
DELTA_LABEL = "Δ = Var_test / Var_train"
FLAGGED_COLOUR, PLAIN_COLOUR, DROPOUT_COLOUR = "tab:red", "tab:blue", "tab:orange"


def plot_deltas(reports: Sequence[Report], path: Path) -> Path:
    """Δ along depth for each measured target, one panel each (one PNG)."""
    return _save(delta_figure(reports), path)


def plot_curves(comparison: Comparison, path: Path) -> Path:
    """Test accuracy and training loss per epoch (one PNG)."""
    return _save(curves_figure(comparison), path)


def plot_reproduction(result: Reproduction, path: Path) -> Path:
    """A reproduced figure of the paper (one PNG)."""
    return _save(reproduction_figure(result), path)


def require_matplotlib() -> None:
    """--plot draws with matplotlib: the CLI asks before a long run, not after it."""
    try:
        importlib.import_module("matplotlib")
    except ImportError as exc:
        raise DropcheckError("dependency", "--plot needs matplotlib, which is not installed",
                             "pip install dropcheck[plot]") from exc


def _new_figure(width: float, height: float) -> Any:
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _save(fig: Any, path: Path) -> Path:
    write_with(path, lambda temp: fig.savefig(temp, format="png", dpi=120))
    return path


# --- measure: Δ along depth ----------------------------------------------------------------------

def delta_figure(reports: Sequence[Report]) -> Any:
    """Δ at every BatchNorm input and residual merge output in graph order, x labelled with module
    names; flagged points (a DC001 dropout reaches them) in red, each DC001 dropout a vertical line."""
    measured = [r for r in reports if r.measurements]
    fig = _new_figure(12, 5.2 * max(1, len(measured)))
    axes = fig.subplots(max(1, len(measured)), 1, squeeze=False)[:, 0]
    if not measured:
        axes[0].text(0.5, 0.5, "nothing measured", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    for ax, report in zip(axes, measured):
        _deltas_axes(ax, report.measurements or [])
        ax.set_title(report.target, fontsize=10)
    fig.tight_layout()
    return fig


def _deltas_axes(ax: Any, rows: Sequence[Measurement]) -> None:
    xs = range(len(rows))
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":", label="Δ = 1: train and test agree")
    ax.plot(list(xs), [m.delta_mean for m in rows], color="0.8", linewidth=0.8, zorder=1)  # the depth order
    for kind, marker, what in (("batchnorm", "o", "BatchNorm input"), ("merge", "s", "residual merge output")):
        for flagged in (False, True):
            points = [(x, m.delta_mean) for x, m in zip(xs, rows) if m.kind == kind and m.flagged == flagged]
            if points:
                label = f"{what}, flagged: a DC001 dropout reaches it" if flagged else what
                ax.scatter(*zip(*points), marker=marker, s=22, zorder=3, label=label,
                           color=FLAGGED_COLOUR if flagged else PLAIN_COLOUR)
    _mark_dropouts(ax, rows)
    step = math.ceil(len(rows) / MAX_TICKS) or 1
    ticks = list(range(0, len(rows), step))
    ax.set_xticks(ticks, [rows[i].module or rows[i].node for i in ticks], rotation=90, fontsize=7)
    ax.set_xlim(-0.7, len(rows) - 0.3)
    thinned = f", one in {step} named" if step > 1 else ""
    ax.set_xlabel(f"BatchNorm input / residual merge output, in graph order ({len(rows)}{thinned})")
    ax.set_ylabel(f"{DELTA_LABEL}\n(mean over channels)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)


def _mark_dropouts(ax: Any, rows: Sequence[Measurement]) -> None:
    # a DC001 dropout sits before the first BatchNorm it reaches: a line half a step to its left
    first: dict[str, int] = {}
    for x, m in enumerate(rows):
        for dropout in m.flagged_by:
            first.setdefault(dropout, x)
    for index, (dropout, x) in enumerate(first.items()):
        ax.axvline(x - 0.5, color=DROPOUT_COLOUR, linewidth=1.0, linestyle="--", zorder=2,
                   label="DC001 dropout (before the BatchNorm it reaches)" if index == 0 else None)
        if len(first) <= MAX_DROPOUT_NAMES:
            ax.text(x - 0.5, 0.02, dropout, rotation=90, fontsize=7, color=DROPOUT_COLOUR, ha="right", va="bottom",
                    transform=ax.get_xaxis_transform())


# --- train-compare: accuracy and loss per epoch --------------------------------------------------

def curves_figure(comparison: Comparison) -> Any:
    """Per variant the mean over seeds per epoch (line and markers), shaded ± one std over seeds."""
    fig = _new_figure(11, 4.4)
    acc_ax, loss_ax = fig.subplots(1, 2)
    last, banded = 1, False
    for index, name in enumerate(comparison.variant_names):
        runs = [r for r in comparison.runs if r.variant == name and r.epochs]
        if not runs:
            continue
        label = name if len(runs) == 1 else f"{name} (mean of {len(runs)} seeds)"
        for ax, key in ((acc_ax, "test_acc"), (loss_ax, "train_loss")):
            epochs, means, stds = _by_epoch(runs, key)
            ax.plot(epochs, means, color=f"C{index}", marker="o", markersize=4, label=label,
                    markevery=max(1, len(epochs) // 40))  # every epoch, or every k-th of a long run
            if len(runs) > 1:
                ax.fill_between(epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                                color=f"C{index}", alpha=0.2, linewidth=0)
                banded = True
            last = max([last, *epochs])
    for ax in (acc_ax, loss_ax):
        _epoch_axis(ax, last)
    acc_ax.set(ylabel="test accuracy (%)", title=comparison.target)
    loss_ax.set(ylabel="training loss (mean over the epoch)", title="training loss")
    handles, _ = acc_ax.get_legend_handles_labels()
    if banded:
        from matplotlib.patches import Patch

        handles.append(Patch(facecolor="grey", alpha=0.3, label=BAND_LABEL))
    if handles:
        acc_ax.legend(handles=handles, fontsize=8, loc="lower right")
    else:
        acc_ax.text(0.5, 0.5, "no finished epochs", ha="center", va="center", transform=acc_ax.transAxes)
    fig.tight_layout()
    return fig


def _by_epoch(runs: Sequence[Any], key: str) -> tuple[list[int], list[float], list[float]]:
    # runs may differ in length (a diverged run stops early); non-finite values are left out
    values: dict[int, list[float]] = {}
    for run in runs:
        for number, epoch in enumerate(run.epochs, 1):
            value = float(epoch.get(key, math.nan))
            if math.isfinite(value):
                values.setdefault(int(epoch.get("epoch", number)), []).append(value)
    epochs = sorted(values)
    means = [sum(values[e]) / len(values[e]) for e in epochs]
    return epochs, means, [_std(values[e], m) for e, m in zip(epochs, means)]


def _std(values: Sequence[float], mean: float) -> float:
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0


def _epoch_axis(ax: Any, last: int) -> None:
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    if last <= MAX_EPOCH_TICKS:
        ax.set_xticks(range(1, last + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, last + 0.5)
    ax.set_xlabel("epoch")
    plain = ScalarFormatter(useOffset=False)  # "2.05", never "2x10^0" or "+2" above the axis
    plain.set_scientific(False)
    ax.yaxis.set_major_formatter(plain)
    ax.grid(alpha=0.3)


# --- reproduce: the paper's figures --------------------------------------------------------------

def reproduction_figure(result: Reproduction) -> Any:
    """Measured points (markers) beside the closed forms (lines); p named as the keep probability."""
    fig = _new_figure(10, 4.8)
    ax = fig.subplots()
    {"fig1": _fig1, "fig3": _fig3, "prop5": _prop5}[result.figure](result, ax)
    ax.set_title(result.title, fontsize=9)
    fig.tight_layout()
    return fig


def _drop_of(keep: float) -> str:
    return f"nn.Dropout({1 - keep:.2g})"


def _style_legend(ax: Any, groups: Sequence[tuple[str, str]], styles: Sequence[tuple[str, dict[str, Any]]],
                  title: str) -> None:
    """Colours say the setting (`groups`: label, colour); marker or line style says measured or closed form."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colour, linewidth=3, label=label) for label, colour in groups]
    handles += [Line2D([], [], color="k", label=label, **style) for label, style in styles]
    ax.legend(handles=handles, fontsize=7, title=title, title_fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))


def _fig1(result: Reproduction, ax: Any) -> None:
    means = list(dict.fromkeys(row["mean_w"] for row in result.rows))
    for index, mean in enumerate(means):
        part = [row for row in result.rows if row["mean_w"] == mean]
        widths = [row["width"] for row in part]
        for measured, closed, marker, line in (("delta_post", "closed_post", "o", "-"),
                                               ("delta_pre", "closed_pre", "^", "--")):
            ax.plot(widths, [row[closed] for row in part], line, color=f"C{index}", linewidth=1)
            ax.plot(widths, [row[measured] for row in part], marker, color=f"C{index}", markersize=5)
    keep = result.rows[0].get("keep") if result.rows else None
    title = f"p = {KEEP_PROBABILITY} = {keep:g}\n({_drop_of(keep)}); colour: E[W]" if keep is not None else "E[W]"
    _style_legend(ax, [(f"E[W] = {m:g}", f"C{i}") for i, m in enumerate(means)],
                  [("measured Δ(Post), Dropout(Wx)", {"marker": "o", "linestyle": ""}),
                   ("measured Δ(Pre), W Dropout(x)", {"marker": "^", "linestyle": ""}),
                   ("closed form Post, eq. (6)", {"linestyle": "-"}),
                   ("closed form Pre", {"linestyle": "--"})], title)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width n")
    ax.set_ylabel(DELTA_LABEL)


def _fig3(result: Reproduction, ax: Any) -> None:
    keeps = list(dict.fromkeys(row["keep"] for row in result.rows))
    for index, keep in enumerate(keeps):
        part = [row for row in result.rows if row["keep"] == keep]
        for curve in (c for c in result.curves if c.group == keep):
            ax.plot(curve.xs, curve.ys, "-" if curve.measured == "delta_res" else "--", color=f"C{index}",
                    linewidth=1)
        for key, marker in (("delta_res", "o"), ("delta_f", "s")):
            ax.plot([row["var_x0"] for row in part], [row[key] for row in part], marker, color=f"C{index}",
                    markersize=5)
    labels = {c.measured: c.label for c in result.curves}
    _style_legend(ax, [(f"p = {k:g}, {_drop_of(k)}", f"C{i}") for i, k in enumerate(keeps)],
                  [("measured Δ(x0 + f(x0)), residual", {"marker": "o", "linestyle": ""}),
                   ("measured Δ(f(x0)), non-residual", {"marker": "s", "linestyle": ""}),
                   (f"closed form, residual {labels.get('delta_res', '')}".rstrip(), {"linestyle": "-"}),
                   (f"closed form, non-residual {labels.get('delta_f', '')}".rstrip(), {"linestyle": "--"})],
                  f"p = {KEEP_PROBABILITY}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("Var[x0] (variance of the block's input)")
    ax.set_ylabel(DELTA_LABEL)


def _prop5(result: Reproduction, ax: Any) -> None:
    labels = [f"{row['size']}\np = {row['keep']:g}" for row in result.rows]
    places = range(len(labels))
    ax.bar([i - 0.2 for i in places], [row["var_h4"] for row in result.rows], 0.4,
           label="measured Var, GAP(Dropout(x)) at H4")
    ax.bar([i + 0.2 for i in places], [row["var_h5"] for row in result.rows], 0.4,
           label="measured Var, Dropout(GAP(x)) at H5")
    for offset, key in ((-0.2, "closed_h4"), (0.2, "closed_h5")):
        ax.scatter([i + offset for i in places], [row[key] for row in result.rows], marker="_", s=300, color="k",
                   zorder=3, label="closed form (Proposition 5)" if key == "closed_h4" else None)
    ax.set_xticks(list(places), labels, fontsize=7)
    ax.set_xlabel(f"feature map H×W, and p = {KEEP_PROBABILITY}; {DROP_PROBABILITY} = 1 - p")
    ax.set_yscale("log")
    ax.set_ylabel("variance in the train phase")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
