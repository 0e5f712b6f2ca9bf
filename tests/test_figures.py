"""The figures of measure, train-compare and reproduce, read back off the matplotlib objects: axis
labels, legend entries, tick values and the drawn data, not only that a PNG exists."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest

from dropcheck.output import figures
from dropcheck.records import Comparison, Measurement, Report, Reproduction, RunResult

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.collections import PathCollection, PolyCollection  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _bn(module: str, delta: float, flagged_by: tuple[str, ...] = ()) -> Measurement:
    return Measurement(node=module.replace(".", "_"), module=module, kind="batchnorm", delta_mean=delta,
                       delta_min=delta, symmetric_mean=max(delta, 1 / delta), reached_by=flagged_by,
                       flagged=bool(flagged_by), flagged_by=flagged_by)


def _merge(node: str, delta: float) -> Measurement:
    return Measurement(node=node, module=None, kind="merge", delta_mean=delta, delta_min=delta,
                       symmetric_mean=max(delta, 1 / delta), reached_by=(), flagged=False)


def _small_report() -> Report:
    rows = [_bn("stem.bn", 1.0), _bn("layer1.0.bn1", 1.0), _bn("layer1.0.bn2", 0.62, ("layer1.0.drop",)),
            _merge("add", 0.91), _bn("layer2.0.bn1", 0.97), _bn("layer2.0.bn2", 0.55, ("layer2.0.drop",)),
            _merge("add_1", 0.93), _bn("head.bn", 1.0)]
    return Report(target="my_model.py", measurements=rows)


def _legend_texts(ax: Any) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None
    return [text.get_text() for text in legend.get_texts()]


def _tick_texts(axis: Any) -> list[str]:
    return [tick.get_text() for tick in axis.get_ticklabels()]


def _load_png(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    return image.shape[1], image.shape[0]


# --- measure -------------------------------------------------------------------------------------

def test_delta_figure_names_modules_flags_points_and_marks_the_dc001_dropouts() -> None:
    fig = figures.delta_figure([_small_report()])
    (ax,) = fig.axes
    fig.canvas.draw()
    assert _tick_texts(ax.xaxis) == ["stem.bn", "layer1.0.bn1", "layer1.0.bn2", "add", "layer2.0.bn1",
                                     "layer2.0.bn2", "add_1", "head.bn"]
    assert list(ax.get_xticks()) == list(range(8))
    assert "graph order" in ax.get_xlabel() and "Δ = Var_test / Var_train" in ax.get_ylabel()
    legend = _legend_texts(ax)
    assert "BatchNorm input" in legend and "residual merge output" in legend
    assert "BatchNorm input, flagged: a DC001 dropout reaches it" in legend
    assert any(text.startswith("DC001 dropout") for text in legend)
    # the red points are exactly the flagged BatchNorms, at their depth and Δ
    flagged = next(c for c in ax.collections if isinstance(c, PathCollection) and "flagged" in c.get_label())
    assert [tuple(p) for p in flagged.get_offsets()] == [(2.0, 0.62), (5.0, 0.55)]
    assert matplotlib.colors.same_color(flagged.get_facecolor()[0], figures.FLAGGED_COLOUR)
    # one dashed line per DC001 dropout, just before the first BatchNorm it reaches, named
    lines = [line for line in ax.get_lines() if line.get_color() == figures.DROPOUT_COLOUR]
    assert sorted(line.get_xdata()[0] for line in lines) == [1.5, 4.5]
    assert {t.get_text() for t in ax.texts} == {"layer1.0.drop", "layer2.0.drop"}


def test_delta_figure_thins_many_module_names_to_at_most_20() -> None:
    rows = [_bn(f"features.block{i}.norm", 1.0 - 0.003 * i, ("features.block0.drop",) if i else ()) for i in range(121)]
    fig = figures.delta_figure([Report(target="densenet", measurements=rows)])
    (ax,) = fig.axes
    labels, ticks = _tick_texts(ax.xaxis), list(ax.get_xticks())
    assert 10 <= len(labels) <= figures.MAX_TICKS
    assert labels == [rows[int(t)].module for t in ticks]  # each label is the module drawn at that x
    assert ticks[0] == 0 and len({b - a for a, b in zip(ticks, ticks[1:])}) == 1  # evenly spaced
    assert "121, one in 7 named" in ax.get_xlabel()


def test_delta_figure_one_panel_per_measured_target_and_the_png_loads(tmp_path: Path) -> None:
    other = Report(target="other.py", measurements=[_bn("bn", 1.0)])
    failed = Report(target="broken.py", status="error")
    path = figures.plot_deltas([_small_report(), failed, other], tmp_path / "delta.png")
    width, height = _load_png(path)
    assert (width, height) == (12 * 120, int(2 * 5.2 * 120))
    fig = figures.delta_figure([_small_report(), failed, other])
    assert [ax.get_title() for ax in fig.axes] == ["my_model.py", "other.py"]


def test_delta_figure_of_a_real_measure_run(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    import dropcheck

    class Net(nn.Module):  # a user's model: dropout before the second BatchNorm (DC001)
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(8)
            self.drop = nn.Dropout(0.5)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.bn1(self.conv1(x)))
            return self.bn2(self.conv2(self.drop(x)))

    report = dropcheck.measure(Net(), torch.randn(2, 3, 8, 8), batches=1, batch_size=16, device="cpu")
    (ax,) = figures.delta_figure([report]).axes
    assert _tick_texts(ax.xaxis) == ["bn1", "bn2"]
    assert "BatchNorm input, flagged: a DC001 dropout reaches it" in _legend_texts(ax)
    assert [t.get_text() for t in ax.texts] == ["drop"]


# --- train-compare -------------------------------------------------------------------------------

def _run(variant: str, seed: int, accs: list[float], losses: list[float]) -> RunResult:
    epochs = tuple({"epoch": i + 1, "test_acc": a, "train_loss": loss} for i, (a, loss) in enumerate(zip(accs, losses)))
    return RunResult(variant=variant, seed=seed, status="done", epochs=epochs, final_acc=accs[-1],
                     best_acc=max(accs), best_epoch=1, seconds=1.0, images_per_s=1.0, init_sha="i", order_sha="o")


def _comparison(runs: list[RunResult], seeds: list[int]) -> Comparison:
    return Comparison(target="examples/preresnet.py", settings={"seeds": seeds}, baseline="original",
                      variants=[{"name": "original"}, {"name": "fixed"}], runs=runs)


def test_curves_after_one_epoch_draw_visible_points_on_an_integer_tick() -> None:
    comparison = _comparison([_run("original", 0, [91.0], [2.05]), _run("fixed", 0, [92.5], [2.01])], [0])
    fig = figures.curves_figure(comparison)
    acc_ax, loss_ax = fig.axes
    fig.canvas.draw()
    for ax in (acc_ax, loss_ax):
        assert list(ax.get_xticks()) == [1.0]
        assert _tick_texts(ax.xaxis) == ["1"]
        low, high = ax.get_xlim()
        assert low < 1 < high
        drawn = ax.get_lines()
        assert len(drawn) == 2 and all(line.get_marker() == "o" and line.get_markersize() > 0 for line in drawn)
    assert [list(line.get_ydata()) for line in acc_ax.get_lines()] == [[91.0], [92.5]]
    assert _legend_texts(acc_ax) == ["original", "fixed"]  # one seed: no band, none named


def test_curves_over_three_seeds_have_integer_epochs_a_named_band_and_a_plain_loss_axis(tmp_path: Path) -> None:
    runs = [_run(v, s, [80 + s + 2 * e + (v == "fixed") for e in range(3)],
                 [2.1 - 0.02 * e - 0.01 * s for e in range(3)]) for v in ("original", "fixed") for s in range(3)]
    fig = figures.curves_figure(_comparison(runs, [0, 1, 2]))
    acc_ax, loss_ax = fig.axes
    fig.canvas.draw()
    assert list(acc_ax.get_xticks()) == [1.0, 2.0, 3.0] and _tick_texts(acc_ax.xaxis) == ["1", "2", "3"]
    assert acc_ax.get_xlabel() == loss_ax.get_xlabel() == "epoch"
    assert acc_ax.get_ylabel() == "test accuracy (%)" and loss_ax.get_ylabel().startswith("training loss")
    assert _legend_texts(acc_ax) == ["original (mean of 3 seeds)", "fixed (mean of 3 seeds)", "± std over seeds"]
    # the band is the mean ± the sample std over seeds: original, epoch 1 is 80, 81, 82 -> 81 ± 1
    bands = [c for c in acc_ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2
    ys = bands[0].get_paths()[0].vertices[:, 1]
    assert min(ys) == pytest.approx(80.0) and max(ys) == pytest.approx(86.0)
    # the losses (2.06 .. 2.1) read as plain numbers: no offset, no 10^x
    assert loss_ax.get_yscale() == "linear"
    formatter = loss_ax.yaxis.get_major_formatter()
    assert formatter.get_offset() == ""
    shown = [(t.get_text(), t.get_position()[1]) for t in loss_ax.yaxis.get_ticklabels() if t.get_text()]
    assert len(shown) >= 3
    for text, value in shown:  # each label is the tick's own value, written out: "2.06", not "0.06" + offset
        assert re.fullmatch(r"\d+\.\d+", text), text
        assert float(text) == pytest.approx(value, abs=1e-9) and 2.0 <= value <= 2.2
    width, height = _load_png(figures.plot_curves(_comparison(runs, [0, 1, 2]), tmp_path / "c.png"))
    assert (width, height) == (11 * 120, int(4.4 * 120))


def test_curves_many_epochs_keep_integer_ticks_and_a_diverged_seed_is_left_out_where_it_stopped() -> None:
    long = [_run("original", s, [50.0 + e for e in range(40)], [1.0 - 0.01 * e for e in range(40)]) for s in range(2)]
    short = _run("fixed", 0, [60.0, 61.0], [0.5, math.nan])
    acc_ax, loss_ax = figures.curves_figure(_comparison([*long, short], [0, 1])).axes
    acc_ax.figure.canvas.draw()
    ticks = [t for t in acc_ax.get_xticks() if 1 <= t <= 40]
    assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks)
    fixed_loss = loss_ax.get_lines()[1]
    assert list(fixed_loss.get_xdata()) == [1] and list(fixed_loss.get_ydata()) == [0.5]


# --- reproduce -----------------------------------------------------------------------------------

def _fig3_record() -> Reproduction:
    from dropcheck.measurement import reproduce

    rows = tuple({"keep": k, "var_x0": v, "delta_f": reproduce.closed_fig3(k) * 0.99,
                  "closed_f": reproduce.closed_fig3(k), "delta_res": reproduce.closed_fig3(k, v) * 1.01,
                  "closed_res": reproduce.closed_fig3(k, v), "holds": True}
                 for k in (0.5, 0.9) for v in (0.25, 1.0, 4.0))
    curves = reproduce.closed_fig3_curves((0.5, 0.9), (0.25, 1.0, 4.0))
    return Reproduction("fig3", "Figure 3", "setup", "claim", (("keep", reproduce.KEEP_HEADER),), rows,
                        (("delta_f", "closed_f"),), (), curves)


def test_fig3_draws_closed_form_lines_beside_the_measured_points_and_says_p_is_kept() -> None:
    fig = figures.reproduction_figure(_fig3_record())
    (ax,) = fig.axes
    legend = ax.get_legend()
    texts = _legend_texts(ax)
    assert "keep probability (the paper's p)" in legend.get_title().get_text()
    assert texts[:2] == ["p = 0.5, nn.Dropout(0.5)", "p = 0.9, nn.Dropout(0.1)"]
    assert "measured Δ(x0 + f(x0)), residual" in texts and "closed form, residual eq. (31)" in texts
    assert "closed form, non-residual eq. (29)" in texts
    lines = ax.get_lines()
    closed = [line for line in lines if line.get_linestyle() in ("-", "--") and line.get_marker() in ("None", "", None)]
    measured = [line for line in lines if line.get_linestyle() == "None"]
    assert len(closed) == 4 and len(measured) == 4
    # the eq. (31) line for p = 0.5 is the closed form on a fine grid, through the measured Var[x0] range
    residual = next(line for line in closed if line.get_linestyle() == "-")
    xs, ys = residual.get_xdata(), residual.get_ydata()
    assert len(xs) == 41 and xs[0] == pytest.approx(0.25) and xs[-1] == pytest.approx(4.0)
    assert ys[20] == pytest.approx((1.0 + (math.pi - 1) / math.pi) / (1.0 + (math.pi / 0.5 - 1) / math.pi))
    assert ax.get_xlabel().startswith("Var[x0]") and ax.get_ylabel() == "Δ = Var_test / Var_train"


def test_every_reproduced_figure_draws_measured_and_closed_and_names_the_keep_probability(tmp_path: Path) -> None:
    from dropcheck.measurement import reproduce

    setup = reproduce.make_setup("cpu", 256, 1, 0)
    results = [reproduce.run_fig1(setup, widths=(128, 256)), reproduce.run_fig3(setup, keeps=(0.5, 0.9),
                                                                               variances=(0.5, 2.0)),
               reproduce.run_prop5(setup, sizes=(4,), keeps=(0.5, 0.9))]
    for result in results:
        header = dict(result.columns).get("keep")
        assert header in (None, "p (keep)")
        assert any("p (keep) is the keep probability (the paper's p)" in note for note in result.notes)
        (ax,) = figures.reproduction_figure(result).axes
        legend = ax.get_legend()
        said = " ".join([legend.get_title().get_text(), ax.get_xlabel(), *_legend_texts(ax)])
        assert "keep probability (the paper's p)" in said, result.figure
        assert any(t.startswith("measured") for t in _legend_texts(ax))
        assert any(t.startswith("closed form") for t in _legend_texts(ax))
        width, height = _load_png(figures.plot_reproduction(result, tmp_path / f"{result.figure}.png"))
        assert (width, height) == (10 * 120, int(4.8 * 120))
    (prop5_ax,) = figures.reproduction_figure(results[2]).axes
    assert _tick_texts(prop5_ax.xaxis) == ["4x4\np = 0.5", "4x4\np = 0.9"]
    assert "drop probability (nn.Dropout's p) = 1 - p" in prop5_ax.get_xlabel()
    fig1_rows = results[0].rows
    assert all(row["keep"] == 0.5 for row in fig1_rows)
    assert results[1].to_dict()["closed_curves"][0]["label"] == "eq. (31)"


def test_reproduce_text_table_says_p_is_the_keep_probability() -> None:
    from rich.console import Console

    from dropcheck.measurement import reproduce
    from dropcheck.output.text.reproduce import render_reproduction_text

    result = reproduce.run_prop5(reproduce.make_setup("cpu", 64, 1, 0), sizes=(4,), keeps=(0.9,))
    console = Console(record=True, width=200, force_terminal=False)
    render_reproduction_text(result, console)
    text = console.export_text()
    assert "p (keep)" in text.splitlines()[3]
    assert "note: p (keep) is the keep probability (the paper's p): a unit is kept with probability p; " \
           "PyTorch's nn.Dropout takes the drop probability 1 - p" in text


def test_figures_leave_pyplot_alone() -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    figures.delta_figure([_small_report()])
    figures.reproduction_figure(_fig3_record())
    assert plt.get_fignums() == before  # no figure left open in pyplot's registry (a notebook would show it)
