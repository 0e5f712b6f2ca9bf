"""Rerun the paper's module tests: Figure 1 (Proposition 2), Figure 3 (Propositions 3-4) and
Proposition 5, each next to its closed form, and draw the figures.

`p` is the KEEP probability throughout, as in the paper (Definition 1); PyTorch's
`nn.Dropout` takes the drop probability, so every dropout here is `nn.Dropout(1 - p)`.
Δ = Var_test / Var_train (Definition 2) is computed per unit over all samples, from float64
streaming statistics (`ChannelStats`), then averaged over units. BatchNorms are calibrated
with train-mode passes (cumulative running statistics) and then stay in eval mode, so only
the dropout differs between the test and the train pass over the same inputs.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..records import DropcheckError, Reproduction
from ..records.measure import KEEP_PROBABILITY, ClosedCurve
from .device import check_device, resolve_device
from .stats import ChannelStats

FIGURES = ("fig1", "fig3", "prop5")
PAPER_BATCH = 100_000  # the paper's mini-batch, used on CUDA
CPU_BATCH = 8192
DEFAULT_BATCHES = 4
KEEP_HEADER = "p (keep)"  # the tables' column; KEEP_NOTE says what it is
KEEP_NOTE = (f"p (keep) is the {KEEP_PROBABILITY}: a unit is kept with probability p; PyTorch's nn.Dropout "
             "takes the drop probability 1 - p")
CURVE_POINTS = 41  # closed forms drawn as lines are evaluated on this many points

FIG1_WIDTHS = (128, 256, 512, 1024, 2048)
FIG1_MEANS = (-0.02, -0.01, 0.0, 0.01, 0.02)  # E[W]; the paper does not list its values
FIG1_KEEP = 0.5
FIG3_WIDTH = 128
FIG3_KEEPS = (0.5, 0.6, 0.7, 0.8, 0.9)
FIG3_VARIANCES = (0.25, 0.5, 1.0, 2.0, 4.0)  # Var[x0]
PROP5_SIZES = (4, 7, 14)  # H = W
PROP5_KEEPS = (0.5, 0.7, 0.9)
PROP5_CHANNELS = 16
# moments of ReLU(z), z ~ N(0, 1): eqs. (12)-(13) with γ = 1
RELU_MEAN = 1.0 / math.sqrt(2.0 * math.pi)
RELU_VAR = (math.pi - 1.0) / (2.0 * math.pi)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Setup:
    device: torch.device
    batch_size: int
    batches: int
    seed: int

    def describe(self) -> str:
        return f"batch {self.batch_size} x {self.batches} on {self.device.type} (the paper uses 10^5 on a GPU)"


def make_setup(device: str = "auto", batch_size: int | None = None, batches: int = DEFAULT_BATCHES,
               seed: int = 0) -> Setup:
    """Resolve `auto` and the batch size (10^5 on CUDA as in the paper, smaller on CPU)."""
    check_device(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DropcheckError("usage", f"--device {device}: CUDA is not available", "use --device cpu or auto")
    resolved = resolve_device(device)
    use_cuda = resolved.type == "cuda"
    size = batch_size if batch_size is not None else (PAPER_BATCH if use_cuda else CPU_BATCH)
    if size < 2 or batches < 1:
        raise DropcheckError("usage", f"--batch-size {size} x --batches {batches} is too small",
                             "give a batch size of at least 2 and at least one batch")
    return Setup(resolved, size, batches, seed)


def total_steps(figure: str, setup: Setup) -> int:
    """How many times `reproduce_figure` calls `progress` (calibration and measured batches)."""
    per_point = {"fig1": 2 * len(FIG1_WIDTHS), "fig3": 2 * len(FIG3_VARIANCES), "prop5": 1}[figure]
    return per_point * setup.batches


def reproduce_figure(figure: str, setup: Setup, progress: Progress | None = None) -> Reproduction:
    """Run one of FIGURES with its default grid; deterministic given `setup.seed`."""
    runners = {"fig1": run_fig1, "fig3": run_fig3, "prop5": run_prop5}
    if figure not in runners:
        raise DropcheckError("usage", f"unknown figure '{figure}'", f"choose one of {', '.join(FIGURES)}")
    try:
        return runners[figure](setup, progress=progress)
    except RuntimeError as exc:  # CUDA's OutOfMemoryError is one; the CPU allocator's message says so
        if not isinstance(exc, torch.cuda.OutOfMemoryError) and "can't allocate memory" not in str(exc):
            raise
        raise DropcheckError("resources", f"out of memory at batch size {setup.batch_size} on {setup.device.type}",
                             "give a smaller --batch-size and more --batches") from exc


# --- shared pieces -------------------------------------------------------------------------------

@contextmanager
def _seeded(setup: Setup) -> Iterator[None]:
    # the caller's RNG state is restored afterwards (style guide §6)
    devices = [setup.device] if setup.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(setup.seed)
        yield


def _he_linear(n: int, mean: float = 0.0) -> nn.Linear:
    # Var[W] = 2/n (He initialisation); `mean` shifts E[W] as Figure 1 does
    linear = nn.Linear(n, n, bias=False)
    with torch.no_grad():
        linear.weight.normal_(mean, math.sqrt(2.0 / n))
    return linear


def _bn_relu_w_bn_relu(n: int) -> nn.Sequential:
    # momentum=None: running statistics are the plain average over the calibration batches
    return nn.Sequential(nn.BatchNorm1d(n, momentum=None), nn.ReLU(), _he_linear(n),
                         nn.BatchNorm1d(n, momentum=None), nn.ReLU())


@torch.no_grad()
def _calibrate(module: nn.Module, make_input: Callable[[], torch.Tensor], setup: Setup,
               progress: Progress, label: str) -> None:
    for bn in module.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            bn.reset_running_stats()  # with momentum=None, stale counts would mix in an earlier input
    module.train()
    for _ in range(setup.batches):
        module(make_input())
        progress(f"calibrating {label}")
    module.eval()


def _dropout(keep: float) -> nn.Dropout:
    return nn.Dropout(1.0 - keep).train()  # nn.Dropout takes the drop probability


def _delta(test: ChannelStats, train: ChannelStats) -> float:
    """Δ per unit, averaged over units."""
    return float((test.variance / train.variance).mean())


def _no_progress(_: str) -> None:
    pass


# --- Figure 1: PostDropout vs PreDropout (Proposition 2) -----------------------------------------

def run_fig1(setup: Setup, widths: Sequence[int] = FIG1_WIDTHS, means: Sequence[float] = FIG1_MEANS,
             keep: float = FIG1_KEEP, progress: Progress | None = None) -> Reproduction:
    """Δ(Dropout(Wx)) and Δ(W Dropout(x)) for x from [BN-ReLU-W-BN-ReLU] fed N(0, 1)."""
    rows: list[dict[str, Any]] = []
    with _seeded(setup):
        for n in widths:
            rows.extend(_fig1_width(setup, n, means, keep, progress or _no_progress))
    return Reproduction(
        "fig1", "Figure 1 (Proposition 2): PostDropout Dropout(Wx) vs PreDropout W Dropout(x)", setup.describe(),
        "Δ(Post) < Δ(Pre) < 1 for E[W] ≠ 0",
        (("width", "width"), ("mean_w", "E[W]"), ("delta_post", "Δ(Post)"), ("closed_post", "eq. (6)"),
         ("delta_pre", "Δ(Pre)"), ("closed_pre", "closed"), ("holds", "holds")),
        tuple(rows), (("delta_post", "closed_post"), ("delta_pre", "closed_pre")),
        (f"p (keep) = {keep:g}, i.e. nn.Dropout({1 - keep:g}); Var[W] = 2/n; the E[W] grid is ours "
         "(the paper does not list its values)", KEEP_NOTE,
         "closed forms use the measured test-phase moments of z = Wx and x: eq. (6) for Post; for Pre "
         "Var_train = Var[z] + (1-p)/p · Σ_j w_ij² E[x_j²], eq. (6) applied to each input"))


@torch.no_grad()
def _fig1_width(setup: Setup, n: int, means: Sequence[float], keep: float, progress: Progress) -> list[dict[str, Any]]:
    device, size = setup.device, setup.batch_size
    pipeline = _bn_relu_w_bn_relu(n).to(device)
    weights = [_he_linear(n, mean).weight.detach().to(device) for mean in means]
    drop = _dropout(keep)
    _calibrate(pipeline, lambda: torch.randn(size, n, device=device), setup, progress, f"width {n}")
    x_stats = ChannelStats()
    stats = [(ChannelStats(), ChannelStats(), ChannelStats()) for _ in means]  # test, post, pre
    for _ in range(setup.batches):
        x = pipeline(torch.randn(size, n, device=device))
        x_stats.update(x)
        for w, (test, post, pre) in zip(weights, stats):
            z = x @ w.T
            test.update(z)
            post.update(drop(z))
            pre.update(drop(x) @ w.T)
        progress(f"measuring width {n}")
    x_square = x_stats.variance + x_stats.mean ** 2
    return [_fig1_row(n, mean, keep, w, x_square, *s) for mean, w, s in zip(means, weights, stats)]


def _fig1_row(n: int, mean: float, keep: float, w: torch.Tensor, x_square: torch.Tensor,
              test: ChannelStats, post: ChannelStats, pre: ChannelStats) -> dict[str, Any]:
    var_z, mean_z = test.variance, test.mean
    drop_term = (1.0 - keep) / keep
    closed_post = var_z / (var_z / keep + drop_term * mean_z ** 2)  # eq. (6)
    closed_pre = var_z / (var_z + drop_term * ((w.double() ** 2) @ x_square))
    delta_post, delta_pre = _delta(test, post), _delta(test, pre)
    holds = None if mean == 0 else delta_post < delta_pre < 1.0
    return {"width": n, "mean_w": mean, "keep": keep, "delta_post": delta_post,
            "closed_post": float(closed_post.mean()), "delta_pre": delta_pre, "closed_pre": float(closed_pre.mean()), "holds": holds}


# --- Figure 3: non-residual vs residual block (Propositions 3-4) ---------------------------------

def run_fig3(setup: Setup, keeps: Sequence[float] = FIG3_KEEPS, variances: Sequence[float] = FIG3_VARIANCES,
             n: int = FIG3_WIDTH, progress: Progress | None = None) -> Reproduction:
    """Δ(f(x0)) and Δ(x0 + f(x0)) for the [BN-ReLU-W-BN-ReLU-Dropout-W] branch f, dropout at P6."""
    rows: list[dict[str, Any]] = []
    with _seeded(setup):
        head, tail = _bn_relu_w_bn_relu(n).to(setup.device), _he_linear(n).to(setup.device)
        for var_x0 in variances:
            rows.extend(_fig3_variance(setup, head, tail, var_x0, keeps, progress or _no_progress))
    rows.sort(key=lambda row: (row["keep"], row["var_x0"]))
    return Reproduction(
        "fig3", "Figure 3 (Propositions 3-4): non-residual f(x0) vs residual x0 + f(x0)", setup.describe(),
        "Δ(non-residual) < Δ(residual) < 1",
        (("keep", KEEP_HEADER), ("var_x0", "Var[x0]"), ("delta_f", "Δ(f)"), ("closed_f", "eq. (29)"),
         ("delta_res", "Δ(x0+f)"), ("closed_res", "eq. (31)"), ("holds", "holds")),
        tuple(rows), (("delta_f", "closed_f"), ("delta_res", "closed_res")),
        (f"width n = {n}, He initialisation N(0, 2/n), first block (l = 0), γ = 1", KEEP_NOTE),
        closed_fig3_curves(keeps, variances))


@torch.no_grad()
def _fig3_variance(setup: Setup, head: nn.Module, tail: nn.Linear, var_x0: float, keeps: Sequence[float],
                   progress: Progress) -> list[dict[str, Any]]:
    device, size, n = setup.device, setup.batch_size, tail.in_features

    def make_x0() -> torch.Tensor:
        return math.sqrt(var_x0) * torch.randn(size, n, device=device)

    # the first BN sees Var[x0]: recalibrate for every value
    _calibrate(head, make_x0, setup, progress, f"Var[x0] = {var_x0:g}")
    f_test, res_test = ChannelStats(), ChannelStats()
    train = [(ChannelStats(), ChannelStats()) for _ in keeps]  # f, x0 + f
    for _ in range(setup.batches):
        x0 = make_x0()
        h = head(x0)
        f = tail(h)
        f_test.update(f)
        res_test.update(x0 + f)
        for keep, (f_train, res_train) in zip(keeps, train):
            f = tail(_dropout(keep)(h))
            f_train.update(f)
            res_train.update(x0 + f)
        progress(f"measuring Var[x0] = {var_x0:g}")
    return [_fig3_row(keep, var_x0, _delta(f_test, f_train), _delta(res_test, res_train))
            for keep, (f_train, res_train) in zip(keeps, train)]


def _fig3_row(keep: float, var_x0: float, delta_f: float, delta_res: float) -> dict[str, Any]:
    return {"keep": keep, "var_x0": var_x0, "delta_f": delta_f, "closed_f": closed_fig3(keep),
            "delta_res": delta_res, "closed_res": closed_fig3(keep, var_x0), "holds": delta_f < delta_res < 1.0}


def closed_fig3_curves(keeps: Sequence[float], variances: Sequence[float]) -> tuple[ClosedCurve, ...]:
    """Eq. (31) per keep on a fine log grid over the Var[x0] range, and eq. (29), which does not depend on it."""
    low, high = math.log(min(variances)), math.log(max(variances))
    xs = tuple(math.exp(low + (high - low) * i / (CURVE_POINTS - 1)) for i in range(CURVE_POINTS))
    curves = []
    for keep in keeps:
        curves.append(ClosedCurve("eq. (31)", "delta_res", "keep", keep, xs, tuple(closed_fig3(keep, v) for v in xs)))
        curves.append(ClosedCurve("eq. (29)", "delta_f", "keep", keep, (xs[0], xs[-1]), (closed_fig3(keep),) * 2))
    return tuple(curves)


def closed_fig3(keep: float, var_x0: float | None = None) -> float:
    """Eq. (29) for the non-residual block; eq. (31) with l = 0, γ = 1 for the residual one."""
    test, train = (math.pi - 1.0) / math.pi, (math.pi / keep - 1.0) / math.pi  # eqs. (18)-(19)
    if var_x0 is None:
        return test / train
    return (var_x0 + test) / (var_x0 + train)


# --- Proposition 5: dropout before (H4) vs after (H5) global average pooling ----------------------

def run_prop5(setup: Setup, sizes: Sequence[int] = PROP5_SIZES, keeps: Sequence[float] = PROP5_KEEPS,
              channels: int = PROP5_CHANNELS, progress: Progress | None = None) -> Reproduction:
    """Var[GAP(Dropout(x))] vs Var[Dropout(GAP(x))] for x = ReLU(N(0, 1)) feature maps."""
    with _seeded(setup), torch.no_grad():
        stats = {(s, keep): (ChannelStats(), ChannelStats()) for s in sizes for keep in keeps}  # H4, H5
        gap_stats = {s: ChannelStats() for s in sizes}
        for _ in range(setup.batches):
            for s in sizes:
                x = torch.relu(torch.randn(setup.batch_size, channels, s, s, device=setup.device))
                gap = x.mean(dim=(2, 3))
                gap_stats[s].update(gap)
                for keep in keeps:
                    h4, h5 = stats[(s, keep)]
                    h4.update(_dropout(keep)(x).mean(dim=(2, 3)))  # element-wise masks
                    h5.update(_dropout(keep)(gap))  # one mask per channel
            (progress or _no_progress)("measuring")
    rows = tuple(_prop5_row(s, keep, gap_stats[s], *stats[(s, keep)]) for s in sizes for keep in keeps)
    return Reproduction(
        "prop5", "Proposition 5: GAP(Dropout(x)) at H4 vs Dropout(GAP(x)) at H5", setup.describe(),
        "Var[H4] < Var[H5]",
        (("size", "HxW"), ("keep", KEEP_HEADER), ("var_gap", "Var[GAP]"), ("closed_gap", "σ²/S"),
         ("var_h4", "Var[H4]"), ("closed_h4", "closed"), ("var_h5", "Var[H5]"), ("closed_h5", "closed"),
         ("holds", "holds")),
        rows, (("var_gap", "closed_gap"), ("var_h4", "closed_h4"), ("var_h5", "closed_h5")),
        (f"x = ReLU(N(0, 1)), {channels} channels, i.i.d. entries with μ = 1/√(2π), σ² = (π-1)/(2π); "
         "S = H·W; variances are averaged over channels", KEEP_NOTE))


def _prop5_row(s: int, keep: float, gap: ChannelStats, h4: ChannelStats, h5: ChannelStats) -> dict[str, Any]:
    var_h4, var_h5 = float(h4.variance.mean()), float(h5.variance.mean())
    closed = closed_prop5(keep, s * s)
    return {"size": f"{s}x{s}", "keep": keep, "var_gap": float(gap.variance.mean()), "closed_gap": closed["gap"],
            "var_h4": var_h4, "closed_h4": closed["h4"], "var_h5": var_h5, "closed_h5": closed["h5"],
            "holds": var_h4 < var_h5}


def closed_prop5(keep: float, positions: int) -> dict[str, float]:
    """Var of GAP(x), GAP(Dropout(x)) and Dropout(GAP(x)) for i.i.d. ReLU(N(0, 1)) entries."""
    drop_term = (1.0 - keep) / keep
    return {"gap": RELU_VAR / positions,
            "h4": (RELU_VAR / keep + drop_term * RELU_MEAN ** 2) / positions,  # eq. (6), then the mean of S
            "h5": RELU_VAR / positions / keep + drop_term * RELU_MEAN ** 2}  # eq. (6) on GAP(x)
