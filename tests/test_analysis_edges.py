"""Regression tests for edge cases found in review: skip paths, in-place merges, norms with and
without running statistics, weight detection, DC006 matching, leaf calling conventions."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dropcheck
from dropcheck.records import DropcheckError, Report

C = 8


def _rules(report: Report) -> set[tuple[str, str]]:
    return {(f.rule, f.dropout) for f in report.findings}


def _site(report: Report, site_id: str):
    return next(s for s in report.dropouts if s.id == site_id)


def _cbr() -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(C), nn.ReLU(), nn.Conv2d(C, C, 3, padding=1))


class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn, self.fc = nn.BatchNorm2d(C), nn.Linear(C, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(x)).mean((2, 3)))


class _SkipDropout(nn.Module):
    def __init__(self, guideline: bool) -> None:
        super().__init__()
        self.stem, self.branch, self.head = nn.Conv2d(3, C, 3, padding=1), nn.Sequential(_cbr(), _cbr()), _Head()
        self.skip_drop = nn.Dropout(0.1)
        self.guideline = guideline
        if guideline:  # a P6 dropout in the branch too
            self.branch[1].insert(2, nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(self.skip_drop(x) + self.branch(x))


@pytest.mark.parametrize("guideline", [False, True])
def test_dropout_on_the_skip_connection_is_not_a_branch_dropout(guideline: bool) -> None:
    report = dropcheck.audit(_SkipDropout(guideline), torch.randn(2, 3, 8, 8))
    skip = _site(report, "skip_drop")
    assert skip.site.value == "other" and "skip" in skip.why
    assert not any(f.rule == "DC004" for f in report.findings)
    if guideline:
        assert _site(report, "branch.1.2").paper_position == "P6"


class _InplaceMerge(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn, self.conv, self.drop, self.head = (nn.Conv2d(3, C, 1), nn.BatchNorm2d(C),
                                                               nn.Conv2d(C, C, 1), nn.Dropout(0.1), _Head())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        out = self.conv(self.drop(F.relu(self.bn(x))))
        out.add_(x)  # the residual merge, in place: later readers of `out` read the sum
        return self.head(out)


def test_in_place_add_is_a_residual_merge() -> None:
    report = dropcheck.audit(_InplaceMerge(), torch.randn(2, 3, 8, 8))
    site = _site(report, "drop")
    assert site.site.value == "branch.guideline" and site.reaches == ()
    assert report.findings == []


class _InplaceDropout(nn.Module):
    """`self.drop(h)` with inplace=True and the result thrown away still drops h."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.drop, self.bn, self.fc = nn.Conv2d(3, C, 1), nn.Dropout(0.1, inplace=True), \
            nn.BatchNorm2d(C), nn.Linear(C, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        self.drop(h)
        return self.fc(self.bn(h).mean((2, 3)))


def test_in_place_dropout_whose_result_is_discarded_still_reaches_the_bn() -> None:
    report = dropcheck.audit(_InplaceDropout(), torch.randn(2, 3, 8, 8))
    assert _site(report, "drop").reaches == ("bn",) and ("DC001", "drop") in _rules(report)


class _Norm(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.conv, self.drop, self.norm, self.fc = nn.Conv2d(3, C, 1), nn.Dropout(0.1), norm, nn.Linear(C, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.drop(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize("norm, shifts", [
    (nn.BatchNorm2d(C), True),
    (nn.BatchNorm2d(C, track_running_stats=False), False),  # batch statistics at test time too
    (nn.InstanceNorm2d(C, track_running_stats=True), True),  # running statistics: the same shift
    (nn.InstanceNorm2d(C), False),
    (nn.GroupNorm(2, C), False),
])
def test_only_norms_with_running_statistics_count_as_batchnorm(norm: nn.Module, shifts: bool) -> None:
    report = dropcheck.audit(_Norm(norm), torch.randn(2, 3, 8, 8))
    assert (("DC001", "drop") in _rules(report)) is shifts


class _WeightAfter(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.drop = kind, nn.Dropout(0.2)
        self.weight = nn.Parameter(torch.randn(10, 6))
        self.lstm = nn.LSTM(6, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "matmul":
            return self.drop(x) @ self.weight.t()  # W.t() is still a weight layer
        return self.lstm(self.drop(x))[0]


@pytest.mark.parametrize("kind", ["matmul", "lstm"])
def test_weight_layers_beyond_conv_and_linear_protect_the_output(kind: str) -> None:
    report = dropcheck.audit(_WeightAfter(kind), torch.randn(2, 5, 6))
    assert not any(f.rule == "DC003" for f in report.findings)


class _LoopedDropout(nn.Module):
    """Two functional dropouts from one source line: one gated on training, one not."""

    def __init__(self, ps: tuple[float, float]) -> None:
        super().__init__()
        self.fc1, self.fc2, self.ps = nn.Linear(4, 4), nn.Linear(4, 2), ps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        for i, p in enumerate(self.ps):
            x = F.dropout(x, p, training=(i == 1) or self.training)
        return self.fc2(x)


def test_always_on_is_matched_per_call_not_per_line() -> None:
    report = dropcheck.audit(_LoopedDropout((0.3, 0.2)), torch.randn(2, 4))
    assert _rules(report) == {("DC006", "/dropout_1")}
    inactive = dropcheck.audit(_LoopedDropout((0.0, 0.2)), torch.randn(2, 4))
    assert _rules(inactive) == {("DC006", "/dropout_1")}  # the p=0 call is inactive, never always on


class _UnusedBesideAFloat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.drop = nn.Linear(4, 2), nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x * 0.5)


def test_a_float_equal_to_p_does_not_hide_an_unused_dropout() -> None:
    report = dropcheck.audit(_UnusedBesideAFloat(), torch.randn(2, 4))
    assert _rules(report) == {("DC007", "drop")}


class _Leaf(nn.TransformerEncoderLayer):
    """A torch.nn-namespaced leaf that hides BatchNorm, called with keyword arguments."""

    __module__ = "torch.nn.custom"

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.bn, self.drop = nn.BatchNorm1d(C), nn.Dropout(0.1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, z: torch.Tensor | None = None) -> torch.Tensor:
        if z is not None:
            x = x + z
        return self.bn(self.drop(x))


class _CallsLeafWithKeyword(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.leaf = nn.Linear(C, C), _Leaf()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        return self.leaf(h, z=h)


def test_leaf_traced_on_its_own_keeps_the_callers_keyword_arguments() -> None:
    report = dropcheck.audit(_CallsLeafWithKeyword(), torch.randn(4, C))
    assert report.opaque_regions == []  # inlined, not opaque
    assert _site(report, "leaf.drop").reaches == ("leaf.bn",)


class _SqueezeInPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.drop, self.fc = nn.Conv2d(3, C, 3), nn.BatchNorm2d(C), nn.Dropout(0.2), nn.Linear(C, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1)
        x = x.squeeze_(-1).squeeze_(-1)
        return self.fc(self.drop(x))


def test_in_place_ops_that_change_shape_run_for_real() -> None:
    report = dropcheck.audit(_SqueezeInPlace(), torch.randn(2, 3, 8, 8))
    assert _rules(report) == {("DC002", "drop")}


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.drop, self.bn = nn.Linear(4, 4), nn.Dropout(0.1), nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.drop(x) + self.drop(y)))


def test_a_tuple_of_inputs_feeds_a_forward_with_several_arguments() -> None:
    report = dropcheck.audit(_TwoInputs(), (torch.randn(3, 4), torch.randn(3, 4)))
    assert {s.id for s in report.dropouts} == {"drop", "drop@2"}
    assert report.input_shape == [3, 4]


def test_a_non_tensor_input_is_a_clean_error() -> None:
    with pytest.raises(DropcheckError) as caught:
        dropcheck.audit(_TwoInputs(), 3)
    assert caught.value.kind == "input" and caught.value.hint


class _SEAfterLastConv(nn.Module):
    """Dropout after the branch's last conv, before an SE gate: still PostDropout (P7)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.branch, self.head = nn.Conv2d(3, C, 1), nn.Sequential(_cbr(), _cbr()), _Head()
        self.drop = nn.Dropout(0.1)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(C, C, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        out = self.drop(self.branch(x))
        return self.head(x + out * self.se(out))


def test_squeeze_excitation_convs_are_not_the_branch_weight_after_the_dropout() -> None:
    report = dropcheck.audit(_SEAfterLastConv(), torch.randn(2, 3, 8, 8))
    site = _site(report, "drop")
    assert (site.site.value, site.paper_position) == ("branch.post_weight", "P7")


class _StemDropout(nn.Module):
    """A dropout before the stem's BN is trunk dropout, but not the paper's P0 (no block starts there)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.drop, self.bn = nn.Conv2d(3, C, 1), nn.Dropout(0.1), nn.BatchNorm2d(C)
        self.branch, self.head = nn.Sequential(_cbr(), _cbr()), _Head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.drop(self.stem(x))))
        return self.head(x + self.branch(x))


def test_stem_dropout_is_trunk_but_not_p0() -> None:
    report = dropcheck.audit(_StemDropout(), torch.randn(2, 3, 8, 8))
    site = _site(report, "drop")
    assert (site.site.value, site.paper_position, site.reaches[0]) == ("trunk.pre_bn", None, "bn")
