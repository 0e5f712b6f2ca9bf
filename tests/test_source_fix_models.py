"""`dropcheck fix` on more models written the way people write them (issue 12): a CIFAR DenseNet-BC,
a CIFAR MobileNetV2, a CIFAR EfficientNet-B0, and a classifier that also returns its features
(benchmarks/fix_speed.py fixes the benchmark's EfficientNet, whose head has no activation: H3).

Each model was labelled by reading its code before running the tool (the labels are in the cases
below, with why). Each is patched in a temporary copy with --in-place; then a fresh Python, with no
help from dropcheck's own checks, builds the original and the patched model with the same
arguments, loads the original's state_dict into the patched one with strict=True, compares eval
outputs with torch.equal, checks that train mode still drops, and re-audits the patched model.
A second fix must change nothing.
"""
from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from source_models_more import DENSENET_BC, EFFICIENTNET_B0, MOBILENET_V2, WITH_FEATURES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600
CHECKS = ("fresh import", "state_dict", "eval outputs", "train mode", "re-audit", "idempotent")

# Run in a fresh interpreter: build the original and the patched model from their files with the
# same arguments and seed, and say what a user would check by hand (JSON on stdout).
VERIFY = r'''
import importlib.util, json, sys
import torch
import dropcheck

def build(path, name, factory, kwargs):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    return getattr(module, factory)(**kwargs), module.INPUT_SHAPE

original_path, patched_path, factory, kwargs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
original, shape = build(original_path, "original_model", factory, kwargs)
patched, _ = build(patched_path, "patched_model", factory, kwargs)
# BatchNorm statistics from a few batches first: at initialisation a deep net's eval signal fades
# (an EfficientNet's logits are its fc bias to 4 digits), and equal outputs would prove little
for m in original.modules():
    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
        m.momentum = None  # a plain average over the batches
original.train()
with torch.no_grad():
    for k in range(4):
        original(torch.randn(8, *shape[1:], generator=torch.Generator().manual_seed(100 + k)))
missing = patched.load_state_dict(original.state_dict(), strict=True)
original.eval(); patched.eval()
inputs = [torch.randn(*shape, generator=torch.Generator().manual_seed(k)) for k in range(3)]
first = lambda out: out[0] if isinstance(out, tuple) else out
with torch.no_grad():
    outputs = [first(original(x)) for x in inputs]
    equal = [torch.equal(out, first(patched(x))) for out, x in zip(outputs, inputs)]
    spread = float(torch.stack(outputs).std(0).mean())
    for m in patched.modules():  # only the dropout modules in train mode (drop connect stays off)
        m.train(isinstance(m, torch.nn.Dropout))
    torch.manual_seed(1); a = first(patched(inputs[0]))
    torch.manual_seed(2); b = first(patched(inputs[0]))
patched.eval()
report = dropcheck.audit(patched, inputs[0])
print(json.dumps({
    "strict_load": not missing.missing_keys and not missing.unexpected_keys,
    "keys": len(original.state_dict()),
    "eval_equal": equal,
    "eval_spread": spread,
    "train_drops": not torch.equal(a, b),
    "findings": sorted({f.rule for f in report.findings}),
    "dropouts": {s.id: s.paper_position for s in report.dropouts},
}))
'''


@dataclass(frozen=True)
class Case:
    source: str
    file: str
    factory: str
    model_args: dict[str, object]
    moves: list[str]  # the plan's lines (`move ...`, `remove ...`), as the fix prints them
    changed: list[str]  # the diff's changed lines, in order
    dropouts_after: dict[str, str | None]  # the re-audit's dropouts and their paper positions


CASES = {
    # Every bottleneck's dropout is concatenated into the input of every later BatchNorm of its block
    # and of the transition (or the head) after it: concatenation is not a residual merge (design
    # §3), so each reaches a BN: six DC001, the last one at H2 (the head's bn). There is no residual
    # branch to keep one in; the one place after which no BatchNorm follows is the head, after bn and
    # relu, before the pool (H4): one dropout goes there and the other five go (Guideline 1: one).
    "densenet-bc": Case(
        DENSENET_BC, "densenet.py", "densenet_bc", {},
        moves=["move  dense1.0/dropout  -> H4 before global pooling /avg_pool2d_2 as head_dropout  (DC001, p=0.2)",
               *(f"remove  {site}/dropout  {at}one dropout stays: head_dropout at H4  (DC001)" for site, at in (
                   ("dense1.1", ""), ("dense2.0", ""), ("dense2.1", ""), ("dense3.0", ""), ("dense3.1", "H2, ")))],
        changed=["-        if self.drop_rate > 0:",
                 "-            out = F.dropout(out, p=self.drop_rate, training=self.training)",
                 "+        self.head_dropout = nn.Dropout(p=0.2)",
                 "+        out = self.head_dropout(out)"],
        dropouts_after={"head_dropout": "H4"}),
    # inverted residuals end in a linear bottleneck (bn3, no activation) and hold no dropout; the head
    # is conv2-bn2-relu6, pool, view, dropout (H5: DC002), linear: the dropout moves after relu6 (H4)
    "mobilenet-v2": Case(
        MOBILENET_V2, "mbv2.py", "mobilenet_v2", {},
        moves=["move  dropout  H5 -> H4 before global pooling /adaptive_avg_pool2d  (DC002, p=0.2)"],
        changed=["+        out = self.dropout(out)  # regularise the classifier",
                 "-        out = self.dropout(out)  # regularise the classifier"],
        dropouts_after={"dropout": "H4"}),
    # a conv-bn-swish head (`x * torch.sigmoid(x)`, an activation): the dropout lands after it (H4);
    # the SE gates (`x * torch.sigmoid(s)`, s another tensor) are not activations, and drop connect is
    # not dropout
    "efficientnet-b0-swish-head": Case(
        EFFICIENTNET_B0, "effb0.py", "EfficientNet", {"width_mult": 0.25, "depth_mult": 0.5},
        moves=["move  dropout  H5 -> H4 before global pooling /adaptive_avg_pool2d_10  (DC002, p=0.2)"],
        changed=["+        x = self.dropout(x)", "-        x = self.dropout(x)"],
        dropouts_after={"dropout": "H4"}),
}


def _dropcheck(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "dropcheck", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


def _target(case: Case) -> list[str]:
    args = [f"{case.file}:{case.factory}"]
    for key, value in case.model_args.items():
        args += ["-a", f"{key}={value!r}"]
    return args


def _changed_lines(diff: str) -> list[str]:
    return [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def _verify_in_fresh_python(original: Path, patched: Path, case: Case) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", VERIFY, str(original), str(patched), case.factory,
                           json.dumps(case.model_args)], cwd=patched.parent, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("name", sorted(CASES))
def test_fix_patches_the_model_and_a_fresh_python_finds_it_equivalent(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    path = tmp_path / case.file
    path.write_text(case.source)
    applied = _dropcheck(tmp_path, "fix", *_target(case), "--in-place")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    lines = [line.strip() for line in applied.stdout.splitlines()]
    assert [line for line in lines if line.startswith(("move ", "remove "))] == case.moves
    for check in CHECKS:  # dropcheck's own checks, on the patched copy, before writing
        assert any(line.startswith(f"ok    {check}: ") for line in lines), (check, applied.stdout)
    assert lines[-1] == f"changed {path.resolve()}"
    patched = path.read_text()
    diff = difflib.unified_diff(case.source.splitlines(), patched.splitlines(), lineterm="")
    assert _changed_lines("\n".join(diff)) == case.changed  # a few lines, not a regenerated file

    original = tmp_path / "original_copy.py"
    original.write_text(case.source)
    seen = _verify_in_fresh_python(original, path, case)
    assert seen["strict_load"] and seen["keys"] > 0
    assert seen["eval_equal"] == [True, True, True]
    assert seen["eval_spread"] > 1e-3  # the inputs give different outputs: the comparison means something
    assert seen["train_drops"]
    assert not {"DC001", "DC002", "DC003", "DC004"} & set(seen["findings"]), seen["findings"]
    assert seen["dropouts"] == case.dropouts_after

    again = _dropcheck(tmp_path, "fix", *_target(case), "--diff")
    assert again.returncode == 0 and again.stdout == "(no change to your source files)\n", again.stdout
    assert path.read_text() == patched


def test_the_audit_of_densenet_bc_flags_every_dropout_before_the_concatenation(tmp_path: Path) -> None:
    # read first: a bottleneck's output is concatenated with its input, and the concatenation feeds the
    # next bottleneck's bn1 and, passed along, the transition's bn (or the head's bn): no add between
    (tmp_path / "densenet.py").write_text(DENSENET_BC)
    result = _dropcheck(tmp_path, "audit", "densenet.py:densenet_bc", "--format", "json")
    assert result.returncode == 1
    report = json.loads(result.stdout)["results"][0]
    seen = {d["id"]: (d["site"], d["paper_position"]) for d in report["dropouts"]}
    assert seen == {**{f"dense{b}.{k}/dropout": ("trunk.pre_bn", None) for b in (1, 2, 3) for k in (0, 1)},
                    "dense3.1/dropout": ("head.pre_bn", "H2")}
    reaches = {f["dropout"]: f["reaches"] for f in report["findings"]}
    assert [f["rule"] for f in report["findings"]] == ["DC001"] * 6
    assert reaches == {"dense1.0/dropout": ["dense1.1.bn1", "trans1.bn"], "dense1.1/dropout": ["trans1.bn"],
                       "dense2.0/dropout": ["dense2.1.bn1", "trans2.bn"], "dense2.1/dropout": ["trans2.bn"],
                       "dense3.0/dropout": ["dense3.1.bn1", "bn"], "dense3.1/dropout": ["bn"]}


# -- a model that returns (logits, features) -------------------------------------------------------
# Read first: `features` is the pooled tensor, returned as is; `self.drop` (H5, DC002) acts only on
# the classifier's input. Moving it before the pool (H4) would drop the returned features in train
# mode, which the original never did (design §6: never a returned feature tensor that was
# dropout-free). The right answer: the site is reported unfixable, with why, the file is left alone,
# and the exit code is 1 (a finding remains).

@pytest.fixture(scope="module")
def features_fix(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    folder = tmp_path_factory.mktemp("features")
    path = folder / "embed.py"
    path.write_text(WITH_FEATURES)
    return _dropcheck(folder, "fix", "embed.py", "--in-place"), path


def test_fix_never_writes_a_patch_that_drops_the_returned_features(features_fix) -> None:
    result, path = features_fix
    assert result.returncode != 0
    assert path.read_text() == WITH_FEATURES


# the plan keeps a moved dropout off returned tensors the original left alone (issue 13)
def test_a_dropout_whose_move_would_reach_returned_features_is_reported_unfixable(features_fix) -> None:
    result, path = features_fix
    assert result.returncode == 1, result.stdout + result.stderr
    refused = [line.strip() for line in result.stdout.splitlines()
               if line.strip().startswith(("cannot fix", "not in source"))]
    assert len(refused) == 1 and " drop" in refused[0], result.stdout
    assert any(word in refused[0] for word in ("features", "output", "return")), refused  # says why
    assert "check failed" not in result.stdout + result.stderr
    assert path.read_text() == WITH_FEATURES


# -- swish written out is an activation ------------------------------------------------------------

def _swish_heads() -> dict:
    import torch
    import torch.nn.functional as F

    return {
        "x * x.sigmoid()": (lambda m, out: out * out.sigmoid(), "H4"),
        "torch.sigmoid(x) * x": (lambda m, out: torch.sigmoid(out) * out, "H4"),
        "x.mul(F.sigmoid(x))": (lambda m, out: out.mul(F.sigmoid(out)), "H4"),
        "x * nn.Sigmoid()(x)": (lambda m, out: out * m.sigmoid(out), "H4"),
        # a squeeze-and-excitation gate multiplies by the sigmoid of another tensor: not an activation
        "SE gate": (lambda m, out: out * m.gate(out).sigmoid(), "H3"),
        "no activation": (lambda m, out: out, "H3"),
    }


@pytest.mark.parametrize("name", ["x * x.sigmoid()", "torch.sigmoid(x) * x", "x.mul(F.sigmoid(x))",
                                  "x * nn.Sigmoid()(x)", "SE gate", "no activation"])
def test_swish_written_out_is_an_activation_in_the_head(name: str) -> None:
    import torch
    import torch.nn.functional as F
    from torch import nn

    import dropcheck

    activation, position = _swish_heads()[name]

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(8)
            self.gate = nn.Conv2d(8, 8, 1)
            self.sigmoid = nn.Sigmoid()
            self.drop = nn.Dropout(0.2)
            self.fc = nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = activation(self, self.bn(self.conv(x)))
            out = self.drop(out)
            return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))

    report = dropcheck.audit(Head(), torch.randn(2, 3, 8, 8))
    assert [(s.id, s.paper_position) for s in report.dropouts] == [("drop", position)]
