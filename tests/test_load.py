"""Target specs, candidates, constructor keywords, input shapes and load errors."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from torch import nn

from dropcheck.config import parse_input_shape, parse_model_args
from dropcheck.analysis.load import load_target
from dropcheck.records import DropcheckError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _file(tmp_path: Path, source: str, name: str = "model.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


def _load_error(spec: str, **kwargs: object) -> DropcheckError:
    with pytest.raises(DropcheckError) as caught:
        load_target(spec, dict(kwargs))
    return caught.value


def test_model_args_are_python_literals_or_strings() -> None:
    assert parse_model_args(["p=0.2", "blocks=(1, 2)", "position=P3", "flag=True"]) == {
        "p": 0.2, "blocks": (1, 2), "position": "P3", "flag": True}
    with pytest.raises(DropcheckError):
        parse_model_args(["novalue"])


def test_input_shape_parsing() -> None:
    assert parse_input_shape("1,3,224,224") == (1, 3, 224, 224)
    assert parse_input_shape("2x3x32x32") == (2, 3, 32, 32)
    for bad in ("", "a,b", "1,0,3", "1,x,3", "1,,3"):
        with pytest.raises(DropcheckError):
            parse_input_shape(bad)


def test_file_with_one_zero_argument_class_needs_no_name() -> None:
    target = load_target(str(EXAMPLES / "preresnet.py"), {"position": "P3"})
    assert type(target.model).__name__ == "PreResNet"
    assert target.input_shape == [2, 3, 32, 32]  # the class declares input_shape
    assert target.example_input.device.type == "meta"


def test_file_with_explicit_name_and_factory(tmp_path: Path) -> None:
    spec = _file(tmp_path, """\
        import torch.nn as nn

        class Block(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.fc = nn.Linear(width, width)

        def build(width=4):
            return Block(width)
        """)
    assert type(load_target(spec).model).__name__ == "Block"  # the factory is the one candidate
    assert type(load_target(f"{spec}:Block", {"width": 3}).model).__name__ == "Block"


def test_package_module_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text("import torch.nn as nn\nclass Net(nn.Linear):\n"
                                     "    def __init__(self):\n        super().__init__(4, 2)\n")
    monkeypatch.chdir(tmp_path)
    try:
        assert isinstance(load_target("mypkg.nets:Net").model, nn.Linear)
    finally:
        for name in [m for m in sys.modules if m.startswith("mypkg")]:
            del sys.modules[name]


def test_zoo_defaults_never_download_and_take_the_models_input_size() -> None:
    target = load_target("timm:resnet18", {"pretrained": True})  # pretrained is forced off
    assert target.input_shape == [1, 3, 224, 224]
    assert load_target("torchvision:resnet18", input_shape=(2, 3, 64, 64)).input_shape == [2, 3, 64, 64]


@pytest.mark.parametrize("spec, words", [
    ("torchvision:resnet_nope", ["torchvision has no model", "resnet_nope"]),
    ("timm:nope_net", ["timm has no model"]),
    ("does/not/exist.py", ["no such file"]),
    ("not_a_module_xyz:Net", ["no module named"]),
])
def test_unknown_targets(spec: str, words: list[str]) -> None:
    error = _load_error(spec)
    assert error.kind == "load" and all(w in error.message for w in words) and error.hint


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    error = _load_error(_file(tmp_path, "import torch\n\ndef broken(:\n    pass\n"))
    assert "model.py:3: syntax error" in error.message


def test_import_error_inside_the_file(tmp_path: Path) -> None:
    error = _load_error(_file(tmp_path, "import torch\nimport not_a_module_xyz\n"))
    assert "ModuleNotFoundError" in error.message and "model.py:2" in error.message
    assert "not_a_module_xyz" in error.hint


def test_binary_and_empty_files(tmp_path: Path) -> None:
    binary = tmp_path / "weights.py"
    binary.write_bytes(b"\x00\x01\x02PK")
    assert "binary" in _load_error(str(binary)).message
    late = tmp_path / "late.py"
    late.write_bytes(b"#" * 9000 + b"\n\0\n")  # a NUL past the first 8 KiB: still binary, not "line None"
    assert "binary" in _load_error(str(late)).message
    assert "no nn.Module class" in _load_error(_file(tmp_path, "")).message


def test_several_candidates_are_listed(tmp_path: Path) -> None:
    spec = _file(tmp_path, """\
        import torch.nn as nn

        class A(nn.Module):
            pass

        class B(nn.Module):
            pass
        """)
    error = _load_error(spec)
    assert "several models: A, B" in error.message and ":NAME" in error.hint


def test_constructor_needing_arguments(tmp_path: Path) -> None:
    spec = _file(tmp_path, """\
        import torch.nn as nn

        class Net(nn.Module):
            def __init__(self, width, depth):
                super().__init__()
        """)
    error = _load_error(spec)
    assert "needs width, depth" in error.message and "-a" in error.hint
    assert "needs depth" in _load_error(spec, width=3).message


def test_constructor_raising_names_the_users_line(tmp_path: Path) -> None:
    spec = _file(tmp_path, """\
        import torch.nn as nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                raise RuntimeError("boom")
        """)
    error = _load_error(spec)
    assert "model.py:6" in error.message and "RuntimeError: boom" in error.message


@pytest.mark.parametrize("spec, first", [("timm:resnet5", "resnet50"), ("timm:resnt18", "resnet18"),
                                         ("torchvision:resnt18", "resnet18"),
                                         ("timm:efficientnet_b", "efficientnet_b0")])
def test_a_zoo_name_that_is_not_there_suggests_the_nearest(spec: str, first: str) -> None:
    error = _load_error(spec)
    assert error.hint.startswith(f"did you mean {first},")
