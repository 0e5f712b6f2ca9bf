"""Stochastic depth written by the user: EfficientNet-PyTorch's `drop_connect`, a plain function in
the model file, called in each MBConv block before its residual add.

Labelled by reading the code: two stochastic-depth sites (blocks.0 and blocks.2, the blocks with a
skip), p=0.2, each just before its block's add; the head's dropout after the pool is H5 (DC002).
Before, tracing inlined the function into rand/floor/div and the report did not list it.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

EFFNET = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


def drop_connect(inputs, p, training):
    """Drop whole samples of a residual branch (stochastic depth)."""
    if not training:
        return inputs
    batch_size = inputs.shape[0]
    keep_prob = 1 - p
    random_tensor = keep_prob
    random_tensor += torch.rand([batch_size, 1, 1, 1], dtype=inputs.dtype, device=inputs.device)
    binary_tensor = torch.floor(random_tensor)
    return inputs / keep_prob * binary_tensor


class MBConv(nn.Module):
    def __init__(self, c_in, c_out, expand=4, stride=1, drop_connect_rate=0.2):
        super().__init__()
        mid = c_in * expand
        self.expand = nn.Sequential(nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
                                nn.BatchNorm2d(mid), nn.SiLU())
        self.project = nn.Sequential(nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.skip = stride == 1 and c_in == c_out
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x):
        out = self.project(self.dw(self.expand(x)))
        if self.skip:
            out = drop_connect(out, p=self.drop_connect_rate, training=self.training)
            out = out + x
        return out


class EffNetLite(nn.Module):
    input_shape = (2, 3, 32, 32)

    def __init__(self, num_classes=10, dropout=0.2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.SiLU())
        self.blocks = nn.Sequential(MBConv(16, 16), MBConv(16, 24, stride=2), MBConv(24, 24))
        self.head = nn.Sequential(nn.Conv2d(24, 64, 1, bias=False), nn.BatchNorm2d(64), nn.SiLU())
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(self.dropout(x))
'''

CALL_LINE = 1 + EFFNET.lstrip("\n").splitlines().index(
    "            out = drop_connect(out, p=self.drop_connect_rate, training=self.training)")


def _dropcheck(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dropcheck", *args], cwd=folder, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("effnet")
    (folder / "effnet_lite.py").write_text(EFFNET.lstrip("\n"), encoding="utf-8")
    return folder


def test_a_users_drop_connect_is_reported_as_stochastic_depth_at_its_merge(project: Path) -> None:
    run = _dropcheck(project, "audit", "effnet_lite.py", "--format", "json")
    assert run.returncode == 0, run.stderr  # DC002 is a warning
    result = json.loads(run.stdout)["results"][0]
    assert [(s["module"], s["op"], s["p"], s["merge"].startswith(s["module"] + "/add"), s["source"]["line"])
            for s in result["stochastic_depth"]] == [("blocks.0", "drop_connect", 0.2, True, CALL_LINE),
                                                     ("blocks.2", "drop_connect", 0.2, True, CALL_LINE)]
    assert [(s["id"], s["paper_position"]) for s in result["dropouts"]] == [("dropout", "H5")]
    assert [f["rule"] for f in result["findings"]] == ["DC002"]


def test_the_fixed_model_keeps_drop_connect_and_loads_in_a_fresh_python(project: Path) -> None:
    out = project / "fixed"
    run = _dropcheck(project, "fix", "effnet_lite.py", "-o", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    check = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(out)!r})
        from module import FixedModel
        model = FixedModel().train()
        torch.manual_seed(0)
        x = torch.randn(64, 3, 32, 32)
        # drop_connect zeroes whole samples of a branch: in train mode two runs differ, in eval they agree
        differs = not torch.equal(model(x), model(x))
        model.eval()
        print(differs, torch.equal(model(x), model(x)))
    """)
    fresh = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.split() == ["True", "True"]
    changes = json.loads((out / "changes.json").read_text(encoding="utf-8"))
    assert [(c["action"], c["from_position"], c["to_position"]) for c in changes["changes"]] == [("move", "H5", "H4")]
