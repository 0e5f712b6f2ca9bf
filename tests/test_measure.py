"""measure: Δ against the paper's closed forms, and against the audit's reachability."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from dropcheck.analysis.capture import capture_graph
from dropcheck.analysis.load import load_target
from dropcheck.measurement.deltas import measure_model
from dropcheck.records import Measurement, Target
from dropcheck.analysis.sites import find_sites
from dropcheck.measurement.stats import ChannelStats

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
WIDTH = 128


def _measure(model: nn.Module, shape: tuple[int, ...], count: int = 6) -> list[Measurement]:
    target = Target(spec="test", model=model, example_input=torch.randn(*shape), origin="api")
    capture = capture_graph(target)

    def batches():
        generator = torch.Generator().manual_seed(0)
        return (torch.randn(*shape, generator=generator) for _ in range(count))

    return measure_model(capture, find_sites(capture), batches, torch.device("cpu"))


class _Branch(nn.Module):
    """[BN–ReLU–W–BN–ReLU–Dropout–W] with He init (paper §2.3), observed by a final BatchNorm."""

    def __init__(self, keep: float, residual: bool) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm1d(WIDTH), nn.BatchNorm1d(WIDTH)
        self.w1, self.w2 = nn.Linear(WIDTH, WIDTH, bias=False), nn.Linear(WIDTH, WIDTH, bias=False)
        for w in (self.w1, self.w2):
            nn.init.normal_(w.weight, 0.0, math.sqrt(2.0 / WIDTH))
        self.drop = nn.Dropout(1.0 - keep)  # the paper's p keeps; PyTorch's p drops
        self.observe = nn.BatchNorm1d(WIDTH, affine=False)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.w2(self.drop(torch.relu(self.bn2(self.w1(torch.relu(self.bn1(x)))))))
        return self.observe(x + f if self.residual else f)


def _at(measurements: list[Measurement], module: str) -> Measurement:
    return next(m for m in measurements if m.module == module)


@pytest.mark.parametrize("keep", [0.5, 0.7, 0.9])
def test_non_residual_delta_matches_eq_29(keep: float) -> None:
    delta = _at(_measure(_Branch(keep, residual=False), (4096, WIDTH)), "observe").delta_mean
    assert delta == pytest.approx((math.pi - 1) / (math.pi / keep - 1), rel=0.02)


@pytest.mark.parametrize("keep", [0.5, 0.7, 0.9])
def test_residual_delta_matches_eq_31(keep: float) -> None:
    # l = 0, γ = 1, Var[x0] = 1: (Var[x0] + (π-1)/π) / (Var[x0] + (π/p-1)/π)
    measurements = _measure(_Branch(keep, residual=True), (4096, WIDTH))
    expected = (1 + (math.pi - 1) / math.pi) / (1 + (math.pi / keep - 1) / math.pi)
    assert _at(measurements, "observe").delta_mean == pytest.approx(expected, rel=0.02)
    merge = next(m for m in measurements if m.kind == "merge")
    assert merge.delta_mean == pytest.approx(expected, rel=0.02) and merge.reached_by == ("drop",)


def test_bns_no_dropout_reaches_have_delta_exactly_one() -> None:
    measurements = _measure(_Branch(0.5, residual=False), (512, WIDTH), count=2)
    for name in ("bn1", "bn2"):
        m = _at(measurements, name)
        assert (m.delta_mean, m.delta_min, m.reached_by, m.flagged) == (1.0, 1.0, (), False)
    observed = _at(measurements, "observe")
    assert observed.flagged and observed.reached_by == ("drop",) and observed.symmetric_mean > 1


@pytest.mark.parametrize("spec, kwargs", [
    (str(EXAMPLES / "preresnet.py"), {"position": "P3", "blocks": (1, 1), "widths": (8, 16)}),
    (str(EXAMPLES / "densenet.py"), {}),
    ("torchvision:densenet121", {"drop_rate": 0.2}),
])
def test_delta_below_one_exactly_where_dc001_says_a_dropout_reaches(spec: str, kwargs: dict) -> None:
    shape = (8, 3, 32, 32)
    target = load_target(spec, kwargs, shape, weights=True)
    capture = capture_graph(target)
    analysis = find_sites(capture)

    def batches():
        generator = torch.Generator().manual_seed(0)
        return (torch.randn(*shape, generator=generator) for _ in range(2))

    measurements = measure_model(capture, analysis, batches, torch.device("cpu"), copy_model=False)
    first = {bn for s in analysis.sites if s.active for bn in s.reaches}
    bns = [m for m in measurements if m.kind == "batchnorm"]
    # every first BatchNorm DC001 names is flagged, and so is any later one on the same path
    assert first and first <= {m.module for m in bns if m.flagged}
    for m in bns:
        if m.flagged:
            assert m.delta_mean < 1, m
        elif not m.reached_by:
            assert m.delta_mean == 1.0 and m.delta_min == 1.0, m


def test_channel_stats_merge_equals_one_pass_in_float64() -> None:
    x = torch.randn(1000, 4, 3) * torch.tensor([1.0, 2.0, 0.5, 3.0]).view(1, 4, 1) + 5
    whole, parts = ChannelStats(), ChannelStats()
    whole.update(x)
    for chunk in x.split(7):
        part = ChannelStats()
        part.update(chunk)
        parts.merge(part)
    expected = x.transpose(0, 1).reshape(4, -1).double().var(dim=1, unbiased=False)
    assert torch.allclose(whole.variance, expected) and torch.allclose(parts.variance, expected)
    assert whole.variance.dtype == torch.float64


def test_one_seed_gives_one_answer_and_leaves_the_callers_rng_alone() -> None:
    """The model's initialisation and the dropout masks are drawn from --seed: two runs agree exactly,
    another seed differs, and the global RNG is where the caller left it."""
    from dropcheck.measurement.pipeline import measure_target

    options = dict(batches=2, batch_size=8, device="cpu")
    spec, kwargs, shape = str(EXAMPLES / "preresnet.py"), {"position": "P3"}, (8, 3, 16, 16)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = measure_target(spec, kwargs, shape, seed=0, **options)
    assert torch.equal(torch.get_rng_state(), before)
    again = measure_target(spec, kwargs, shape, seed=0, **options)
    other = measure_target(spec, kwargs, shape, seed=1, **options)
    deltas = [[m.delta_mean for m in r.measurements] for r in (first, again, other)]
    assert first.status == "ok" and any(d < 0.99 for d in deltas[0])
    assert deltas[0] == deltas[1]
    assert deltas[0] != deltas[2]
