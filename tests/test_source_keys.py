"""`dropcheck fix` on the user's own code when the patch changes numbers, not only lines (issue 12):
the p the plan settles on is written into the source (or a note says why not), and a move within an
nn.Sequential that renames state_dict keys is allowed only with `--checkpoint OLD --checkpoint-out NEW`,
which prints the key mapping and converts the checkpoint. Every converted checkpoint is loaded back
in a fresh process into the patched model, with strict=True, and gives the original's eval outputs.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dropcheck.fixer.source_edits import SetDropoutP
from dropcheck.fixer.source_keys import PEdit, even_p_edits, key_map
from dropcheck.fixer.source_requests import ReorderSequential

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600

# a VGG-style CIFAR net written as one nn.Sequential: Dropout2d between conv-bn-relu blocks
VGG = '''import torch
import torch.nn as nn
import torch.nn.functional as F


class VGGish(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.2),  # between the convolutions
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.3),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        out = self.features(x)
        out = F.adaptive_avg_pool2d(out, 1)
        return self.fc(torch.flatten(out, 1))


INPUT_SHAPE = (2, 3, 16, 16)
'''

# read from the code above: both Dropout2d reach a BatchNorm (DC001); with no residual branch they
# settle on one dropout before the global pool (H4), after features.14. The first moves there (and
# becomes element-wise, with the larger p), the second goes: every conv and BN after index 3 shifts
# down by one, those after index 11 by two.
RENAMED = {4: 3, 5: 4, 8: 7, 9: 8, 12: 10, 13: 11}
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
EXPECTED_MAP = {f"features.{old}.{name}": f"features.{new}.{name}"
                for old, new in RENAMED.items() for name in (BN_KEYS if old in (5, 9, 13) else ("weight",))}

# a CIFAR ResNet-ish net: a block whose p is a constructor argument, and two head dropouts with
# their own literal p after the pool (DC002): both settle before the pool, on one dropout
HEAD = '''import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, planes, drop_rate=0.1):
        super().__init__()
        self.conv1 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.drop = nn.Dropout(drop_rate)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x):
        out = self.drop(F.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)


class Net(nn.Module):
    def __init__(self, width=8, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.block = Block(width)
        self.drop1 = nn.Dropout(0.1)
        self.fc1 = nn.Linear(width, 32)
        self.drop2 = nn.Dropout(p=0.4)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x):
        out = self.block(F.relu(self.bn(self.conv(x))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        out = self.drop1(out)
        out = F.relu(self.fc1(out))
        out = self.drop2(out)
        return self.fc2(out)


INPUT_SHAPE = (2, 3, 16, 16)
'''

# run in a fresh Python: the original (orig.py) with OLD, the patched file with NEW, strict loads
COMPARE = '''import sys, torch
sys.path.insert(0, ".")
import orig, vgg
old, new = torch.load("old.pt"), torch.load("new.pt")
state_of = lambda c: c if "features.0.weight" in c else c["model_state_dict"]
a, b = orig.VGGish(), vgg.VGGish()
a.load_state_dict(state_of(old), strict=True)
b.load_state_dict(state_of(new), strict=True)
a.eval(); b.eval()
torch.manual_seed(5)
equal = all(torch.equal(a(x), b(x)) for x in (torch.randn(4, 3, 16, 16) for _ in range(3)))
rest = {k: v for k, v in new.items() if k != "model_state_dict"} if new is not state_of(new) else None
print(equal, sorted(state_of(new)) == sorted(b.state_dict()), rest)
'''


def _dropcheck(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "dropcheck", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


def _python(folder: Path, code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _save_checkpoint(folder: Path, wrapped: bool) -> str:
    """A trained-looking checkpoint of the original (random BN statistics, so equal outputs mean the
    right tensors went to the right layers), saved by torch.save in a fresh process; its sha256."""
    (folder / "orig.py").write_text(VGG)
    _python(folder, f'''import sys, torch
sys.path.insert(0, ".")
import orig
torch.manual_seed(0)
model = orig.VGGish()
for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(); m.running_var.uniform_(0.5, 2.0); m.weight.data.normal_(); m.bias.data.normal_()
state = model.state_dict()
torch.save({{"epoch": 7, "model_state_dict": state, "best_acc": 0.91}} if {wrapped} else state, "old.pt")
''')
    return hashlib.sha256((folder / "old.pt").read_bytes()).hexdigest()


def _mapping_lines(stdout: str) -> dict[str, str]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("key mapping ("))
    pairs = [line.strip().split(" -> ") for line in lines[start + 1:] if " -> " in line and
             line.startswith("    ")]
    return dict(pairs)


def test_a_key_renaming_sequential_move_is_refused_without_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "vgg.py").write_text(VGG)
    result = _dropcheck(tmp_path, "fix", "vgg.py", "--diff")
    assert result.returncode == 1
    assert result.stdout == "(no change to your source files)\n"
    lines = [line for line in result.stderr.splitlines() if ": not in source: " in line]
    assert len(lines) == 2
    assert "features.3: moving it within its nn.Sequential would rename state_dict keys (features.4.* -> " \
        "features.3.*, features.5.* -> features.4.*, features.8.* -> features.7.*" in lines[0]
    assert "features.11: taking it out of its nn.Sequential would rename state_dict keys (features.12.* -> " \
        "features.11.*, features.13.* -> features.12.*)" in lines[1]
    assert all("--checkpoint old.pt --checkpoint-out new.pt would allow it" in line for line in lines)
    assert (tmp_path / "vgg.py").read_text() == VGG


def test_with_a_checkpoint_the_keys_are_renamed_and_the_converted_checkpoint_loads_strictly(tmp_path: Path) -> None:
    (tmp_path / "vgg.py").write_text(VGG)
    old_hash = _save_checkpoint(tmp_path, wrapped=True)

    result = _dropcheck(tmp_path, "fix", "vgg.py", "--in-place", "--checkpoint", "old.pt",
                        "--checkpoint-out", "new.pt")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _mapping_lines(result.stdout) == EXPECTED_MAP
    assert "ok    state_dict: the original's 26 keys load with strict=True through the key mapping (18 renamed)" \
        in result.stdout
    assert "ok    eval outputs: bit-identical to the original on 3 random inputs" in result.stdout
    assert result.stdout.splitlines()[-2:] == ["wrote new.pt", f"changed {(tmp_path / 'vgg.py').resolve()}"]
    patched = (tmp_path / "vgg.py").read_text()
    assert "            nn.ReLU(inplace=True),\n            nn.Dropout(0.3),  # between the convolutions\n        )" \
        in patched  # moved to the end, element-wise (Guideline 2), with the larger p
    assert patched.count("Dropout") == 1
    assert hashlib.sha256((tmp_path / "old.pt").read_bytes()).hexdigest() == old_hash  # OLD untouched

    equal, same_keys, rest = _python(tmp_path, COMPARE).split(" ", 2)
    assert equal == "True" and same_keys == "True"
    assert rest == "{'epoch': 7, 'best_acc': 0.91}"  # the rest of the checkpoint kept

    again = _dropcheck(tmp_path, "fix", "vgg.py", "--diff")
    assert again.returncode == 0 and again.stdout == "(no change to your source files)\n"


def test_a_bare_state_dict_converts_too_and_json_holds_the_mapping(tmp_path: Path) -> None:
    (tmp_path / "vgg.py").write_text(VGG)
    _save_checkpoint(tmp_path, wrapped=False)
    shown = _dropcheck(tmp_path, "fix", "vgg.py", "--format", "json", "--checkpoint", "old.pt",
                       "--checkpoint-out", "new.pt")
    assert shown.returncode == 0, shown.stderr
    source = json.loads(shown.stdout)["fix"]["source_patch"]
    assert source["key_map"] == EXPECTED_MAP
    assert source["checkpoint"] == {"input": "old.pt", "output": "new.pt", "written": False}
    assert not (tmp_path / "new.pt").exists() and (tmp_path / "vgg.py").read_text() == VGG  # shown, not written

    applied = _dropcheck(tmp_path, "fix", "vgg.py", "--in-place", "--format", "json", "--checkpoint", "old.pt",
                         "--checkpoint-out", "new.pt")
    assert applied.returncode == 0, applied.stderr
    document = json.loads(applied.stdout)
    assert document["fix"]["source_patch"]["checkpoint"]["written"] is True
    assert document["written"][0] == "new.pt"
    equal, same_keys, rest = _python(tmp_path, COMPARE).split(" ", 2)
    assert (equal, same_keys, rest) == ("True", "True", "None")


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "old.pt"], "--checkpoint needs its pair"),
    (["--checkpoint-out", "new.pt"], "--checkpoint-out needs its pair"),
    (["--checkpoint", "old.pt", "--checkpoint-out", "old.pt"], "is the checkpoint to convert; dropcheck never writes"),
    (["--checkpoint", "./sub/../old.pt", "--checkpoint-out", "old.pt"], "never writes over it"),
    (["--checkpoint", "missing.pt", "--checkpoint-out", "new.pt"], "--checkpoint missing.pt: no such file"),
    (["--checkpoint", "old.pt", "--checkpoint-out", "nowhere/new.pt"], "no directory nowhere"),
    (["--checkpoint", "old.pt", "--checkpoint-out", "new.pt", "-o", "out"], "-o, --dry-run and library targets keep"),
    (["--checkpoint", "other.pt", "--checkpoint-out", "new.pt"], "other.pt: its keys do not match the model's: "),
    (["--checkpoint", "notes.pt", "--checkpoint-out", "new.pt"], "cannot load notes.pt with torch.load"),
])
def test_bad_checkpoint_options_are_one_line_exit_2_and_write_nothing(tmp_path: Path, args: list[str],
                                                                       message: str) -> None:
    (tmp_path / "vgg.py").write_text(VGG)
    (tmp_path / "sub").mkdir()
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "other.pt")
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "old.pt")  # only its path matters before the keys
    result = _dropcheck(tmp_path, "fix", "vgg.py", "--in-place" if "-o" not in args else "--diff", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert (tmp_path / "vgg.py").read_text() == VGG and not (tmp_path / "new.pt").exists()


def test_an_existing_checkpoint_out_is_replaced_only_with_force(tmp_path: Path) -> None:
    (tmp_path / "vgg.py").write_text(VGG)
    _save_checkpoint(tmp_path, wrapped=False)
    (tmp_path / "new.pt").write_bytes(b"an older conversion")
    result = _dropcheck(tmp_path, "fix", "vgg.py", "--in-place", "--checkpoint", "old.pt", "--checkpoint-out",
                        "new.pt")
    assert result.returncode == 2 and "--checkpoint-out new.pt exists (hint: pass --force to replace it)" in result.stderr
    assert (tmp_path / "new.pt").read_bytes() == b"an older conversion" and (tmp_path / "vgg.py").read_text() == VGG
    forced = _dropcheck(tmp_path, "fix", "vgg.py", "--in-place", "--force", "--checkpoint", "old.pt",
                        "--checkpoint-out", "new.pt")
    assert forced.returncode == 0, forced.stderr
    assert _python(tmp_path, COMPARE) == "True True None"


def test_movers_into_one_place_write_the_largest_p(tmp_path: Path) -> None:
    (tmp_path / "head.py").write_text(HEAD)
    result = _dropcheck(tmp_path, "fix", "head.py", "--in-place")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok    p: the written p is the planned one (drop1 p=0.4)" in result.stdout
    patched = (tmp_path / "head.py").read_text()
    assert "        self.drop1 = nn.Dropout(0.4)\n" in patched  # 0.1 and 0.4 settle on the larger
    assert "        self.drop = nn.Dropout(drop_rate)\n" in patched  # the block keeps its own p: no note
    assert "note" not in result.stdout


def test_p_override_is_written_where_p_is_a_number_and_noted_where_it_is_an_argument(tmp_path: Path) -> None:
    (tmp_path / "head.py").write_text(HEAD)
    result = _dropcheck(tmp_path, "fix", "head.py", "--p", "0.25", "--in-place")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "  note  block.drop: p stays `drop_rate` as written in Block.__init__ (line 10); the fix wants p=0.25 " \
        "here: build it with drop_rate=0.25" in result.stdout.splitlines()
    assert "ok    p: the written p is the planned one (drop1 p=0.25)" in result.stdout
    patched = (tmp_path / "head.py").read_text()
    assert "        self.drop1 = nn.Dropout(0.25)\n" in patched
    assert "        self.drop = nn.Dropout(drop_rate)\n" in patched  # the user's knob stays


def test_a_declaration_shared_by_instances_that_want_different_p_is_not_edited() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = nn.Dropout(0.1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = Block(), Block(), Block()

    root = Net()
    wish = [PEdit(Block, name, SetDropoutP("Block", p, "drop"), f"{name}.drop", f"{name}.drop")
            for name, p in (("a", 0.3), ("b", 0.3), ("c", 0.5))]
    kept, notes = even_p_edits(root, wish)
    assert kept == [] and [n.site for n in notes] == ["a.drop", "b.drop", "c.drop"]
    assert notes[2].message == ("p stays as written: Block serves 3 instances that want different p (0.3 at a, "
                                "0.3 at b, 0.5 at c); the fix wants p=0.5 here")
    kept, notes = even_p_edits(root, [w for w in wish if w.instance != "c"])
    assert kept == [] and "as written at c" in notes[0].message  # c keeps 0.1, so the line cannot change
    agreed = [PEdit(Block, e.instance, SetDropoutP("Block", 0.3, "drop"), e.site, e.module) for e in wish]
    assert even_p_edits(root, agreed) == (agreed, [])


def test_the_key_map_renames_only_the_keys_of_elements_that_change_index() -> None:
    has_state = (True, True, False, False, True)  # conv, bn, relu, dropout, conv
    moved = ReorderSequential("Net", "body", ((3, 4, True),), has_state, True)
    keys = ["stem.weight", "blocks.0.body.0.weight", "blocks.0.body.1.running_mean", "blocks.0.body.4.weight",
            "blocks.1.body.4.weight", "blocks.0.body.40.weight"]
    assert key_map(keys, [("blocks.0.body", moved)]) == {"blocks.0.body.4.weight": "blocks.0.body.3.weight"}
    removed = ReorderSequential("Net", "body", ((0, None, False),), (False, True), True)
    assert key_map(["0.weight", "1.weight", "1.bias"], [("", removed)]) == {"1.weight": "0.weight",
                                                                            "1.bias": "0.bias"}


P_SOURCE = '''import torch.nn as nn
import torch.nn.functional as F


class B(nn.Module):
    def __init__(self, drop_rate=0.1, droprate=0.2):
        super().__init__()
        self.a = nn.Dropout(0.1)  # kept comment
        self.b = nn.Dropout(p=0.1, inplace=True)
        self.c = nn.Dropout()
        self.e = nn.Dropout(drop_rate)
        self.droprate = droprate
        self.s = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Dropout2d(0.2))

    def forward(self, x):
        x = F.dropout(x, 0.1, self.training)
        x = F.dropout(x)
        x = F.dropout(x, p=self.droprate, training=self.training)
        return x
'''


def test_p_literals_are_edited_in_place_and_expressions_are_kept_with_a_hint() -> None:
    from dropcheck.fixer.source_edits import CallSite, patch_source

    dropout = "torch.nn.functional.dropout"
    requests = [SetDropoutP("B", 0.3, "a"), SetDropoutP("B", 0.3, "b"), SetDropoutP("B", 0.3, "c"),
                SetDropoutP("B", 0.3, "s", 1), SetDropoutP("B", 0.3, call=CallSite("B", dropout, line=16)),
                SetDropoutP("B", 0.3, call=CallSite("B", dropout, line=17)),
                SetDropoutP("B", 0.3, "e"), SetDropoutP("B", 0.3, call=CallSite("B", dropout, line=18))]
    patch = patch_source(P_SOURCE, requests)
    changed = [line for line in patch.diff().splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert changed == [
        "-        self.a = nn.Dropout(0.1)  # kept comment", "-        self.b = nn.Dropout(p=0.1, inplace=True)",
        "-        self.c = nn.Dropout()", "+        self.a = nn.Dropout(0.3)  # kept comment",
        "+        self.b = nn.Dropout(p=0.3, inplace=True)", "+        self.c = nn.Dropout(p=0.3)",
        "-        self.s = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Dropout2d(0.2))",
        "+        self.s = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Dropout2d(0.3))",
        "-        x = F.dropout(x, 0.1, self.training)", "-        x = F.dropout(x)",
        "+        x = F.dropout(x, 0.3, self.training)", "+        x = F.dropout(x, p=0.3)",
    ]
    assert [r.reason for r in patch.refused] == [
        "p stays `drop_rate` as written in B.__init__ (line 11); the fix wants p=0.3 here: build it with "
        "drop_rate=0.3",
        "p stays `self.droprate` as written in the call at line 18; the fix wants p=0.3 here: build it with "
        "droprate=0.3",
    ]


def test_several_moves_on_one_sequential_literal_apply_together_keeping_comments() -> None:
    from dropcheck.fixer.source_edits import patch_source
    from source_models import SEQUENTIAL_NET

    has_state = (True, True, False, False, True, True, False, False, False)
    both = ReorderSequential("SmallNet", "features", ((3, 7, True), (6, None, False)), has_state)
    assert "would rename state_dict keys (features.4.* -> features.3.*, features.5.* -> features.4.*)" in \
        patch_source(SEQUENTIAL_NET, [both]).refused[0].reason
    allowed = ReorderSequential("SmallNet", "features", both.moves, has_state, allow_renames=True)
    patched = patch_source(SEQUENTIAL_NET, [allowed]).patched
    assert patched.split("self.features = nn.Sequential(\n")[1].split("        )\n")[0].splitlines() == [
        "            nn.Conv2d(3, 16, 3, padding=1),", "            nn.BatchNorm2d(16),",
        "            nn.ReLU(inplace=True),", "            nn.Conv2d(16, 32, 3, padding=1),",
        "            nn.BatchNorm2d(32),", "            nn.ReLU(inplace=True),",
        "            nn.Dropout2d(0.1),  # spatial dropout", "            nn.AdaptiveAvgPool2d(1),"]
