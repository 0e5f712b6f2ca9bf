"""dropcheck fix: dropouts end where the guidelines say, and nothing else changes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dropcheck
from dropcheck.fixer.export import write_output
from dropcheck.analysis.load import load_target
from dropcheck.analysis.pipeline import audit
from dropcheck.fixer.pipeline import fix_loaded, fix_target
from dropcheck.records import DropcheckError, FixResult

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
REPO = EXAMPLES.parent


def _fix(example: str, **kwargs: object) -> FixResult:
    result = fix_target(str(EXAMPLES / example), dict(kwargs))
    assert result.ok, ([c for c in result.checks if not c.ok], result.unfixable)
    return result


def _kinds_after(result: FixResult) -> list[tuple[str, str, str | None]]:
    shape = tuple(result.input_shape or ())
    report = audit(result.model, torch.randn(*shape))
    return [(s.id, s.site.value, s.paper_position) for s in report.dropouts if s.active]


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize("position", ["P0", "P1", "P2", "P3", "P4", "P7"])
def test_branch_dropout_moves_to_p6(block: str, position: str) -> None:
    result = _fix("preresnet.py", position=position, block=block)
    rule = "DC005" if position == "P7" else "DC001"
    assert [(c.action, c.rule, c.from_position, c.to_position) for c in result.changes] == \
        [("move", rule, position, "P6")] * 3
    after = _kinds_after(result)
    assert [k for _, k, _ in after] == ["branch.guideline"] * 3 and {p for _, _, p in after} == {"P6"}


@pytest.mark.parametrize("position", ["P5", "P6"])
def test_dropout_at_the_guideline_is_left_alone(position: str) -> None:
    assert _fix("preresnet.py", position=position).changes == []


@pytest.mark.parametrize("head", ["H1", "H2", "H5", "H6", "H7"])
def test_head_dropout_moves_before_the_pool(head: str) -> None:
    result = _fix("mobilenet_head.py", head_position=head)
    (change,) = result.changes
    assert (change.action, change.from_position, change.to_position, change.module) == ("move", head, "H4", "drop")
    assert _kinds_after(result) == [("drop", "head.pre_gap", "H4")]


@pytest.mark.parametrize("head", ["H3", "H4"])
def test_head_dropout_at_the_guideline_stays(head: str) -> None:
    assert _fix("mobilenet_head.py", head_position=head).changes == []


@pytest.mark.parametrize("position", ["after_conv1", "after_relu1"])
def test_resnet_v1_dropout_moves_to_the_end_of_the_branch(position: str) -> None:
    result = _fix("resnet_v1.py", position=position)
    assert all(c.to.startswith("end of the branch") for c in result.changes) and len(result.changes) == 3
    assert {k for _, k, _ in _kinds_after(result)} == {"branch.guideline"}


def test_densenet_dropouts_become_one_head_dropout() -> None:
    # no residual branch downstream: they go to the head (H4), one dropout for all
    result = _fix("densenet.py")
    assert [c.action for c in result.changes] == ["move"] + ["remove"] * 5
    assert _kinds_after(result) == [("blocks.0.layers.0.drop", "head.pre_gap", "H4")]


def test_always_on_functional_dropout_becomes_a_module_and_eval_is_deterministic() -> None:
    result = _fix("functional_bug.py")
    (change,) = result.changes
    assert (change.action, change.rule, change.module) == ("convert", "DC006", "dropout_1")  # "dropout" is taken
    check = next(c for c in result.checks if c.name == "eval outputs")
    assert "switched off" in check.detail
    model, x = result.model.eval(), torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), model(x))


def test_transformer_without_batchnorm_needs_no_change() -> None:
    assert _fix("transformer.py").changes == []


def test_fixed_model_drops_in_train_mode_and_not_in_eval_mode() -> None:
    model = _fix("preresnet.py", position="P3").model
    x = torch.randn(2, 3, 32, 32)
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.equal(a, model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_train_mode_check_leaves_buffers_flags_and_rng_as_they_were() -> None:
    result = _fix("preresnet.py", position="P3")
    check = next(c for c in result.checks if c.name == "train mode")
    assert check.ok and "drop in train mode" in check.detail
    target = load_target(str(EXAMPLES / "preresnet.py"), {"position": "P3"}, weights=True)
    model = result.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    rng = torch.random.get_rng_state()
    from dropcheck.fixer.verify import verify_fix
    from dropcheck.analysis.capture import capture_graph
    from dropcheck.analysis.sites import find_sites
    capture = capture_graph(target)
    sites = find_sites(capture).sites
    checks = verify_fix(capture, model, target.inputs, False, lambda m: (audit(m, target.inputs[0]), 0), sites)
    assert next(c for c in checks if c.name == "train mode").ok
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN running stats too
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_train_mode_check_fails_when_a_dropout_stops_dropping() -> None:
    target = load_target(str(EXAMPLES / "preresnet.py"), {"position": "P3"}, weights=True)
    model = fix_loaded(target).model
    name, drop = next((n, m) for n, m in model.named_modules() if type(m) is nn.Dropout and m.p > 0)
    drop.forward = lambda x: x.clone()  # reached in train mode, but drops nothing
    from dropcheck.fixer.verify import verify_fix
    from dropcheck.analysis.capture import capture_graph
    from dropcheck.analysis.sites import find_sites
    capture = capture_graph(target)
    checks = verify_fix(capture, model, target.inputs, False, lambda m: (audit(m, target.inputs[0]), 0),
                        find_sites(capture).sites)
    check = next(c for c in checks if c.name == "train mode")
    assert not check.ok and name in check.detail


class _ZeroGammaBlock(nn.Module):
    """A residual block whose last BatchNorm is zero-initialised (timm, torchvision's zero_init_residual):
    untrained, its branch adds nothing in eval mode, so any branch computes the same outputs."""

    def __init__(self, wrong: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        nn.init.zeros_(self.bn.weight)
        self.wrong = wrong

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = F.relu(x) if self.wrong else x  # a wrong rewrite: an activation that was not there
        return x + self.bn(self.conv(inner))


def test_eval_check_catches_a_wrong_branch_that_zero_initialised_weights_hide() -> None:
    from dropcheck.fixer.verify import verify_fix
    from dropcheck.analysis.capture import capture_graph
    from dropcheck.analysis.pipeline import api_target

    original, wrong = _ZeroGammaBlock(), _ZeroGammaBlock(wrong=True)
    wrong.load_state_dict(original.state_dict())
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(original.eval()(x), wrong.eval()(x))  # the original weights cannot tell them apart
    own = {k: v.clone() for k, v in original.state_dict().items()}
    capture = capture_graph(api_target(original, x))
    checks = verify_fix(capture, wrong, (x,), False, lambda m: (audit(m, x), 0))
    check = next(c for c in checks if c.name == "eval outputs")
    assert not check.ok and "randomised BatchNorm statistics" in check.detail
    assert all(torch.equal(v, own[k]) for k, v in original.state_dict().items())  # restored exactly
    right = _ZeroGammaBlock()
    right.load_state_dict(own)
    ok = next(c for c in verify_fix(capture, right, (x,), False, lambda m: (audit(m, x), 0)) if c.name == "eval outputs")
    assert ok.ok and "randomised BatchNorm statistics" in ok.detail


class _PooledBatchNorm(nn.Module):
    """Functional batch_norm on a pooled 1x1 map: train mode needs two values per channel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.register_buffer("mean", torch.zeros(8))
        self.register_buffer("var", torch.ones(8))
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1)
        x = F.batch_norm(x, self.mean, self.var, training=self.training)
        return self.fc(self.drop(torch.flatten(x, 1)))


def test_train_mode_check_runs_a_batch_of_one_as_two_when_it_must() -> None:
    result = dropcheck.fix(_PooledBatchNorm(), torch.randn(1, 3, 16, 16))
    check = next(c for c in result.checks if c.name == "train mode")
    assert check.ok, check.detail


def test_original_checkpoint_loads_strictly_and_the_user_model_is_untouched() -> None:
    target = load_target(str(EXAMPLES / "preresnet.py"), {"position": "P3"}, weights=True)
    before = {k: v.clone() for k, v in target.model.state_dict().items()}
    result = fix_loaded(target)
    result.model.load_state_dict(target.model.state_dict(), strict=True)
    assert all(torch.equal(before[k], v) for k, v in target.model.state_dict().items())
    assert target.model.stages[0][0].drop is not result.model.stages[0][0].drop  # fix worked on a copy


def test_fix_p_override_and_add() -> None:
    result = fix_target(str(EXAMPLES / "preresnet.py"), {"position": "none"}, add=0.1)
    assert [(c.action, c.to_position) for c in result.changes] == [("add", "P6")] * 3 + [("add", "H4")]
    assert {k for _, k, _ in _kinds_after(result)} == {"branch.guideline", "head.pre_gap"}
    moved = fix_target(str(EXAMPLES / "preresnet.py"), {"position": "P3"}, p=0.05)
    assert {c.p for c in moved.changes} == {0.05}
    assert moved.model.stages[0][0].drop.p == 0.05


class _AuxNet(nn.Module):
    """Train mode returns (logits, aux) like Inception: fx freezes that, FixedModel keeps both modes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc, self.aux = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 2), nn.Linear(8, 2)
        self.drop = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor):
        x = F.relu(self.bn(self.conv(x)))
        logits = self.fc(self.drop(x.mean((2, 3))))
        if self.training:  # its own pooling: dropout before the mean (H4) leaves the aux logits alone
            return logits, self.aux(x.amax((2, 3)))
        return logits


def test_train_only_outputs_survive_the_fix() -> None:
    result = dropcheck.fix(_AuxNet(), torch.randn(2, 3, 8, 8))
    assert result.ok and [c.to_position for c in result.changes] == ["H4"]
    model = result.model
    assert isinstance(model.train()(torch.randn(2, 3, 8, 8)), tuple)
    assert isinstance(model.eval()(torch.randn(2, 3, 8, 8)), torch.Tensor)


@pytest.mark.parametrize("spec, kwargs, shape, moved", [
    ("torchvision:densenet121", {"drop_rate": 0.2}, (1, 3, 64, 64), 58),
    ("torchvision:efficientnet_b0", {}, (1, 3, 64, 64), 1),
    ("torchvision:mobilenet_v2", {}, (1, 3, 64, 64), 1),
    ("torchvision:mobilenet_v3_small", {}, (1, 3, 64, 64), 1),
    ("torchvision:inception_v3", {}, (2, 3, 299, 299), 1),
    ("timm:resnet18", {"drop_block_rate": 0.1}, (1, 3, 64, 64), 4),
    ("timm:resnet18", {"drop_rate": 0.2}, (1, 3, 64, 64), 1),
])
def test_zoo_models_are_fixed_and_verified(spec: str, kwargs: dict, shape: tuple, moved: int) -> None:
    result = fix_target(spec, kwargs, shape)
    assert result.ok, [c for c in result.checks if not c.ok]
    assert len(result.changes) == moved
    assert all(c.ok for c in result.checks) and {c.name for c in result.checks} == {
        "eval outputs", "state_dict", "train mode", "re-audit", "idempotent"}


def test_exported_folder_imports_and_runs_in_a_fresh_process(tmp_path: Path) -> None:
    result = _fix("preresnet.py", position="P3", head_position="H5")
    out = tmp_path / "fixed"
    files = write_output(result, out, force=False)
    assert {f.name for f in files} >= {"module.py", "state_dict.pt", "changes.json"}
    changes = json.loads((out / "changes.json").read_text())
    assert [c["to_position"] for c in changes["changes"]] == ["P6", "P6", "P6", "H4"]
    assert all(c["ok"] for c in changes["verification"])
    x = torch.randn(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(result.model.eval()(x), tmp_path / "y.pt")
    script = (f"import sys, torch; sys.path.insert(0, {str(out)!r}); from module import FixedModel; "
              f"m = FixedModel().eval(); x = torch.load({str(tmp_path / 'x.pt')!r}); "
              f"y = torch.load({str(tmp_path / 'y.pt')!r}); "
              "assert torch.equal(m(x), y); m.train(); assert not torch.equal(m(x), m(x)); print('same')")
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0 and "same" in run.stdout, run.stderr


def test_pt_output_round_trips_and_existing_output_is_never_overwritten(tmp_path: Path) -> None:
    result = _fix("preresnet.py", position="P3")
    out = tmp_path / "fixed.pt"
    write_output(result, out, force=False)
    loaded = torch.load(out, weights_only=False).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), result.model.eval()(x))
    before = out.read_bytes()
    with pytest.raises(DropcheckError) as caught:
        write_output(result, out, force=False)
    assert caught.value.kind == "output" and "--force" in caught.value.hint
    assert out.read_bytes() == before
    write_output(result, out, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["fixed.pt"]  # no temporary files left behind


class _WithConstant(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.drop = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.drop(self.conv(x)) * torch.tensor([2.0]))  # a tensor the tracer stores


def test_tracer_constants_follow_the_fixed_model_to_another_dtype_or_device() -> None:
    model = _WithConstant().eval()
    attributes = set(model.__dict__)
    fixed = dropcheck.fix(model, torch.randn(2, 3, 8, 8)).model
    assert set(model.__dict__) == attributes  # fx's tracer parks constants on the root: taken back
    assert fixed._constants, "the model should have a tracer constant"
    moved = fixed.to(torch.float64)
    assert all(v.dtype == torch.float64 for v in moved._constants.values())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert moved.eval()(x).dtype == torch.float64


class _TwoDropsInABranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn1, self.bn2 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        self.conv1, self.conv2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.drop_a, self.drop_b = nn.Dropout(0.2), nn.Dropout(0.1)  # P3 (DC001) and P6 (kept)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        out = self.conv1(self.drop_a(F.relu(self.bn1(x))))
        out = self.conv2(self.drop_b(F.relu(self.bn2(out))))
        return self.head(out + x)


def test_a_removed_dropout_module_becomes_identity_so_the_re_audit_sees_no_unused_dropout() -> None:
    model = _TwoDropsInABranch().eval()
    result = dropcheck.fix(model, torch.randn(2, 3, 8, 8))
    assert [(c.action, c.dropout) for c in result.changes] == [("remove", "drop_a")]
    assert isinstance(result.model.drop_a, nn.Identity) and isinstance(model.drop_a, nn.Dropout)
    again = dropcheck.audit(result.model, torch.randn(2, 3, 8, 8))
    assert not again.findings
    assert result.model.state_dict().keys() == model.state_dict().keys()
