"""What `fix -o` writes loads and runs in a fresh process, for every kind of target (issue 12).

Each target is fixed once in this process and written both ways (`.pt` and a folder); then one
fresh interpreter per target, with only dropcheck importable (no user code on its path, another
working directory), loads both, runs them and compares their eval outputs with the fixed model's.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from rich.console import Console

from dropcheck.fixer.export import write_output
from dropcheck.fixer.pipeline import fix_target
from dropcheck.output.text.fix import render_fix
from dropcheck.records import FixResult

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300

BLOCKS = '''
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """A CIFAR BasicBlock with dropout between the convs, before bn2 (DC001)."""

    def __init__(self, c, p=0.2):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.drop = nn.Dropout(p)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(self.drop(out)))
        return F.relu(out + x)
'''

NET = '''
import torch
from torch import nn

from {blocks} import Block

INPUT_SHAPE = (2, 3, 16, 16)


class Net(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = nn.Sequential(Block(width), Block(width))
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = self.layer1(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
'''

WRAPPED = '''
import torch
from torch import nn

INPUT_SHAPE = (2, 3, 8, 8)


def scale(x):  # data-dependent: fx must not trace into it
    return x * 2 if x.shape[0] > 0 else x


torch.fx.wrap("scale")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.drop, self.bn = nn.Conv2d(3, 4, 3), nn.Dropout(0.2), nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Linear(4, 2))

    def forward(self, x):
        x = self.bn(self.drop(scale(self.conv(x))))
        return self.head(x.mean((2, 3)))
'''

FRESH = textwrap.dedent('''
    import importlib.util, sys, torch
    spec, root, user, shape = sys.argv[1], sys.argv[2], sys.argv[3], eval(sys.argv[4])
    assert user == "-" or importlib.util.find_spec(user) is None, "the user's code must not be importable here"
    x, y = torch.load(root + "/x.pt"), torch.load(root + "/y.pt")
    pt = torch.load(root + "/fixed.pt", weights_only=False).eval()
    with torch.no_grad():
        assert torch.equal(pt(x), y), ".pt output differs"
    sys.path.insert(0, root + "/folder")
    from module import FixedModel
    folder = FixedModel().eval()
    with torch.no_grad():
        assert torch.equal(folder(x), y), "folder output differs"
    path, _, index = shape.partition("[")
    for model in (pt, folder):
        child = model.get_submodule(path)[int(index.rstrip("]"))]
        assert isinstance(child, torch.nn.Module), type(child)
    fresh = []
    for seed in (0, 1, 0):
        torch.manual_seed(seed)
        fresh.append(FixedModel(weights=False).state_dict())
    differ = lambda a, b: any(not torch.equal(a[k], b[k]) for k in a)
    assert differ(fresh[0], fresh[1]) and not differ(fresh[0], fresh[2]), "seeds must pick the initialisation"
    assert differ(fresh[0], folder.state_dict()), "a fresh model must not be the saved one"
    folder.train()
    folder(torch.cat([x, x]))  # train mode runs too
    print("loaded", spec)
''')


def _write_user_files(tmp: Path) -> dict[str, tuple[str, dict, str | None]]:
    """A file target (whose model imports a sibling module) and a package target (relative import)."""
    files = tmp / "models"
    files.mkdir()
    (files / "cifar_blocks.py").write_text(BLOCKS)
    (files / "cifar_net.py").write_text(NET.format(blocks="cifar_blocks"))
    package = tmp / "site" / "dc_export_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "blocks.py").write_text(BLOCKS)
    (package / "net.py").write_text(NET.format(blocks=".blocks"))
    (files / "wrapped_net.py").write_text(WRAPPED)
    return {"file": (str(files / "cifar_net.py"), {}, "cifar_blocks"),
            "wrapped": (str(files / "wrapped_net.py"), {}, "-"),
            "module": ("dc_export_pkg.net:Net", {}, "dc_export_pkg")}


TARGETS = {  # name: (spec or file-made, model args, input shape, a Sequential child to index)
    "file": (None, {}, (2, 3, 16, 16), "layer1[0]"),
    "file-named": (None, {}, (2, 3, 16, 16), "layer1[1]"),
    "module": (None, {}, (2, 3, 16, 16), "layer1[0]"),
    "wrapped": (None, {}, (2, 3, 8, 8), "head[0]"),  # the traced code calls the user's fx.wrap'ed function
    "timm": ("timm:resnet18", {"drop_rate": 0.2}, (1, 3, 32, 32), "layer1[0]"),
    "torchvision": ("torchvision:mobilenet_v2", {"dropout": 0.2}, (1, 3, 32, 32), "features[1]"),
}


@pytest.mark.parametrize("name", list(TARGETS))
def test_pt_and_folder_load_and_run_in_a_fresh_process(name: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    if name in ("timm", "torchvision"):
        pytest.importorskip(name)
    spec, kwargs, shape, child = TARGETS[name]
    user = "-"
    if spec is None:
        made = _write_user_files(tmp_path)
        spec, kwargs, user = made[name if name in made else "file"]
        if name == "file-named":
            spec += ":Net"
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
        monkeypatch.chdir(tmp_path / "site")
    try:
        result = fix_target(spec, kwargs, shape)
        assert result.ok and (result.changes or name == "torchvision"), [str(c) for c in result.checks]
        write_output(result, tmp_path / "fixed.pt", force=False)
        write_output(result, tmp_path / "folder", force=False)
    finally:  # the next test imports its own copies
        for module in [m for m in sys.modules if m.startswith(("dc_export_pkg", "cifar_blocks"))]:
            del sys.modules[module]
    x = torch.randn(*shape)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(result.model.eval()(x), tmp_path / "y.pt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", FRESH, spec, str(tmp_path), user, repr(child)], cwd=elsewhere,
                         env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0 and "loaded" in run.stdout, run.stderr[-3000:]


@pytest.fixture(scope="module")
def preresnet() -> FixResult:
    return fix_target(str(ROOT / "examples" / "preresnet.py"), {"position": "P3", "head_position": "H5"})


def test_identical_train_and_eval_bodies_are_generated_once(preresnet: FixResult, tmp_path: Path) -> None:
    result = preresnet
    write_output(result, tmp_path / "folder", force=False)
    code = (tmp_path / "folder" / "module.py").read_text()
    assert code.count("    def _forward(self") == 1 and "_forward_eval" not in code and "_forward_train" not in code
    assert "self.stages[0][0].add_module('drop'" in code  # the tree reads as one would write it


def test_a_file_target_pt_written_by_the_cli_loads_in_a_fresh_process(tmp_path: Path) -> None:
    target = _write_user_files(tmp_path)["file"][0]
    fix = subprocess.run([sys.executable, "-m", "dropcheck", "fix", target, "-o", str(tmp_path / "fixed.pt")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert fix.returncode == 0, fix.stderr
    load = ("import torch; m = torch.load('fixed.pt', weights_only=False).eval(); "
            "print(type(m.layer1[0]).__name__, tuple(m(torch.randn(2, 3, 16, 16)).shape))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", load], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert run.returncode == 0 and run.stdout.split() == ["Block", "(2,", "10)"], run.stderr[-3000:]


def test_diff_lists_each_move_with_the_lines_it_touches_and_verbose_shows_all(preresnet: FixResult) -> None:
    moves = preresnet.moves_diff()
    headers = [line for line in moves.splitlines() if line.startswith("@@")]
    assert headers == [f"@@ {line} @@" for line in preresnet.change_lines()]  # one hunk per change
    hunk = moves.split("@@ ")[1]  # the first move: stages.0.0.drop, P3 -> P6 before conv2
    assert "-stages_0_0_drop = " in hunk and "+stages_0_0_drop_1 = " in hunk and "conv2(stages_0_0_drop_1)" in hunk
    assert "stages_1_0" not in hunk and "None" not in moves  # its own lines only; no `;  x = None` tails
    assert len(moves.splitlines()) < len(preresnet.diff().splitlines()) / 2
    short, full = io.StringIO(), io.StringIO()
    render_fix(preresnet, Console(file=short, width=200), diff=True)
    render_fix(preresnet, Console(file=full, width=200), diff=True, full_diff=True)
    assert "# eval mode" not in short.getvalue() and "# eval mode" in full.getvalue()
    assert "@@ move  head_drop  H5 -> H4" in short.getvalue()


def test_library_target_diff_lists_moves_and_verbose_adds_the_generated_code() -> None:
    pytest.importorskip("timm")
    base = [sys.executable, "-m", "dropcheck", "fix", "timm:resnet18", "-a", "drop_rate=0.2",
            "--input-shape", "1,3,32,32", "--dry-run", "--diff"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        short, full = pool.map(lambda argv: subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                                                           timeout=TIMEOUT), [base, [*base, "--verbose"]])
    assert short.returncode == 0 and full.returncode == 0, short.stderr[-2000:] + full.stderr[-2000:]
    assert "@@ convert  /dropout  -> nn.Dropout dropout in place  (p=0.2) @@" in short.stdout
    assert "-dropout = torch.nn.functional.dropout(global_pool_flatten" in short.stdout
    assert "# eval mode" not in short.stdout and "self.layer1" not in short.stdout
    assert "# eval mode" in full.stdout and "-    dropout = torch.nn.functional.dropout(" in full.stdout


def test_a_pickle_naming_the_0_1_0_rebuild_still_loads(preresnet: FixResult) -> None:
    """dropcheck 0.1.0 pickled `dropcheck.fixed._rebuild(source, state)`; such files keep loading."""
    import pickle

    from dropcheck.fixer.fixed import rebuild

    _, (_, source, state) = preresnet.model.__reduce_ex__(2)
    new = pickle.dumps(_Reduced(rebuild, (source, state)), protocol=4)
    name = b"\x8c\x15dropcheck.fixer.fixed\x94\x8c\x07rebuild\x94"
    assert new.count(name) == 1
    old = new.replace(name, b"\x8c\x0fdropcheck.fixed\x94\x8c\x08_rebuild\x94")  # as 0.1.0 named it
    model = pickle.loads(old).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), preresnet.model.eval()(x))


class _Reduced:
    def __init__(self, fn: object, args: tuple) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple:
        return self.fn, self.args
