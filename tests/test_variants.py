"""train-compare's variants: new models, same weights, dropout exactly where each variant says."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.ops import StochasticDepth

import dropcheck
from dropcheck.analysis.load import load_target
from dropcheck.records import DropcheckError, Target
from dropcheck.training.variants import SWEEP_POSITIONS, Variant, build_variants, parse_variants

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))
from preresnet import PreResNet  # noqa: E402

ALL = ["original", "fixed", "none", *SWEEP_POSITIONS]
BLOCK_POSITIONS = [p for p in SWEEP_POSITIONS if p.startswith("P")]
HEAD_POSITIONS = [p for p in SWEEP_POSITIONS if p.startswith("H")]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny convolutions: intra-op threads only contend (on a busy 2-core box, 400x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Built:
    """A target, a snapshot of the user's model taken before building, and every variant of it."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.model = target.model
        self.state = {k: v.clone() for k, v in target.model.state_dict().items()}
        self.modules = [(n, type(m), m.training) for n, m in target.model.named_modules()]
        rng = torch.get_rng_state()
        self.variants = {v.name: v for v in build_variants(target, ALL)}
        self.rng_kept = torch.equal(torch.get_rng_state(), rng)


def _direct(block: str) -> _Built:
    torch.manual_seed(0)
    return _Built(Target(spec="PreResNet", model=PreResNet(position="none", block=block),
                         example_input=torch.randn(2, 3, 16, 16), origin="api"))


def _loaded(block: str) -> _Built:
    # a model with dropouts of its own (P3 in every block, H5 in the head): the sweep must remove them
    torch.manual_seed(0)
    return _Built(load_target(str(EXAMPLES / "preresnet.py"), {"position": "P3", "head_position": "H5",
                                                                "block": block}, weights=True))


@pytest.fixture(scope="module", params=[("direct", "basic"), ("direct", "bottleneck"),
                                        ("loaded", "basic"), ("loaded", "bottleneck")], ids="-".join)
def built(request: pytest.FixtureRequest) -> _Built:
    route, block = request.param
    return _direct(block) if route == "direct" else _loaded(block)


def _inserted(variant: Variant) -> list[str]:
    suffix = f"drop_{variant.name.lower()}"
    return [n for n, m in variant.model.named_modules() if n.rpartition(".")[2] == suffix and isinstance(m, nn.Dropout)]


def _eval_out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.train(was)


def _train_out(model: nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    model.train()
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("position", BLOCK_POSITIONS)
def test_block_sweep_puts_one_dropout_per_block_where_the_audit_sees_that_position(built: _Built,
                                                                                  position: str) -> None:
    variant = built.variants[position]
    assert variant.positions == [position] * 3  # PreResNet has 3 blocks; the model's own dropouts are gone
    assert len(_inserted(variant)) == 3
    assert not [c for c in variant.changes if c.startswith("audit")]
    assert f"inserted at {position} in 3 residual branch" in variant.description


@pytest.mark.parametrize("position", HEAD_POSITIONS)
def test_head_sweep_puts_one_dropout_in_the_head_where_the_audit_sees_that_position(built: _Built,
                                                                                   position: str) -> None:
    variant = built.variants[position]
    assert variant.positions == [position]
    assert _inserted(variant) == [f"drop_{position.lower()}"]


@pytest.mark.parametrize("position", SWEEP_POSITIONS)
def test_sweep_dropout_is_live_in_train_mode_and_identity_in_eval(built: _Built, position: str) -> None:
    variant, x = built.variants[position], built.target.example_input
    assert torch.equal(_eval_out(variant.model, x), _eval_out(built.model, x))
    assert not torch.equal(_train_out(variant.model, x, 0), _train_out(variant.model, x, 1))


def test_none_has_no_active_dropout_and_the_same_eval_outputs(built: _Built) -> None:
    none, x = built.variants["none"], built.target.example_input
    assert none.positions == []
    assert not [s.id for s in dropcheck.audit(none.model, x).dropouts if s.active]
    assert torch.equal(_eval_out(none.model, x), _eval_out(built.model, x))
    assert torch.equal(_train_out(none.model, x, 0), _train_out(none.model, x, 1))  # nothing random left
    if built.target.origin == "file":  # the model had dropouts: each removal is listed
        assert sorted(c.split()[0] for c in none.changes) == ["remove"] * 4


def test_original_is_a_copy_that_reports_the_models_own_dropouts(built: _Built) -> None:
    original = built.variants["original"]
    assert original.model is not built.model
    expected = ["P3", "P3", "P3", "H5"] if built.target.origin == "file" else []
    assert original.positions == expected


def test_every_variant_loads_the_originals_weights(built: _Built) -> None:
    keys = list(built.state)
    for variant in built.variants.values():
        state = variant.model.state_dict()
        assert list(state) == keys, variant.name
        assert all(state[k].shape == built.state[k].shape for k in keys), variant.name
        variant.model.load_state_dict(built.model.state_dict())  # strict


def test_variants_share_no_tensor_with_the_users_model_and_leave_it_as_it_was(built: _Built) -> None:
    assert all(torch.equal(built.state[k], v) for k, v in built.model.state_dict().items())
    assert [(n, type(m), m.training) for n, m in built.model.named_modules()] == built.modules
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in built.model.modules())
    assert built.rng_kept  # the trainer seeds before building: building leaves the RNG as it was
    users = {t.data_ptr() for t in built.model.state_dict().values()}
    for variant in built.variants.values():
        assert variant.model is not built.model
        assert not users & {t.data_ptr() for t in variant.model.state_dict().values()}, variant.name


def test_fixed_variant_has_no_dc001_dc002_dc003_on_reaudit(built: _Built) -> None:
    fixed = built.variants["fixed"]
    report = dropcheck.audit(fixed.model, built.target.example_input)
    assert not {f.rule for f in report.findings} & {"DC001", "DC002", "DC003"}
    if built.target.origin == "file":  # P3 x3 and H5 moved by the fix
        assert fixed.positions == ["P6", "P6", "P6", "H4"]
        assert len(fixed.changes) == 4 and all(c.startswith("move") for c in fixed.changes)
    else:
        assert fixed.changes == [] and fixed.positions == []


def test_to_dict_carries_everything_but_the_model(built: _Built) -> None:
    d = built.variants["P3"].to_dict()
    assert set(d) == {"name", "description", "changes", "positions"}
    assert d["name"] == "P3" and d["positions"] == ["P3"] * 3 and all(isinstance(c, str) for c in d["changes"])


def test_sweep_p_defaults_to_0_1_and_can_be_set() -> None:
    target = Target("PreResNet", PreResNet(position="none"), torch.randn(2, 3, 32, 32), origin="api")
    (default,) = build_variants(target, ["P6"])
    (given,) = build_variants(target, ["P6"], p=0.3)
    assert {default.model.get_submodule(n).p for n in _inserted(default)} == {0.1}
    assert {given.model.get_submodule(n).p for n in _inserted(given)} == {0.3}
    with pytest.raises(DropcheckError) as err:
        build_variants(target, ["P6"], p=1.5)
    assert err.value.kind == "usage"


def test_torchvision_resnet18_p6_sweep_fills_all_8_branches() -> None:
    target = load_target("torchvision:resnet18", {}, (2, 3, 64, 64), weights=True)
    (variant,) = build_variants(target, ["P6"])
    assert len(_inserted(variant)) == 8 and len(variant.positions) == 8
    # ResNetV1 blocks end in BatchNorm: Guideline 1 puts dropout at the branch's end, which the audit
    # accepts (branch.guideline) but cannot name P6 (the paper's figure is pre-activation); said so
    assert set(variant.positions) == {"branch.guideline"}
    assert any(c.startswith("audit  8 of 8") for c in variant.changes)
    variant.model.load_state_dict(target.model.state_dict())


def test_a_variant_whose_state_dict_differs_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import dropcheck.training.variants

    build = dropcheck.training.variants.build_fixed

    def with_extra_buffer(*args: object) -> nn.Module:
        model = build(*args)
        model.register_buffer("extra", torch.zeros(1))
        return model

    monkeypatch.setattr(dropcheck.training.variants, "build_fixed", with_extra_buffer)
    target = Target("PreResNet", PreResNet(position="none"), torch.randn(2, 3, 16, 16), origin="api")
    with pytest.raises(DropcheckError) as err:
        build_variants(target, ["original", "P6"])
    assert err.value.kind == "fix" and "variant P6" in err.value.message and "extra: extra" in err.value.message


class _Plain(nn.Module):
    """conv-BN-ReLU-pool-fc: no residual branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_a_position_with_no_place_in_the_model_is_a_usage_error() -> None:
    target = Target("Plain", _Plain(), torch.randn(2, 3, 8, 8), origin="api")
    with pytest.raises(DropcheckError) as err:
        build_variants(target, ["P3"])
    assert err.value.kind == "usage" and "P3: no residual branch in _Plain" in err.value.message
    mlp = Target("MLP", nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), torch.randn(2, 4), origin="api")
    with pytest.raises(DropcheckError, match="H5: no global pooling"):
        build_variants(mlp, ["H5"])
    (h3,) = build_variants(target, ["H3"])
    assert h3.positions == ["H3"]


class _Residual(nn.Module):
    """A pre-activation block with stochastic depth on the branch, and an untraceable leaf with dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1, self.conv1 = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1)
        self.bn2, self.conv2 = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1)
        self.sd, self.drop = StochasticDepth(0.2, "row"), nn.Dropout(0.3)
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        out = self.conv2(torch.relu(self.bn2(self.conv1(self.drop(torch.relu(self.bn1(x)))))))
        x = x + self.sd(out)
        return self.fc(self.layer(x.flatten(2).transpose(1, 2)).mean(1))


def test_none_keeps_stochastic_depth_and_zeroes_dropout_it_cannot_reach() -> None:
    model = _Residual()
    target = Target("Residual", model, torch.randn(2, 3, 4, 4), origin="api")
    none, p6 = build_variants(target, ["none", "P6"])
    assert none.positions == [] and p6.positions == ["P6"]
    for variant in (none, p6):
        assert "stochastic depth kept (1 StochasticDepth)" in variant.description
        assert "4 inside untraceable modules set to p=0" in variant.description
        assert "self.sd(" in variant.model.train_src and "self.drop(" not in variant.model.train_src
        layer = variant.model.get_submodule("layer")
        assert layer.dropout.p == layer.dropout1.p == layer.dropout2.p == layer.self_attn.dropout == 0.0
    assert any(c.startswith("keep  sd") for c in none.changes)
    assert model.layer.dropout.p == 0.1 and model.drop.p == 0.3  # the user's model keeps its dropout


def test_none_zeroes_attention_dropout_instead_of_dropping_the_attention() -> None:
    target = load_target(str(EXAMPLES / "transformer.py"), {}, weights=True)
    (none,) = build_variants(target, ["none"])
    x = target.example_input
    assert none.positions == [] and "scaled_dot_product_attention" in none.model.train_src
    assert torch.equal(_train_out(none.model, x, 0), _train_out(none.model, x, 1))
    assert torch.equal(_eval_out(none.model, x), _eval_out(target.model, x))


def test_parse_variants_reads_names_and_sweep_positions() -> None:
    assert parse_variants("original,fixed,none") == ["original", "fixed", "none"]
    assert parse_variants(" p0, P3 ,h5,") == ["P0", "P3", "H5"]
    assert parse_variants("Original,P6") == ["original", "P6"]


@pytest.mark.parametrize("text,message", [("original,P8", "unknown variant 'P8'"), ("fixd", "unknown variant"),
                                          ("P3,p3", "variant P3 is listed twice"), ("", "no variants"),
                                          ("none,,none", "listed twice")])
def test_parse_variants_rejects_unknown_duplicate_and_empty_lists(text: str, message: str) -> None:
    with pytest.raises(DropcheckError) as err:
        parse_variants(text)
    assert err.value.kind == "usage" and message in err.value.message
    expected_hint = "list each variant once" if "twice" in message else "original, fixed, none"
    assert expected_hint in err.value.hint


def test_build_variants_checks_names_before_building() -> None:
    target = Target("Plain", _Plain(), torch.randn(2, 3, 8, 8), origin="api")
    with pytest.raises(DropcheckError, match="unknown variant"):
        build_variants(target, ["original", "P9"])
