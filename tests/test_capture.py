"""Capture and analysis edge cases on small models built for them."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dropcheck
from dropcheck.analysis.load import load_target
from dropcheck.analysis.pipeline import audit_loaded
from dropcheck.records import DropcheckError, Report


def _rules(report: Report) -> set[tuple[str, str]]:
    return {(f.rule, f.dropout) for f in report.findings}


class _FunctionalModes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(self.fc1(x), 0.2, training=self.training)  # correct
        x = F.dropout(self.fc2(x), 0.3)  # always on: training defaults to True
        x = F.dropout(x, 0.4, training=False)  # never on
        return self.fc3(x)


def test_functional_dropout_without_training_flag_is_always_on() -> None:
    report = dropcheck.audit(_FunctionalModes(), torch.randn(4, 8))
    by_id = {s.id: s for s in report.dropouts}
    assert list(by_id) == ["/dropout", "/dropout_1", "/dropout_2"]
    assert (by_id["/dropout"].active, by_id["/dropout"].always_on) == (True, False)
    assert (by_id["/dropout_1"].active, by_id["/dropout_1"].always_on) == (True, True)
    assert by_id["/dropout_2"].active is False
    assert _rules(report) == {("DC006", "/dropout_1")}


class _Attention(nn.Module):
    def __init__(self, gated: bool) -> None:
        super().__init__()
        self.qkv, self.proj, self.gated = nn.Linear(16, 48), nn.Linear(16, 16), gated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        p = (0.1 if self.training else 0.0) if self.gated else 0.1
        return self.proj(F.scaled_dot_product_attention(q, k, v, dropout_p=p))


@pytest.mark.parametrize("gated", [True, False])
def test_attention_dropout_not_gated_on_training_is_always_on(gated: bool) -> None:
    report = dropcheck.audit(_Attention(gated), torch.randn(2, 5, 16))
    (site,) = report.dropouts
    assert site.id == "/scaled_dot_product_attention" and site.p == pytest.approx(0.1)
    assert site.always_on is (not gated)
    assert ("DC006", site.id) in _rules(report) or gated


class _ParamAdd(nn.Module):
    """x + bias is not a residual merge: a parameter adds no variance to dilute the dropout's."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 2)
        self.drop, self.bias = nn.Dropout(0.2), nn.Parameter(torch.zeros(1, 8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.conv(x)) + self.bias
        return self.fc(self.bn(x).mean((2, 3)))


def test_adding_a_parameter_is_not_a_residual_merge() -> None:
    report = dropcheck.audit(_ParamAdd(), torch.randn(2, 3, 8, 8))
    assert report.dropouts[0].reaches == ("bn",)
    assert ("DC001", "drop") in _rules(report)


class _SqueezeExcite(nn.Module):
    """The SE gate's global pool is not the head's: the data becomes spatial again after it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn1, self.bn2 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.BatchNorm2d(8)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 8, 1), nn.Sigmoid())
        self.drop, self.head_drop, self.fc = nn.Dropout(0.2), nn.Dropout(0.2), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv(x))
        x = self.drop(x * self.se(x))
        x = torch.relu(self.bn2(x))
        return self.fc(self.head_drop(x).mean((2, 3)))


def test_squeeze_excitation_pool_is_not_global_pooling() -> None:
    report = dropcheck.audit(_SqueezeExcite(), torch.randn(2, 3, 8, 8))
    by_id = {s.id: s for s in report.dropouts}
    # bn2 feeds the final pool with no weight in between: it is the head's BatchNorm (H1/H2)
    assert by_id["drop"].site.value == "head.pre_bn" and by_id["drop"].reaches == ("bn2",)
    assert (by_id["head_drop"].site.value, by_id["head_drop"].paper_position) == ("head.pre_gap", "H4")
    assert _rules(report) == {("DC001", "drop")}


class _TokenPool(nn.Module):
    """Mean over tokens is global average pooling; LayerNorm's mean over features is not."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.drop, self.fc = nn.Linear(4, 16), nn.Dropout(0.3), nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x = (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True) + 1e-5).sqrt()
        return self.fc(self.drop(x.mean(1)))


def test_dropout_after_token_mean_is_post_gap() -> None:
    report = dropcheck.audit(_TokenPool(), torch.randn(2, 7, 4))
    assert report.dropouts[0].site.value == "head.post_gap"
    assert _rules(report) == {("DC002", "drop")}


class _RepeatedBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn1, self.conv1, self.bn2, self.conv2 = (nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1),
                                                      nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1))
        self.drop_a, self.drop_b, self.bn, self.fc = nn.Dropout(0.1), nn.Dropout(0.1), nn.BatchNorm2d(8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.drop_a(torch.relu(self.bn2(out)))
        out = self.drop_b(self.conv2(out))
        x = x + out
        return self.fc(torch.relu(self.bn(x)).mean((2, 3)))


def test_two_dropouts_in_one_branch_flag_the_extra_one() -> None:
    report = dropcheck.audit(_RepeatedBranch(), torch.randn(2, 8, 6, 6))
    by_id = {s.id: s for s in report.dropouts}
    assert by_id["drop_a"].paper_position == "P6" and by_id["drop_b"].paper_position == "P7"
    assert by_id["drop_a"].merge == by_id["drop_b"].merge is not None
    assert _rules(report) == {("DC004", "drop_b"), ("DC005", "drop_b")}


class _Reused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.drop, self.fc1, self.fc2 = nn.Dropout(0.1), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.fc1(self.drop(x))))


def test_a_module_called_twice_is_two_sites() -> None:
    report = dropcheck.audit(_Reused(), torch.randn(2, 4))
    assert [s.id for s in report.dropouts] == ["drop", "drop@2"]


class _Opaque(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
        self.drop, self.bn, self.fc = nn.Dropout(0.2), nn.BatchNorm1d(16), nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer(self.drop(x))
        return self.fc(self.bn(x.transpose(1, 2)).mean(-1))


def test_untraceable_leaf_is_an_opaque_region_whose_dropouts_are_listed_without_verdict() -> None:
    report = dropcheck.audit(_Opaque(), torch.randn(2, 5, 16))
    (region,) = report.opaque_regions
    assert region.module == "layer" and region.type == "TransformerEncoderLayer"
    inside = [s for s in report.dropouts if s.opaque == "layer"]
    assert {s.id for s in inside} == {"layer.self_attn", "layer.dropout", "layer.dropout1", "layer.dropout2"}
    assert all(s.site.value == "other" for s in inside)
    assert not any(f.dropout.startswith("layer") for f in report.findings)
    assert any("TransformerEncoderLayer" in n for n in report.notes)


def test_audit_leaves_the_users_model_as_it_was() -> None:
    model = _RepeatedBranch().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dropcheck.audit(model, torch.randn(2, 8, 6, 6))
    assert all(not m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _write(tmp_path: Path, source: str) -> str:
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(source))
    return str(path)


def test_sources_are_the_call_line_for_functional_and_the_element_line_in_sequential(tmp_path: Path) -> None:
    spec = _write(tmp_path, """\
        import torch.nn as nn
        import torch.nn.functional as F

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.features = nn.Sequential(
                    nn.Conv2d(3, 8, 3),
                    nn.Dropout(0.1),
                    nn.BatchNorm2d(8),
                )
                self.fc = nn.Linear(8, 2)

            def forward(self, x):
                x = self.features(x)
                x = F.dropout(x, 0.2, self.training)
                return self.fc(x.mean((2, 3)))
        """)
    report = audit_loaded(load_target(spec, input_shape=(2, 3, 8, 8)))
    by_id = {s.id: s for s in report.dropouts}
    # its own line in the multi-line nn.Sequential( (issue 13: it was the `nn.Sequential(` line, 7)
    assert by_id["features.1"].source is not None and by_id["features.1"].source.line == 9
    assert by_id["/dropout"].source is not None and by_id["/dropout"].source.line == 16


def test_a_large_model_is_captured_on_meta_without_materialising_weights(tmp_path: Path) -> None:
    spec = _write(tmp_path, """\
        import torch.nn as nn

        class Wide(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1, self.drop, self.bn = nn.Linear(8192, 8192), nn.Dropout(0.1), nn.BatchNorm1d(8192)
                self.fc2 = nn.Linear(8192, 4)

            def forward(self, x):
                return self.fc2(self.bn(self.drop(self.fc1(x))))
        """)
    target = load_target(spec, input_shape=(2, 8192))
    report = audit_loaded(target)
    assert report.capture is not None and report.capture.device == "meta"
    assert all(p.device.type == "meta" for p in target.model.parameters())
    assert ("DC001", "drop") in _rules(report)


def test_uninitialised_index_buffers_do_not_break_shape_propagation(tmp_path: Path) -> None:
    # like Swin's relative_position_index: garbage after materialising, so shapes fall back to fake tensors
    spec = _write(tmp_path, """\
        import torch, torch.nn as nn

        class Indexed(nn.Module):
            def __init__(self):
                super().__init__()
                self.table = nn.Parameter(torch.zeros(16, 8))
                self.register_buffer("index", torch.arange(4))
                self.fc, self.drop, self.bn = nn.Linear(8, 8), nn.Dropout(0.1), nn.BatchNorm1d(8)

            def forward(self, x):
                bias = self.table[self.index].sum(0)
                return self.bn(self.drop(self.fc(x) + bias))
        """)
    report = audit_loaded(load_target(spec, input_shape=(2, 8)))
    assert report.status == "ok" and ("DC001", "drop") in _rules(report)


def test_a_model_that_cannot_build_on_meta_is_built_on_cpu(tmp_path: Path) -> None:
    spec = _write(tmp_path, """\
        import torch, torch.nn as nn

        class Net(nn.Module):
            input_shape = (2, 3, 8, 8)

            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3)
                width = int(self.conv.weight.abs().sum().item() > -1) * 4  # data-dependent: fails on meta
                self.bn, self.drop, self.fc = nn.BatchNorm2d(width), nn.Dropout(0.2), nn.Linear(width, 2)

            def forward(self, x):
                return self.fc(self.bn(self.drop(self.conv(x))).mean((2, 3)))
        """)
    report = audit_loaded(load_target(spec))
    assert report.capture is not None and report.capture.device == "cpu"
    assert ("DC001", "drop") in _rules(report)


def test_data_dependent_control_flow_is_a_trace_error_naming_the_line(tmp_path: Path) -> None:
    spec = _write(tmp_path, """\
        import torch.nn as nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 2)

            def forward(self, x):
                if x.sum() > 0:
                    x = -x
                return self.fc(x)
        """)
    with pytest.raises(DropcheckError) as caught:
        audit_loaded(load_target(spec, input_shape=(2, 4)))
    assert caught.value.kind == "trace"
    assert "model.py:9" in caught.value.message and "control flow" in caught.value.message
    assert caught.value.hint
    assert isinstance(caught.value.__cause__, torch.fx.proxy.TraceError)  # what --verbose prints


def test_wrong_input_shape_is_a_shape_error() -> None:
    with pytest.raises(DropcheckError) as caught:
        audit_loaded(load_target("torchvision:resnet18", input_shape=(1, 1, 32, 32)))
    assert caught.value.kind == "shape" and "1,1,32,32" in caught.value.message
    assert "--input-shape" in caught.value.hint


_FAMILY = [
    ("Dropout", lambda: nn.Dropout(0.2), None),
    ("Dropout1d", lambda: nn.Dropout1d(0.2), None),
    ("Dropout2d", lambda: nn.Dropout2d(0.2), None),
    ("AlphaDropout", lambda: nn.AlphaDropout(0.2), None),
    ("FeatureAlphaDropout", lambda: nn.FeatureAlphaDropout(0.2), None),
    ("dropout", None, lambda x, t: F.dropout(x, 0.2, t)),
    ("dropout1d", None, lambda x, t: F.dropout1d(x, 0.2, t)),
    ("dropout2d", None, lambda x, t: F.dropout2d(x, 0.2, t)),
    ("alpha_dropout", None, lambda x, t: F.alpha_dropout(x, 0.2, t)),
    ("feature_alpha_dropout", None, lambda x, t: F.feature_alpha_dropout(x, 0.2, t)),
    ("dropout", None, lambda x, t: torch.dropout(x, 0.2, t)),
    ("feature_dropout", None, lambda x, t: torch.feature_dropout(x, 0.2, t)),
]


class _FamilyNet(nn.Module):
    def __init__(self, module: nn.Module | None, function) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv1d(4, 4, 1), nn.BatchNorm1d(4), nn.Linear(4, 2)
        self.drop, self.function = module, function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = self.drop(x) if self.drop is not None else self.function(x, self.training)
        return self.fc(self.bn(x).mean(-1))


@pytest.mark.parametrize("op, module, function", _FAMILY, ids=[f"{i}-{f[0]}" for i, f in enumerate(_FAMILY)])
def test_every_dropout_family_member_is_a_site(op: str, module, function) -> None:
    report = dropcheck.audit(_FamilyNet(module() if module else None, function), torch.randn(2, 4, 6))
    (site,) = report.dropouts
    assert site.op == op and site.p == pytest.approx(0.2) and site.active and not site.always_on
    assert site.reaches == ("bn",) and [f.rule for f in report.findings] == ["DC001"]


class _DropBlockNet(nn.Module):
    def __init__(self) -> None:
        from timm.layers import DropBlock2d

        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.Linear(4, 2)
        self.drop = DropBlock2d(0.2, block_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.drop(self.conv(x))).mean((2, 3)))


def test_timm_drop_block_module_is_a_leaf_and_a_site() -> None:
    # DropBlock2d takes min(block_size, H) of a symbolic H: it only traces as a leaf
    report = dropcheck.audit(_DropBlockNet(), torch.randn(2, 4, 8, 8))
    assert [(s.op, s.reaches) for s in report.dropouts] == [("DropBlock2d", ("bn",))]
