"""Models people write that plain fx cannot trace: control flow on shapes, sizes read for factories,
parameters made from numpy arrays. Each model was labelled by reading its code first."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dropcheck.analysis.load import load_target
from dropcheck.analysis.pipeline import audit_loaded
from dropcheck.cli.program import app
from dropcheck.records import DropcheckError

# the shape-branching models of benchmarks/models/shape_flow.py, and one that branches on values
GATE = '''
class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        x = self.drop(self.conv(x))
        if x.sum() > 0:
            x = x * 2
        return self.bn(x)
'''
AUDIO = (Path(__file__).resolve().parents[1] / "benchmarks" / "models" / "shape_flow.py").read_text() + "\n\n" + GATE


# ENet's downsampling bottleneck: the main path is zero-padded to the extension's channels with a
# tensor sized from ext.size(); main does not depend on the extension's dropout, so `main + ext`
# is a residual merge and Dropout2d sits at the end of the branch (Guideline 1: fine).
ENET = '''
import torch
import torch.nn as nn


class DownsamplingBottleneck(nn.Module):
    def __init__(self, in_channels, out_channels, internal_ratio=4, dropout_prob=0.1, factory="zeros"):
        super().__init__()
        internal = in_channels // internal_ratio
        self.factory = factory
        self.main_max1 = nn.MaxPool2d(2, stride=2)
        self.ext_conv1 = nn.Sequential(
            nn.Conv2d(in_channels, internal, kernel_size=2, stride=2, bias=False),
            nn.BatchNorm2d(internal), nn.PReLU())
        self.ext_conv2 = nn.Sequential(
            nn.Conv2d(internal, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.PReLU())
        self.ext_regul = nn.Dropout2d(p=dropout_prob)
        self.out_activation = nn.PReLU()

    def forward(self, x):
        main = self.main_max1(x)
        ext = self.ext_regul(self.ext_conv2(self.ext_conv1(x)))
        n, ch_ext, h, w = ext.size()
        ch_main = main.size()[1]
        if self.factory == "zeros":
            padding = torch.zeros(n, ch_ext - ch_main, h, w)
            if main.is_cuda:
                padding = padding.cuda()
        else:  # traceable by plain fx: the sizes are traced values
            padding = ext.new_zeros((n, ch_ext - ch_main, h, w))
        main = torch.cat((main, padding), 1)
        return self.out_activation(main + ext)


class ENetStage(nn.Module):
    def __init__(self, factory="zeros"):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.down = DownsamplingBottleneck(16, 64, factory=factory)
        self.bn = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.bn(self.down(self.stem(x)))
        return self.fc(x.mean((2, 3)))
'''

STFT = '''
import numpy as np
import torch
import torch.nn as nn


class STFT(nn.Module):
    def __init__(self, n_fft=16):
        super().__init__()
        window = np.hanning(n_fft)
        basis = np.fft.fft(np.eye(n_fft))[: n_fft // 2 + 1]
        kernel = np.concatenate([basis.real, basis.imag]) * window
        self.kernel = nn.Parameter(torch.from_numpy(kernel[:, None, :]).float(), requires_grad=False)
        self.hop = n_fft // 4

    def forward(self, x):
        return torch.nn.functional.conv1d(x, self.kernel, stride=self.hop)


class SpeechNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stft = STFT()
        self.conv = nn.Conv1d(18, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm1d(32)
        self.drop = nn.Dropout(0.25)
        self.conv2 = nn.Conv1d(32, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm1d(32)
        self.legacy = nn.Parameter(torch.Tensor(32, 4))
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv(self.stft(x))))
        x = self.drop(x)
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(2))
'''


def _write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def _verdicts(report) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {s.id: set() for s in report.dropouts}
    for f in report.findings:
        found[f.dropout].add(f.rule)
    return found


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp("audio"), "audio.py", AUDIO)


def test_a_dim_check_is_resolved_with_the_example_and_said_where(audio: Path) -> None:
    report = audit_loaded(load_target(f"{audio}:AudioCNN", input_shape=(2, 1, 64)))
    assert report.capture.method == "specialised"
    # the dropout between the convolutions reaches bn2 (head, no residual merge): DC001
    assert _verdicts(report) == {"drop": {"DC001"}}
    note = next(n for n in report.notes if n.startswith("specialised on 2x1x64"))
    assert "plain fx stopped at " in note and "audio.py:20, 25" in note  # x.dim() and x.size(0)


def test_a_hidden_state_sized_from_the_batch_and_a_loop_over_time(audio: Path) -> None:
    report = audit_loaded(load_target(f"{audio}:CRNN", input_shape=(2, 8, 5)))
    assert report.capture.method == "specialised"
    assert _verdicts(report) == {"drop": set()}  # after the only BatchNorm: nothing downstream to shift
    cells = [n for n in report.dropouts]
    assert len(cells) == 1


def test_is_cuda_takes_the_branch_the_model_would_take_on_the_cpu(audio: Path) -> None:
    report = audit_loaded(load_target(f"{audio}:PointNet", input_shape=(2, 3, 50)))
    assert report.capture.method == "specialised"
    assert _verdicts(report) == {"dropout": {"DC001"}}  # fc1 -> dropout -> bn2
    assert list(report.findings[0].reaches) == ["bn2"]


def test_control_flow_on_tensor_values_stays_an_error_at_the_users_line(audio: Path) -> None:
    with pytest.raises(DropcheckError) as caught:
        audit_loaded(load_target(f"{audio}:Gate", input_shape=(2, 3, 8, 8)))
    error = caught.value
    assert error.kind == "trace"
    assert "audio.py:79" in error.message and "tensor's values" in error.message
    assert "torch.where" in error.hint


def test_the_cli_says_a_value_branch_in_one_line_with_exit_2(audio: Path) -> None:
    result = CliRunner().invoke(app, ["audit", f"{audio}:Gate", "--input-shape", "2,3,8,8"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output and "audio.py:79" in result.output


@pytest.mark.parametrize("factory", ["zeros", "new_zeros"])
def test_a_padding_sized_from_the_branch_does_not_undo_the_residual_merge(tmp_path: Path, factory: str) -> None:
    path = _write(tmp_path, "enet.py", ENET)
    report = audit_loaded(load_target(f"{path}:ENetStage", {"factory": factory}, input_shape=(2, 3, 16, 16)))
    assert report.capture.method == ("specialised" if factory == "zeros" else "symbolic_trace")
    (site,) = report.dropouts
    assert site.site.value == "branch.guideline" and site.merge  # the add ends its branch
    assert not report.findings


def test_parameters_made_from_numpy_do_not_clash_with_a_meta_build(tmp_path: Path) -> None:
    path = _write(tmp_path, "speech.py", STFT)
    target = load_target(f"{path}:SpeechNet", input_shape=(2, 1, 128))
    assert {p.device.type for p in target.model.parameters()} == {"cpu"}  # built whole on the CPU
    report = audit_loaded(target)
    assert _verdicts(report) == {"drop": {"DC001"}}


def test_fix_on_a_specialised_graph_patches_the_source_and_refuses_a_rebuilt_graph(audio: Path,
                                                                                 tmp_path: Path) -> None:
    copy = _write(tmp_path, "audio.py", AUDIO)
    runner = CliRunner()
    out = runner.invoke(app, ["fix", f"{copy}:AudioCNN", "--input-shape", "2,1,64", "-o", str(tmp_path / "a.pt")])
    assert out.exit_code == 2 and "specialised on 2x1x64" in out.output and "--diff" in out.output
    assert not (tmp_path / "a.pt").exists()
    diff = runner.invoke(app, ["fix", f"{copy}:AudioCNN", "--input-shape", "2,1,64", "--diff"])
    assert diff.exit_code == 0, diff.output
    assert "-        x = self.drop(x)" in diff.output
    added = [line for line in diff.output.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert len(added) == 1 and "self.drop(x)" in added[0]


def test_measure_recaptures_a_specialised_graph_at_its_batch_size(audio: Path) -> None:
    from dropcheck.measurement.pipeline import measure_target

    report = measure_target(f"{audio}:AudioCNN", input_shape=(2, 1, 64), batches=2, batch_size=8)
    assert report.status == "ok", report.error
    bn2 = next(m for m in report.measurements if m.module == "bn2")
    assert bn2.flagged and 0 < bn2.delta_mean < 1  # dropout on at train time: more variance than at test


# --- package layouts ------------------------------------------------------------------------------

BLOCKS = '''
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        return self.bn(self.conv(self.drop(x)))
'''

NET = '''
import torch.nn as nn

from {how} import Block


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = Block(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.block(self.stem(x)).mean((2, 3)))
'''


@pytest.mark.parametrize("package, how", [("vision_rel", ".blocks"), ("vision_abs", "vision_abs.blocks")])
def test_a_file_inside_a_package_imports_as_its_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       package: str, how: str) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    pkg = tmp_path / package
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    _write(pkg, "blocks.py", BLOCKS)
    _write(pkg, "net.py", NET.format(how=how))
    monkeypatch.chdir(pkg)  # not the project root: its absolute imports must still resolve
    target = load_target(str(pkg / "net.py"), input_shape=(2, 3, 8, 8))
    assert type(target.model).__module__ == f"{package}.net"  # pickles by a real name
    report = audit_loaded(target)
    assert _verdicts(report) == {"block.drop": {"DC001"}}


def test_an_import_that_fails_names_the_folder_to_run_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "repo" / "models"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    _write(pkg, "blocks.py", BLOCKS)
    scripts = tmp_path / "repo" / "scripts"
    scripts.mkdir()
    _write(scripts, "train_net.py", NET.format(how="models.blocks"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DropcheckError) as caught:
        load_target(str(scripts / "train_net.py"))
    # 'models' or 'models.blocks': another test in this process may have imported a package named models
    assert "No module named 'models" in caught.value.message
    assert "repo" in caught.value.hint and "scripts.train_net:Name" in caught.value.hint


# --- input shape inference ------------------------------------------------------------------------

SHAPES = '''
import torch.nn as nn
import torch.nn.functional as F


class CifarNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.linear = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        out = F.avg_pool2d(F.relu(self.bn1(self.conv1(x))), 4)
        return self.linear(out.view(out.size(0), -1))


class TabularMLP(nn.Module):
    def __init__(self, d=20):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.2),
                                 nn.Linear(64, 2))

    def forward(self, x):
        return self.net(x)


class MnistNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 5)
        self.conv2 = nn.Conv2d(10, 20, 5)
        self.fc1 = nn.Linear(320, 10)

    def forward(self, x):
        x = F.max_pool2d(self.conv2(F.max_pool2d(self.conv1(x), 2)), 2)
        return self.fc1(x.view(-1, 320))


class InceptionStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 149 * 149, 10)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, y):
        return self.fc(x) + y
'''


@pytest.mark.parametrize("name, shape", [("CifarNet", [1, 3, 32, 32]), ("TabularMLP", [1, 20]),
                                         ("MnistNet", [1, 1, 28, 28]), ("InceptionStyle", [1, 3, 299, 299])])
def test_the_input_shape_is_inferred_and_said(tmp_path: Path, name: str, shape: list[int]) -> None:
    path = _write(tmp_path, "shapes.py", SHAPES)
    target = load_target(f"{path}:{name}")
    assert target.input_shape == shape
    report = audit_loaded(target)
    assert any(n.startswith(f"input shape {'x'.join(map(str, shape))} inferred") for n in report.notes)


def test_when_no_usual_shape_fits_the_audit_says_so_in_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "shapes.py", SHAPES)
    target = load_target(f"{path}:TwoInputs")
    assert target.notes == ["input shape 1x3x224x224 assumed: no usual input size fits (fc takes 4; tried 1x4)"]
    result = CliRunner().invoke(app, ["audit", f"{path}:TwoInputs"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--input-shape" in result.output


# --- submodule targets ----------------------------------------------------------------------------

def test_a_submodule_target_gets_the_input_the_whole_model_gives_it(audio: Path) -> None:
    # Gate's forward branches on values, but its conv -> dropout -> bn can be named on its own... not
    # here: Gate is the root. AudioCNN's bn2 is called on conv2's output: 2x64x64 for a 2x1x64 input.
    target = load_target(f"{audio}:AudioCNN::bn2", input_shape=(2, 1, 64))
    assert type(target.model).__name__ == "BatchNorm1d" and target.input_shape == [2, 64, 64]
    assert target.notes[-1].startswith("submodule bn2 (BatchNorm1d) of AudioCNN")


def test_a_residual_block_audited_on_its_own_keeps_its_verdicts(tmp_path: Path) -> None:
    from dropcheck.analysis.load import target_location

    path = _write(tmp_path, "enet.py", ENET)
    whole = audit_loaded(load_target(f"{path}:ENetStage", input_shape=(2, 3, 16, 16)))
    part = audit_loaded(load_target(f"{path}:ENetStage::down", input_shape=(2, 3, 16, 16)))
    assert part.input_shape == [2, 16, 16, 16]
    assert [(s.id, s.site) for s in part.dropouts] == [("ext_regul", whole.dropouts[0].site)]
    assert target_location(f"{path}:ENetStage::down") == (tmp_path, "enet.py:ENetStage::down")


def test_a_submodule_that_does_not_exist_lists_the_children(audio: Path) -> None:
    result = CliRunner().invoke(app, ["audit", f"{audio}:AudioCNN::layer9", "--input-shape", "2,1,64"])
    assert result.exit_code == 2
    assert "has no submodule 'layer9'" in result.output and "conv1, bn1, drop" in result.output
