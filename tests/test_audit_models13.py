"""Issue 13, the audit side: models written as people write them, labelled by reading the code.

- an audio CNN with `nn.Dropout2d` right before `AdaptiveAvgPool2d(1)`: channel masks survive the
  average, so it is H5 in effect (Prop. 5) and DC002 fires;
- a LeNet with a declared-but-unused `nn.Dropout2d()` beside `F.dropout` with the same default p:
  DC007 fires (the attention exception is for p handed to a fused attention kernel only);
- a tabular net with dropout inside a multi-line `nn.Sequential(`: the finding sits on the element's
  own line, and an ignore comment there silences it and is not reported unused;
- a WideResNet with identity and projection shortcuts: the same block gets P6 either way;
- measure on a path with two BatchNorms after a dropout: both flagged, Δ against eq. 29.
"""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import dropcheck
from dropcheck.analysis import suppress
from dropcheck.analysis.capture import capture_graph
from dropcheck.analysis.pipeline import audit_target
from dropcheck.analysis.sites import find_sites
from dropcheck.measurement.deltas import measure_model
from dropcheck.output.sarif import to_sarif
from dropcheck.output.text.measure import delta_by_site, lowest_on_paths
from dropcheck.analysis.catalog import load_rules
from dropcheck.records import Measurement, SiteKind, Target


def _write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source).lstrip("\n"))
    return path


def _line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def _rules(report) -> set[tuple[str, str]]:
    return {(f.rule, f.dropout) for f in report.findings}


# --- channel-wise dropout right before global pooling (DC002) -------------------------------------

AUDIO_CNN = """
import torch
import torch.nn as nn
import torch.nn.functional as F


class AudioCNN(nn.Module):
    \"\"\"Log-mel spectrogram classifier: conv blocks, channel dropout, global average pool, linear.\"\"\"

    input_shape = (4, 1, 64, 96)

    def __init__(self, n_classes: int = 10, drop: float = 0.25, functional: bool = False) -> None:
        super().__init__()

        def block(c_in, c_out):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                                 nn.ReLU(inplace=True), nn.MaxPool2d(2))

        self.features = nn.Sequential(block(1, 16), block(16, 32), block(32, 64))
        self.dropout = DROPOUT
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, n_classes)
        self.functional, self.p = functional, drop

    def forward(self, x):
        x = self.features(x)
        if self.functional:
            x = F.dropout2d(x, self.p, self.training)
        else:
            x = self.dropout(x)
        x = self.pool(x).flatten(1)
        return self.fc(x)
"""


@pytest.mark.parametrize("dropout, functional, site_id", [
    ("nn.Dropout2d(drop)", False, "dropout"),
    ("nn.FeatureAlphaDropout(drop)", False, "dropout"),
    ("nn.Identity()", True, "/dropout2d"),
])
def test_channel_dropout_right_before_global_pooling_is_dc002(tmp_path: Path, dropout: str, functional: bool,
                                                              site_id: str) -> None:
    path = _write(tmp_path, "audio.py", AUDIO_CNN.replace("DROPOUT", dropout))
    report = audit_target(f"{path}:AudioCNN", {"functional": functional})
    site = next(s for s in report.dropouts if s.id == site_id)
    assert (site.site, site.paper_position) == (SiteKind.HEAD_PRE_GAP_CHANNEL, "H5")
    assert _rules(report) == {("DC002", site_id)}
    (finding,) = report.findings
    assert "element-wise nn.Dropout with the same p" in finding.fix
    assert site.to_dict()["site"] == "head.pre_gap_channel"


def test_element_wise_dropout_at_the_same_place_is_h4_and_clean(tmp_path: Path) -> None:
    path = _write(tmp_path, "audio.py", AUDIO_CNN.replace("DROPOUT", "nn.Dropout(drop)"))
    report = audit_target(f"{path}:AudioCNN")
    (site,) = report.dropouts
    assert (site.site, site.paper_position) == (SiteKind.HEAD_PRE_GAP, "H4") and report.findings == []


class _ChannelDropoutBeforeConv(nn.Module):
    """Dropout2d between two convolutions, then global pooling: the conv mixes channels, so its
    masks do not survive to the pool as whole pooled channels (and no BatchNorm follows)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)
        self.drop = nn.Dropout2d(0.2)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.drop(torch.relu(self.conv1(self.bn(x)))))
        return self.fc(x.mean((2, 3)))


def test_channel_dropout_with_a_weight_layer_before_the_pool_is_not_dc002() -> None:
    report = dropcheck.audit(_ChannelDropoutBeforeConv(), torch.randn(2, 3, 12, 12))
    (site,) = report.dropouts
    assert site.site is not SiteKind.HEAD_PRE_GAP_CHANNEL and report.findings == []


def test_pooled_channel_dropout_has_the_variance_of_h5_not_h4() -> None:
    """The rule page's argument (Prop. 5): GAP(Dropout2d(x)) is Dropout(GAP(x)) in distribution, and
    n = H·W times noisier than GAP(Dropout(x)). Over mask draws for one fixed feature map."""
    torch.manual_seed(0)
    q, draws = 0.25, 20000
    x = torch.rand(1, 8, 7, 7) + 0.5  # post-ReLU-like: positive mean
    xs = x.expand(draws, -1, -1, -1)
    channel = nn.functional.dropout2d(xs, q, True).mean((2, 3))
    after = nn.functional.dropout(xs.mean((2, 3)), q, True)
    element = nn.functional.dropout(xs, q, True).mean((2, 3))
    var = lambda t: t.double().var(0)  # noqa: E731  per channel, over the masks
    gap = x.mean((2, 3)).double().squeeze(0)
    assert torch.allclose(var(channel), gap ** 2 * q / (1 - q), rtol=0.05)  # eq. 6 on the pooled value
    assert torch.allclose(var(channel), var(after), rtol=0.05)
    mean_square = (x.double() ** 2).mean((2, 3)).squeeze(0)
    assert torch.allclose(var(element), mean_square * q / (1 - q) / 49, rtol=0.05)
    assert bool((var(channel) > 20 * var(element)).all())


# --- DC007: a forgotten Dropout2d beside F.dropout with the same p ---------------------------------

LENET = """
import torch
import torch.nn as nn
import torch.nn.functional as F


class LeNet(nn.Module):
    input_shape = (2, 1, 28, 28)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = x.view(-1, 320)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, training=self.training)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)
"""


def test_unused_dropout2d_beside_functional_dropout_with_the_same_p_is_dc007(tmp_path: Path) -> None:
    path = _write(tmp_path, "lenet.py", LENET)
    report = audit_target(str(path))
    unused = next(s for s in report.dropouts if s.id == "conv2_drop")
    assert unused.site is SiteKind.UNUSED and unused.p == 0.5
    assert next(s for s in report.dropouts if s.id == "/dropout").p == 0.5  # the same default p
    assert _rules(report) == {("DC007", "conv2_drop")}
    assert report.findings[0].source.line == _line_of(path, "self.conv2_drop = nn.Dropout2d()")


class _FusedAttention(nn.Module):
    """timm's Attention with fused_attn: attn_drop is kept for its p only."""

    def __init__(self, dim: int = 16, heads: int = 2, attn_drop: float = 0.1) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class _TorchAttention(nn.Module):
    """An attention block that keeps a dropout for its p and hands it to nn.MultiheadAttention."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.attn_drop = nn.Dropout(0.1)
        self.attn = nn.MultiheadAttention(dim, 2, dropout=self.attn_drop.p, batch_first=True)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.attn(x, x, x, need_weights=False)[0])


class _MlpWithForgottenDropout(nn.Module):
    """F.dropout(p=0.1) in forward; the nn.Dropout(0.1) beside it is never called."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.drop = nn.Linear(16, 16), nn.Linear(16, 16), nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.dropout(self.fc1(x), 0.1, self.training))


@pytest.mark.parametrize("model, expected", [
    (_FusedAttention(), set()),
    (_TorchAttention(), set()),
    (_MlpWithForgottenDropout(), {("DC007", "drop")}),
])
def test_dc007_spares_only_dropouts_whose_p_goes_to_a_fused_attention_kernel(model: nn.Module, expected) -> None:
    report = dropcheck.audit(model, torch.randn(2, 5, 16))
    assert _rules(report) == expected


# --- Sequential elements carry their own line --------------------------------------------------------

TABULAR = """
import torch
import torch.nn as nn


class TabularNet(nn.Module):
    input_shape = (8, 20)

    def __init__(self, n_in: int = 20, n_out: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(n_in, 64),
            nn.ReLU(),
            nn.Dropout(0.3),COMMENT
            nn.Linear(64, 64),
            nn.BatchNorm1d(64),
            nn.ReLU(),
        )
        self.out = nn.Linear(64, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))
"""


def test_dropout_in_a_multiline_sequential_is_reported_at_its_own_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "tabular.py", TABULAR.replace("COMMENT", ""))
    report = audit_target(str(path))
    line = _line_of(path, "nn.Dropout(0.3)")
    (site,) = report.dropouts
    assert site.id == "body.2" and site.source.line == line and site.declared.line == line
    assert _rules(report) == {("DC001", "body.2")} and report.findings[0].source.line == line
    sarif = to_sarif([report], load_rules())
    (result,) = sarif["runs"][0]["results"]
    assert result["locations"][0]["physicalLocation"]["region"]["startLine"] == line


def test_an_ignore_on_the_elements_own_line_suppresses_it_and_is_used(tmp_path: Path) -> None:
    path = _write(tmp_path, "tabular.py", TABULAR.replace("COMMENT", "  # dropcheck: ignore[DC001]"))
    report = audit_target(str(path))
    assert report.findings == [] and _rules_of(report.suppressed) == {("DC001", "body.2")}
    assert suppress.unused_ignores([report]) == [] and report.unused_ignores == []


def _rules_of(findings) -> set[tuple[str, str]]:
    return {(f.rule, f.dropout) for f in findings}


NESTED = """
from collections import OrderedDict

import torch.nn as nn


def head(c):
    return nn.Sequential(
        nn.BatchNorm1d(c),
        nn.Dropout(0.11),
        nn.Linear(c, c),
    )


class Net(nn.Module):
    input_shape = (4, 8)

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(
            nn.Sequential(
                nn.Linear(8, 8),
                nn.Dropout(0.13),
            ),
            nn.BatchNorm1d(8),
        )
        self.b = nn.Sequential(OrderedDict([
            ("fc", nn.Linear(8, 8)),
            ("drop", nn.Dropout(0.14)),
            ("bn", nn.BatchNorm1d(8)),
        ]))
        self.c = nn.ModuleList([
            nn.Linear(8, 8),
            nn.Dropout(0.15),
        ])
        self.e = head(8)

    def forward(self, x):
        x = self.b(self.a(x))
        for m in self.c:
            x = m(x)
        return self.e(x)
"""


def test_nested_named_and_listed_container_elements_get_their_own_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "nested.py", NESTED)
    report = audit_target(str(path))
    declared = {s.id: s.declared.line for s in report.dropouts}
    assert declared == {
        "a.0.1": _line_of(path, "nn.Dropout(0.13)"), "b.drop": _line_of(path, "nn.Dropout(0.14)"),
        "c.1": _line_of(path, "nn.Dropout(0.15)"), "e.1": _line_of(path, "nn.Dropout(0.11)")}


# --- WideResNet: projection and identity shortcuts get the same position ---------------------------

WIDE_RESNET = """
import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, in_planes, out_planes, stride, dropRate=0.0):
        super(BasicBlock, self).__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.droprate = dropRate
        self.equalInOut = (in_planes == out_planes)
        self.convShortcut = (not self.equalInOut) and nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride,
                                                                padding=0, bias=False) or None

    def forward(self, x):
        if not self.equalInOut:
            x = self.relu1(self.bn1(x))
        else:
            out = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(out if self.equalInOut else x)))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        out = self.conv2(out)
        return torch.add(x if self.equalInOut else self.convShortcut(x), out)


class NetworkBlock(nn.Module):
    def __init__(self, nb_layers, in_planes, out_planes, block, stride, dropRate=0.0):
        super(NetworkBlock, self).__init__()
        self.layer = self._make_layer(block, in_planes, out_planes, nb_layers, stride, dropRate)

    def _make_layer(self, block, in_planes, out_planes, nb_layers, stride, dropRate):
        layers = []
        for i in range(int(nb_layers)):
            layers.append(block(i == 0 and in_planes or out_planes, out_planes, i == 0 and stride or 1, dropRate))
        return nn.Sequential(*layers)

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    input_shape = (2, 3, 32, 32)

    def __init__(self, depth=16, num_classes=10, widen_factor=2, dropRate=0.3):
        super(WideResNet, self).__init__()
        nChannels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        assert ((depth - 4) % 6 == 0)
        n = (depth - 4) / 6
        block = BasicBlock
        self.conv1 = nn.Conv2d(3, nChannels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, nChannels[0], nChannels[1], block, 1, dropRate)
        self.block2 = NetworkBlock(n, nChannels[1], nChannels[2], block, 2, dropRate)
        self.block3 = NetworkBlock(n, nChannels[2], nChannels[3], block, 2, dropRate)
        self.bn1 = nn.BatchNorm2d(nChannels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(nChannels[3], num_classes)
        self.nChannels = nChannels[3]

    def forward(self, x):
        out = self.conv1(x)
        out = self.block1(out)
        out = self.block2(out)
        out = self.block3(out)
        out = self.relu(self.bn1(out))
        out = F.avg_pool2d(out, 8)
        out = out.view(-1, self.nChannels)
        return self.fc(out)
"""


def test_wide_resnet_blocks_get_p6_with_projection_and_identity_shortcuts(tmp_path: Path) -> None:
    # widen_factor 2: every group's first block changes width (a 1x1 conv on the skip), its second
    # keeps it (identity skip); the dropout sits after bn2-relu2, before conv2 in both: P6
    path = _write(tmp_path, "wrn.py", WIDE_RESNET)
    report = audit_target(str(path))
    positions = {s.id: (s.site, s.paper_position) for s in report.dropouts}
    assert positions == {f"block{g}.layer.{k}/dropout": (SiteKind.BRANCH_GUIDELINE, "P6")
                         for g in (1, 2, 3) for k in (0, 1)}
    assert report.findings == []
    assert all("after the branch's last BatchNorm" in s.why for s in report.dropouts)


class _ResNetV1Block(nn.Module):
    """A post-activation block with a projection shortcut: conv-bn-relu-[drop]-conv-bn + conv1x1-bn."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.shortcut = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.drop = nn.Dropout(0.2)
        self.stem, self.stem_bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        out = self.drop(torch.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def test_a_post_activation_block_with_a_projection_gets_no_pre_activation_position() -> None:
    report = dropcheck.audit(_ResNetV1Block(), torch.randn(2, 3, 8, 8))
    (site,) = report.dropouts
    assert (site.site, site.paper_position, site.reaches) == (SiteKind.BRANCH_PRE_BN, None, ("bn2",))


class _ResidualMlp(nn.Module):
    """A residual MLP block without BatchNorm in its branch; one BatchNorm1d after the merge."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.fc1, self.fc2 = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 32)
        self.drop, self.norm, self.out = nn.Dropout(0.1), nn.BatchNorm1d(32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h = h + self.fc2(self.drop(torch.relu(self.fc1(h))))
        return self.out(torch.relu(self.norm(h)))


def test_a_branch_without_batchnorm_is_not_said_to_follow_its_last_batchnorm() -> None:
    report = dropcheck.audit(_ResidualMlp(), torch.randn(8, 32))
    (site,) = report.dropouts
    assert site.site is SiteKind.BRANCH_GUIDELINE and "last BatchNorm" not in site.why
    assert "no BatchNorm" in site.why and report.findings == []


# --- measure: every BatchNorm on a DC001 dropout's path is flagged ---------------------------------

WIDTH = 128


class _TwoObservers(nn.Module):
    """[BN–ReLU–W–BN–ReLU–Dropout–W] with He init (paper §2.3), then two BatchNorms on the same path
    directly after one another (in eval mode a BatchNorm is a per-channel affine map, which keeps Δ),
    and one more after a residual merge. The dropout's
    first BatchNorm is `observe`; `observe2` is on the same merge-free path; `after_merge` is not."""

    def __init__(self, keep: float) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm1d(WIDTH), nn.BatchNorm1d(WIDTH)
        self.w1, self.w2 = nn.Linear(WIDTH, WIDTH, bias=False), nn.Linear(WIDTH, WIDTH, bias=False)
        for w in (self.w1, self.w2):
            nn.init.normal_(w.weight, 0.0, math.sqrt(2.0 / WIDTH))
        self.drop = nn.Dropout(1.0 - keep)  # the paper's p keeps; PyTorch's p drops
        self.observe = nn.BatchNorm1d(WIDTH)
        self.observe2 = nn.BatchNorm1d(WIDTH, affine=False)
        self.after_merge = nn.BatchNorm1d(WIDTH, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.w2(self.drop(torch.relu(self.bn2(self.w1(torch.relu(self.bn1(x)))))))
        y = self.observe2(self.observe(f))
        return self.after_merge(x + y)


def _measure(model: nn.Module, shape: tuple[int, ...], count: int = 6):
    target = Target(spec="test", model=model, example_input=torch.randn(*shape), origin="api")
    capture = capture_graph(target)
    analysis = find_sites(capture)

    def batches():
        generator = torch.Generator().manual_seed(0)
        return (torch.randn(*shape, generator=generator) for _ in range(count))

    torch.manual_seed(0)
    return analysis, measure_model(capture, analysis, batches, torch.device("cpu"))


@pytest.mark.parametrize("keep", [0.5, 0.8])
def test_every_batchnorm_on_a_dc001_path_is_flagged_with_eq_29(keep: float) -> None:
    analysis, measurements = _measure(_TwoObservers(keep), (4096, WIDTH))
    (site,) = [s for s in analysis.sites if s.id == "drop"]
    assert site.reaches == ("observe",)  # the audit names the first BatchNorm on the path
    at = {m.module: m for m in measurements}
    expected = (math.pi - 1) / (math.pi / keep - 1)  # eq. 29
    for name in ("observe", "observe2"):  # an affine map between BatchNorms keeps Δ: both at eq. 29
        assert at[name].flagged and at[name].flagged_by == ("drop",)
        assert at[name].delta_mean == pytest.approx(expected, rel=0.02)
    assert not at["after_merge"].flagged and at["after_merge"].flagged_by == ()
    assert at["after_merge"].reached_by == ("drop",) and at["after_merge"].delta_mean < 1
    for name in ("bn1", "bn2"):
        assert not at[name].flagged and at[name].delta_mean == 1.0
    assert json.loads(json.dumps(at["observe2"].to_dict()))["flagged_by"] == ["drop"]


def test_the_text_report_shows_the_lowest_delta_along_each_flagged_path() -> None:
    from dropcheck.records import Report, Site

    site = Site(id="drop", module="drop", op="Dropout", p=0.5, site=SiteKind.TRUNK_PRE_BN, reaches=("bn2",))
    rows = [Measurement("bn2", "bn2", "batchnorm", 0.42, 0.3, 2.4, ("drop",), True, ("drop",)),
            Measurement("bn3", "bn3", "batchnorm", 0.14, 0.1, 7.0, ("drop",), True, ("drop",)),
            Measurement("bn4", "bn4", "batchnorm", 0.05, 0.01, 9.0, ("drop",), False, ())]
    report = Report(target="t", dropouts=[site], measurements=rows, measure_settings={})
    assert lowest_on_paths(report) == {"drop": (0.14, "bn3", 2)}
    assert delta_by_site(report) == {"drop": 0.14}
