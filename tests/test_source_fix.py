"""`dropcheck fix` on the user's own code: a patch to their files, checked in a fresh Python first.

Models written as people write them, in temporary folders; each is fixed with --diff (a few lines,
nothing written), then --in-place (the checks run in a fresh process on the patched copy, then the
file is written), then fixed again (nothing left to change).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from source_models import ODD, PREACT_BLOCK, RESNET18, SEQUENTIAL_NET, WIDE_BLOCK, WIDE_BLOCK_PRE_BN  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600
CHECKS = ("fresh import", "state_dict", "eval outputs", "train mode", "re-audit", "idempotent")

BLOCK = '''import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, planes, drop_rate=0.1):
        super().__init__()
        self.conv1 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.drop = nn.Dropout(drop_rate)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.drop(out)
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)
'''

PACKAGE_MODEL = '''import torch.nn as nn

from .blocks import BasicBlock


class Net(nn.Module):
    def __init__(self, width=8, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.blocks = nn.Sequential(BasicBlock(width), BasicBlock(width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


INPUT_SHAPE = (2, 3, 16, 16)
'''

# dropout on the trunk, before the block's first BatchNorm: it moves into the block (another class)
TRUNK = BLOCK.replace("drop_rate=0.1", "drop_rate=0.0").replace("        out = self.drop(out)\n", "") + '''

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.drop = nn.Dropout(0.2)
        self.block = BasicBlock(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        out = self.drop(self.stem(x))
        out = self.block(out)
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


INPUT_SHAPE = (2, 3, 16, 16)
'''

UNEVEN = BLOCK + '''

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.b1 = BasicBlock(8, drop_rate=0.0)
        self.b2 = BasicBlock(8, drop_rate=0.1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        out = self.b2(self.b1(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


INPUT_SHAPE = (2, 3, 16, 16)
'''

SEQUENTIAL_BLOCKS = '''import torch.nn as nn


def conv_bn(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SeqNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 16), conv_bn(16, 32))
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.3),  # on the pooled features
            nn.Linear(32, num_classes),
        )

    def forward(self, x):
        return self.head(self.features(x))


INPUT_SHAPE = (2, 3, 16, 16)
'''

WIDE_NET = '''

class WideResNet(nn.Module):
    def __init__(self, width=8, drop_rate=0.3, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.block1 = WideBasic(width, width, 1, drop_rate)
        self.block2 = WideBasic(width, 2 * width, 2, drop_rate)
        self.bn = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        out = self.block2(self.block1(self.conv1(x)))
        out = F.relu(self.bn(out))
        out = F.avg_pool2d(out, 8)
        out = out.view(-1, self.fc.in_features)
        return self.fc(out)


INPUT_SHAPE = (2, 3, 16, 16)
'''

PREACT_NET = '''

class PreActNet(nn.Module):
    def __init__(self, width=8, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.layer = nn.Sequential(PreActBlock(width, width), PreActBlock(width, 2 * width, stride=2))
        self.bn = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.layer(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


INPUT_SHAPE = (2, 3, 16, 16)
'''

# a spatial dropout after the global pool: moved before it, it becomes element-wise (Guideline 2)
CHANNELWISE_HEAD = '''import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.drop = nn.Dropout2d(0.2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        out = F.relu(self.bn(self.conv(x)))
        out = F.adaptive_avg_pool2d(out, 1)
        out = self.drop(out)
        return self.fc(out.flatten(1))


INPUT_SHAPE = (2, 3, 16, 16)
'''

# name -> (files, target, the file the patch changes, changed lines of --diff)
CASES = {
    "cifar-resnet18": ({"resnet18.py": RESNET18 + "\nINPUT_SHAPE = (2, 3, 32, 32)\n"}, "resnet18.py:ResNet18",
                       "resnet18.py", 4),
    "wideresnet-functional": ({"wrn.py": WIDE_BLOCK_PRE_BN + WIDE_NET}, "wrn.py", "wrn.py", 2),
    "preact-nested": ({"preact.py": PREACT_BLOCK + PREACT_NET}, "preact.py", "preact.py", 1),
    "always-on-head": ({"odd.py": ODD + "\nINPUT_SHAPE = (2, 3, 16, 16)\n"}, "odd.py", "odd.py", 2),
    "sequential-blocks": ({"seqnet.py": SEQUENTIAL_BLOCKS}, "seqnet.py", "seqnet.py", 2),
    "trunk-into-another-class": ({"trunk.py": TRUNK}, "trunk.py", "trunk.py", 5),  # the old declaration goes
    "channelwise-head": ({"head.py": CHANNELWISE_HEAD}, "head.py", "head.py", 4),
    "package-sibling": ({"pkg/__init__.py": "", "pkg/blocks.py": BLOCK, "pkg/model.py": PACKAGE_MODEL},
                        "pkg.model:Net", "pkg/blocks.py", 2),
}


def _write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def _dropcheck(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "dropcheck", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


def _changed_lines(diff: str) -> list[str]:
    return [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]


@pytest.mark.parametrize("case", sorted(CASES))
def test_fix_patches_the_users_file_by_a_few_lines_checked_in_a_fresh_process(case: str, tmp_path: Path) -> None:
    files, target, changed_file, size = CASES[case]
    _write(tmp_path, files)
    original = (tmp_path / changed_file).read_text()

    shown = _dropcheck(tmp_path, "fix", target, "--diff")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"--- a/{changed_file}\n+++ b/{changed_file}\n")
    assert len(_changed_lines(shown.stdout)) == size, shown.stdout
    assert (tmp_path / changed_file).read_text() == original  # --diff writes nothing

    applied = _dropcheck(tmp_path, "fix", target, "--in-place")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    lines = applied.stdout.splitlines()
    for check in CHECKS:  # run on the patched copy, in a fresh Python, before the file was written
        assert any(line.strip().startswith(f"ok    {check}: ") for line in lines), (check, applied.stdout)
    assert lines[-1] == f"changed {(tmp_path / changed_file).resolve()}"
    patched = (tmp_path / changed_file).read_text()
    assert patched != original and len(patched.splitlines()) == len(original.splitlines()) + \
        sum(1 if line[0] == "+" else -1 for line in _changed_lines(shown.stdout))

    again = _dropcheck(tmp_path, "fix", target, "--diff")
    assert again.returncode == 0 and again.stdout == "(no change to your source files)\n", again.stdout


def test_the_patched_resnet_moves_the_block_dropout_after_bn2_and_the_head_dropout_before_the_pool(
        tmp_path: Path) -> None:
    _write(tmp_path, CASES["cifar-resnet18"][0])
    shown = _dropcheck(tmp_path, "fix", "resnet18.py:ResNet18", "--diff")
    assert _changed_lines(shown.stdout) == [  # the moved line keeps its comment, so difflib moves bn2 up
        "+        out = self.bn2(self.conv2(out))",
        "-        out = self.bn2(self.conv2(out))",
        "+        out = self.dropout(out)",
        "-        out = self.dropout(out)",
    ]
    assert "+        out = self.bn2(self.conv2(out))\n         out = self.drop(out)  # regularise between the " \
        "convolutions\n-        out = self.bn2(self.conv2(out))\n" in shown.stdout
    assert "+        out = self.dropout(out)\n         out = F.avg_pool2d(out, 4)\n" in shown.stdout


def test_a_move_into_another_class_declares_the_dropout_there(tmp_path: Path) -> None:
    _write(tmp_path, {"trunk.py": TRUNK})
    shown = _dropcheck(tmp_path, "fix", "trunk.py", "--diff")
    assert _changed_lines(shown.stdout) == [
        "+        self.drop_guideline = nn.Dropout(p=0.2)",
        "+        out = self.drop_guideline(out)",
        "-        self.drop = nn.Dropout(0.2)",  # nothing calls it any more: its declaration goes too
        "-        out = self.drop(self.stem(x))",
        "+        out = self.stem(x)",
    ]


def test_a_channelwise_dropout_moved_before_the_pool_becomes_elementwise(tmp_path: Path) -> None:
    _write(tmp_path, {"head.py": CHANNELWISE_HEAD})
    shown = _dropcheck(tmp_path, "fix", "head.py", "--diff")
    assert _changed_lines(shown.stdout) == [
        "-        self.drop = nn.Dropout2d(0.2)",
        "+        self.drop = nn.Dropout(0.2)",
        "+        out = self.drop(out)",
        "-        out = self.drop(out)",
    ]


def test_a_model_already_following_the_guidelines_needs_no_patch(tmp_path: Path) -> None:
    _write(tmp_path, {"wrn.py": WIDE_BLOCK + WIDE_NET})
    result = _dropcheck(tmp_path, "fix", "wrn.py")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "nothing to change in your source files"


def test_sites_that_cannot_be_written_in_source_are_reported_one_by_one(tmp_path: Path) -> None:
    _write(tmp_path, {"seqnet.py": SEQUENTIAL_NET + "\nINPUT_SHAPE = (2, 3, 16, 16)\n"})
    result = _dropcheck(tmp_path, "fix", "seqnet.py", "--in-place")
    assert result.returncode == 1  # findings remain
    refused = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("not in source")]
    assert len(refused) == 2
    assert refused[0].startswith("not in source  features.3: moving it within its nn.Sequential would rename "
                                 "state_dict keys (features.4.* -> features.3.*, features.5.* -> features.4.*)")
    assert refused[1].startswith("not in source  classifier.3: taking it out of its nn.Sequential would rename "
                                 "state_dict keys (classifier.4.* -> classifier.3.*)")
    assert all(line.endswith("(--checkpoint old.pt --checkpoint-out new.pt would allow it: the keys are renamed and "
                             "your checkpoint converted; or write the fixed model with -o OUT)") for line in refused)
    assert (tmp_path / "seqnet.py").read_text() == SEQUENTIAL_NET + "\nINPUT_SHAPE = (2, 3, 16, 16)\n"


def test_a_class_whose_instances_need_different_edits_is_left_alone_and_said_so(tmp_path: Path) -> None:
    _write(tmp_path, {"uneven.py": UNEVEN})
    result = _dropcheck(tmp_path, "fix", "uneven.py", "--diff")
    assert result.returncode == 1
    assert "not in source: b2.drop: BasicBlock.forward serves 2 instances that need different edits (b1 need none)" \
        in result.stderr
    assert result.stdout == "(no change to your source files)\n"


def test_in_place_refuses_a_file_changed_since_it_was_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dropcheck.fixer.pipeline import fix_source
    from dropcheck.fixer.source_fix import write_source_patches
    from dropcheck.records import DropcheckError

    _write(tmp_path, {"preact.py": PREACT_BLOCK + PREACT_NET})
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = fix_source("preact.py")
    assert result.source is not None and len(result.source.patches) == 1
    edited = (tmp_path / "preact.py").read_text() + "# the user kept typing\n"
    (tmp_path / "preact.py").write_text(edited)
    with pytest.raises(DropcheckError, match="changed since dropcheck read it; nothing was written"):
        write_source_patches(list(result.source.patches))
    assert (tmp_path / "preact.py").read_text() == edited


def test_in_place_cannot_go_with_an_output_or_a_library_target(tmp_path: Path) -> None:
    for args in (["fix", "model.py", "--in-place", "-o", "out"], ["fix", "timm:resnet18", "--in-place"]):
        result = _dropcheck(tmp_path, *args)
        assert result.returncode == 2 and result.stdout == ""
        assert "--in-place edits your own source files" in result.stderr


def test_a_failed_check_writes_nothing_and_names_the_check(tmp_path: Path) -> None:
    # the model reads a file beside it when imported; the checked copy holds only the Python files
    source = (PREACT_BLOCK + PREACT_NET).replace("def __init__(self, width=8,", "def __init__(self, width=WIDTH,")
    source = source.replace("\n\nclass PreActNet", '\nfrom pathlib import Path\n'
                            'WIDTH = int(Path(__file__).with_name("width.txt").read_text())\n\n\nclass PreActNet')
    _write(tmp_path, {"preact.py": source, "width.txt": "8\n"})
    result = _dropcheck(tmp_path, "fix", "preact.py", "--in-place")
    assert result.returncode == 2
    last = result.stderr.splitlines()[-1]
    assert last.startswith("nothing written: check failed: fresh import: the patched copy did not load: ")
    assert "FileNotFoundError" in result.stderr and "width.txt" in result.stderr
    assert (tmp_path / "preact.py").read_text() == source


def test_json_adds_the_source_patch_and_keeps_the_fix_document(tmp_path: Path) -> None:
    _write(tmp_path, {"seqnet.py": SEQUENTIAL_NET + "\nINPUT_SHAPE = (2, 3, 16, 16)\n"})
    result = _dropcheck(tmp_path, "fix", "seqnet.py", "--format", "json")
    document = json.loads(result.stdout)
    fix = document["fix"]
    assert {"target", "ok", "input_shape", "changes", "verification", "unfixable"} <= fix.keys()
    assert fix["source_patch"]["files"] == [] and fix["source_patch"]["diff"] == ""
    assert [item["site"] for item in fix["source_patch"]["not_in_source"]] == ["features.3", "classifier.3"]
    assert document["written"] == [] and result.returncode == 1
