"""Issue 13: fix beyond the paper's residual shapes, on models written the way people write them
(tests/models13/, each labelled in its docstring by reading the code before running the tool).

Each model is either fixed and verified here independently of fix's own checks (eval outputs
torch.equal, strict state_dict load both ways, a re-audit clean on the fixed sites, a second fix
changes nothing, train mode still drops), or reports exactly the sites it cannot fix. The CLI runs
(exit codes, the written output, the source patch checked in a fresh Python) are subprocesses, started
together the first time a test asks for one.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dropcheck
from dropcheck.cli.fix import _nothing_written
from dropcheck.fixer.verify import first_difference
from dropcheck.records import Check, FixResult

ROOT = Path(__file__).resolve().parents[1]
MODELS = Path(__file__).resolve().parent / "models13"
VERIFIED = ("DC001", "DC002", "DC003", "DC004")
TIMEOUT = 240


def _model(name: str, **kwargs: Any) -> tuple[nn.Module, torch.Tensor]:
    """The one model class of tests/models13/NAME.py, built with a fixed seed, and an input for it."""
    spec = importlib.util.spec_from_file_location(f"models13_{name}", MODELS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls = next(v for v in vars(module).values() if isinstance(v, type) and issubclass(v, nn.Module)
               and hasattr(v, "input_shape"))
    torch.manual_seed(0)
    model = cls(**kwargs)
    return model, torch.randn(*cls.input_shape)


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    out = model(x)
    if isinstance(out, dict):
        return list(out.values())
    return list(out) if isinstance(out, tuple) else [out]


def _eval_equal(original: nn.Module, fixed: nn.Module, x: torch.Tensor) -> bool:
    original.eval(), fixed.eval()
    with torch.no_grad():
        return all(torch.equal(a, b) for seed in range(3)
                   for a, b in zip(_outputs(original, x + seed), _outputs(fixed, x + seed)))


def _train_outputs(model: nn.Module, x: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """Train mode with every BatchNorm in eval mode: only dropout makes two seeds differ."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        return _outputs(model, x)


def _fixed_and_checked(name: str, unfixable: tuple[str, ...] = (), **kwargs: Any) -> FixResult:
    model, x = _model(name, **kwargs)
    result = dropcheck.fix(model, x)
    assert all(c.ok for c in result.checks), [c for c in result.checks if not c.ok]
    assert [u.split(": ")[0] for u in result.unfixable] == list(unfixable)
    assert _eval_equal(model, result.model, x)
    again, _ = _model(name, **kwargs)  # a fresh original takes the fixed model's weights, and back
    again.load_state_dict(result.model.state_dict(), strict=True)
    result.model.load_state_dict(model.state_dict(), strict=True)
    report = dropcheck.audit(result.model, x)
    assert [(f.rule, f.dropout) for f in report.findings if f.rule in VERIFIED and f.dropout not in unfixable] == []
    assert dropcheck.fix(result.model, x).changes == []
    assert any(not torch.equal(a, b) for a, b in zip(_train_outputs(result.model, x, 0),
                                                     _train_outputs(result.model, x, 1)))
    return result


def _changes(result: FixResult) -> list[tuple[str, str, str, float]]:
    return [(c.action, c.dropout, c.module, c.p) for c in result.changes]


# --- networks without a residual merge downstream (Li et al.) ------------------------------------

def test_tabular_mlp_dropouts_settle_before_the_output_layer() -> None:
    result = _fixed_and_checked("tabular_mlp")
    assert _changes(result) == [("remove", "drop1", "drop3", 0.3), ("remove", "drop2", "drop3", 0.3)]
    assert [type(result.model.get_submodule(n)).__name__ for n in ("drop1", "drop2", "drop3")] == \
        ["Identity", "Identity", "Dropout"]


def test_tabular_mlp_with_remove_takes_the_dropouts_out() -> None:
    model, x = _model("tabular_mlp")
    result = dropcheck.fix(model, x, remove=True)
    assert _changes(result) == [("remove", "drop1", "", 0.3), ("remove", "drop2", "", 0.3)]
    assert all(c.ok for c in result.checks) and result.unfixable == []
    assert "removed (no residual merge downstream)" in result.change_lines()[0]
    assert _eval_equal(model, result.model, x)


def test_remove_leaves_dropout_that_enters_a_residual_block_to_guideline_1() -> None:
    from dropcheck.fixer.pipeline import fix_target

    result = fix_target(str(ROOT / "examples" / "preresnet.py"), {"position": "P0"}, remove=True)
    assert {(c.action, c.to_position) for c in result.changes} == {("move", "P6")}
    assert all(c.ok for c in result.checks)


def test_unet_bottleneck_dropout_moves_before_the_final_convolution() -> None:
    result = _fixed_and_checked("small_unet")
    assert _changes(result) == [("move", "dropout", "dropout", 0.5)]
    assert result.changes[0].to == "before final"
    # the decoder's BatchNorms see no dropout in train mode now: the final conv's input is dropped
    fixed = result.model
    seen: dict[str, torch.Tensor] = {}
    handles = [fixed.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, a[0]))
               for n in ("dec1.bn1", "final")]
    model, x = _model("small_unet")
    try:
        first = _train_outputs(fixed, x, 0) and dict(seen)
        _train_outputs(fixed, x, 1)
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(first["dec1.bn1"], seen["dec1.bn1"]) and not torch.equal(first["final"], seen["final"])


def test_cnn_fc_head_dropouts_go_after_batchnorm1d_and_its_activation_with_the_larger_p() -> None:
    result = _fixed_and_checked("vgg_fc")
    assert _changes(result) == [("move", "drop", "drop", 0.5), ("remove", "/dropout", "drop", 0.25)]
    assert result.changes[0].to == "before fc2"
    assert result.model.drop.p == 0.5


# --- BatchNorm after pooling, multi-output models, channel-wise dropout ---------------------------

def test_face_embedding_with_batchnorm1d_last_is_unfixable_and_says_which_batchnorm() -> None:
    result = _fixed_and_checked("face_embedding", unfixable=("dropout",))
    assert result.changes == []
    reason = result.unfixable[0]
    assert reason.startswith("dropout: no place for it (DC002): before global pooling pool it still reaches "
                             "BatchNorm features")
    assert "no weight layer follows features" in reason


def test_head_with_batchnorm_after_pooling_moves_after_its_last_batchnorm() -> None:
    model, x = _model("face_classifier")
    result = dropcheck.fix(model, x)
    assert all(c.ok for c in result.checks), [c for c in result.checks if not c.ok]
    assert [(c.action, c.dropout, c.to) for c in result.changes] == [("move", "drop", "before classifier")]
    reaudit = next(c for c in result.checks if c.name == "re-audit")
    assert "DC002 stays on drop, after the head's last BatchNorm" in reaudit.detail
    report = dropcheck.audit(result.model, x)
    assert {f.rule for f in report.findings} == {"DC002"}  # DC001 is gone; the lesser harm stays, and is said
    assert _eval_equal(model, result.model, x)
    assert dropcheck.fix(result.model, x).changes == []


def test_resnet_returning_logits_and_features_never_drops_the_features() -> None:
    result = _fixed_and_checked("resnet_features", unfixable=("drop",))
    assert [(c.action, c.dropout, c.to_position) for c in result.changes] == [("move", "layer1.drop", "P6")]
    assert result.unfixable == ["drop: no place for it (DC002): before global pooling avgpool it would also drop "
                                "the returned /flatten"]
    model, x = _model("resnet_features")
    fixed = dropcheck.fix(model, x).model
    fixed.layer1.drop.p = 0.0  # only the head's dropout left: the returned features must not vary
    first, second = _train_outputs(fixed, x, 0), _train_outputs(fixed, x, 1)
    assert torch.equal(first[1], second[1]) and not torch.equal(first[0], second[0])


def test_resnet_returning_a_dict_moves_the_logits_dropout_on_the_pool_edge_only() -> None:
    result = _fixed_and_checked("resnet_dict")
    assert [(c.action, c.dropout, c.to_position) for c in result.changes] == \
        [("move", "layer1/dropout", "P6"), ("move", "dropout", "H4")]


def test_channelwise_dropout_before_the_pool_becomes_elementwise() -> None:
    result = _fixed_and_checked("audio_cnn")
    assert [(c.action, c.dropout, c.to, c.rule) for c in result.changes] == \
        [("convert", "drop", "in place, element-wise", "DC002")]
    assert type(result.model.drop) is nn.Dropout and result.model.drop.p == 0.2
    moved = _fixed_and_checked("audio_cnn", head_drop=True)
    assert [(c.action, c.dropout) for c in moved.changes] == [("remove", "post_drop"), ("convert", "drop")]


class ChannelHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 4)
        self.drop = nn.Dropout2d(0.25)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x))).mean((2, 3), keepdim=True)
        return self.fc(self.drop(x).flatten(1))


def test_channelwise_dropout_moved_to_h4_becomes_elementwise_in_the_graph_rewrite() -> None:
    torch.manual_seed(0)
    model, x = ChannelHead(), torch.randn(2, 3, 8, 8)
    result = dropcheck.fix(model, x)
    assert all(c.ok for c in result.checks)
    assert [(c.action, c.to_position, c.to) for c in result.changes] == \
        [("move", "H4", "before global pooling /mean, element-wise")]
    assert type(result.model.drop) is nn.Dropout and result.model.drop.p == 0.25
    assert _eval_equal(model, result.model, x)


class RootResidual(nn.Module):
    """A residual block written out in the model's own forward, its dropout before bn2."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1, self.conv1 = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1)
        self.bn2, self.conv2 = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.stem(x)
        out = self.conv1(F.relu(self.bn1(x)))
        out = F.dropout(out, 0.2, training=self.training)
        x = x + self.conv2(F.relu(self.bn2(out)))
        return self.fc(x.mean((2, 3)))


def test_a_dropout_moved_into_a_residual_branch_is_not_named_head_dropout() -> None:
    result = dropcheck.fix(RootResidual(), torch.randn(2, 3, 8, 8))
    assert all(c.ok for c in result.checks)
    assert [(c.to_position, c.module) for c in result.changes] == [("P6", "drop_guideline")]


# --- what fix says when a check fails ----------------------------------------------------------

def test_a_failed_check_names_itself_and_its_reason() -> None:
    result = FixResult(target="m.py", model=None, changes=[], unfixable=[], code_before="", code_after="",
                       checks=[Check("eval outputs", True, "bit-identical"),
                               Check("re-audit", False, "the fixed model still has DC003 on drop (m.py:12)")])
    assert _nothing_written(result) == \
        "nothing written: check failed: re-audit: the fixed model still has DC003 on drop (m.py:12)"


def test_the_output_that_differs_is_named() -> None:
    a, b = torch.zeros(2), torch.ones(2)
    assert first_difference((a, a), (a, b)) == "output[1]"
    assert first_difference({"logits": a, "features": a}, {"logits": a, "features": b}) == "output['features']"
    assert first_difference(a, b) == ""


# --- the CLI: exit codes, what is written, the source patch ---------------------------------------

def _runs(tmp: Path) -> dict[str, list[str]]:
    for name in ("small_unet", "vgg_fc", "resnet_features", "face_classifier"):
        (tmp / "project").mkdir(exist_ok=True)
        shutil.copy(MODELS / f"{name}.py", tmp / "project" / f"{name}.py")
    src = tmp / "project"
    return {
        "mlp": ["fix", "tests/models13/tabular_mlp.py", "--dry-run", "-o", str(tmp / "mlp")],
        "mlp-remove": ["fix", "tests/models13/tabular_mlp.py", "--remove", "--dry-run", "-o", str(tmp / "mlp2")],
        "face": ["fix", "tests/models13/face_embedding.py", "-o", str(tmp / "face")],
        "features-json": ["fix", "tests/models13/resnet_features.py", "--dry-run", "--format", "json"],
        "unet-diff": ["fix", str(src / "small_unet.py"), "--diff"],
        "features-diff": ["fix", str(src / "resnet_features.py"), "--diff"],
        "vgg-in-place": ["fix", str(src / "vgg_fc.py"), "--in-place"],
        "face-classifier-diff": ["fix", str(src / "face_classifier.py"), "--diff"],
    }


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, subprocess.CompletedProcess[str]]]:
    tmp = tmp_path_factory.mktemp("fix13")
    runs = _runs(tmp)

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dropcheck", *argv], cwd=ROOT, capture_output=True, text=True,
                              timeout=TIMEOUT)

    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(runs, pool.map(run, runs.values())))
    for name, proc in done.items():
        assert "Traceback" not in proc.stderr, (name, proc.stderr)  # an exit code, never a crash
    return tmp, done


def test_cli_fixed_mlp_exits_0_and_remove_removes(cli) -> None:
    _, runs = cli
    assert runs["mlp"].returncode == 0, runs["mlp"].stderr
    assert "  remove  drop1  one dropout stays: drop3  (DC001)" in runs["mlp"].stdout
    assert runs["mlp-remove"].returncode == 0, runs["mlp-remove"].stderr
    assert "  remove  drop2  removed (no residual merge downstream)  (DC001, p=0.3)" in runs["mlp-remove"].stdout


def test_cli_unfixable_site_is_a_result_exit_1_and_the_rest_is_written(cli) -> None:
    tmp, runs = cli
    face = runs["face"]
    assert face.returncode == 1, face.stderr
    assert "  cannot fix  dropout: no place for it (DC002): before global pooling pool it still reaches BatchNorm " \
           "features" in face.stdout
    assert (tmp / "face").is_dir() and "left as they were" in face.stdout
    doc = json.loads(runs["features-json"].stdout)
    assert runs["features-json"].returncode == 1
    assert [c["dropout"] for c in doc["fix"]["changes"]] == ["layer1.drop"]
    assert doc["fix"]["unfixable"] == ["drop: no place for it (DC002): before global pooling avgpool it would also "
                                       "drop the returned /flatten"]


def test_cli_source_patch_moves_the_unet_dropout_before_the_final_conv(cli) -> None:
    _, runs = cli
    unet = runs["unet-diff"]
    assert unet.returncode == 0, unet.stderr
    assert "-        x3 = self.dropout(x3)\n" in unet.stdout
    assert "+        y = self.dropout(y)\n         return self.final(y)" in unet.stdout
    features = runs["features-diff"]
    assert features.returncode == 1, features.stderr
    assert "+        out = self.conv2(self.drop(torch.relu(self.bn2(out))))" in features.stdout
    assert "cannot fix: drop: no place for it (DC002)" in features.stderr
    face = runs["face-classifier-diff"]  # checked in a fresh Python: DC002 stays there on purpose
    assert face.returncode == 0, face.stdout + face.stderr
    assert "+        return self.classifier(self.drop(x))" in face.stdout


def test_cli_in_place_source_fix_audits_clean_in_a_fresh_process(cli) -> None:
    tmp, runs = cli
    assert runs["vgg-in-place"].returncode == 0, runs["vgg-in-place"].stdout + runs["vgg-in-place"].stderr
    text = (tmp / "project" / "vgg_fc.py").read_text()
    assert "F.dropout(x" not in text and "return self.fc2(self.drop(x))" in text
    audit = subprocess.run([sys.executable, "-m", "dropcheck", "audit", str(tmp / "project" / "vgg_fc.py"),
                            "--format", "json"], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert audit.returncode == 0, audit.stderr
    assert json.loads(audit.stdout)["results"][0]["findings"] == []
