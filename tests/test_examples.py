"""The example models in examples/ build, run, trace, and hold exactly the dropouts they claim.

The rule verdicts themselves are the engine's tests; these check the examples' contract:
one zero-argument model class per file, output (2, 10) in train and eval, fx-traceable,
dropout module ids as documented, dropout switched off by eval(), bad values rejected.
"""
from __future__ import annotations

import copy
import functools
import importlib.util
import inspect
import itertools
import pathlib
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.fx
from torch import nn

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
FILES = ("preresnet", "resnet_v1", "mobilenet_head", "densenet", "functional_bug", "transformer")


@functools.cache
def _load(name: str) -> ModuleType:
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"dropcheck_example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _own_classes(module: ModuleType) -> list[type]:
    return [v for v in vars(module).values()
            if inspect.isclass(v) and v.__module__ == module.__name__]


def _zero_arg(obj: Any) -> bool:
    params = inspect.signature(obj).parameters.values()
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in params)


def _model_class(name: str) -> type[nn.Module]:
    (cls,) = [c for c in _own_classes(_load(name)) if _zero_arg(c)]
    return cls


def _dropout_ids(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Dropout)]


def _without_dropout(model: nn.Module) -> nn.Module:
    # Same weights, every nn.Dropout swapped for Identity.
    stripped = copy.deepcopy(model)
    for name in _dropout_ids(stripped):
        parent, _, attr = name.rpartition(".")
        setattr(stripped.get_submodule(parent), attr, nn.Identity())
    return stripped


def _input(cls: type[nn.Module]) -> torch.Tensor:
    return torch.randn(*cls.input_shape, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------
# Cases: (file, kwargs, expected dropout module ids, train-mode output is random)


def _preresnet_ids(position: str, head: str, blocks: tuple[int, ...]) -> list[str]:
    ids = [f"stages.{s}.{b}.drop" for s, n in enumerate(blocks) for b in range(n)
           if position != "none"]
    return ids + (["head_drop"] if head != "none" else [])


def _preresnet_cases() -> list[tuple]:
    cases = []
    positions = ("none", "P0", "P1", "P2", "P3", "P4", "P5", "P6", "P7")
    heads = ("none", "H3", "H4", "H5", "H6")
    # every block position with no head dropout, every head position with one block position:
    # the two choices are independent in the code, and the full product costs minutes
    combos = [(b, p, "none") for b in ("basic", "bottleneck") for p in positions]
    combos += [(b, "P3", h) for b in ("basic", "bottleneck") for h in heads if h != "none"]
    for block, pos, head in combos:
        kwargs = {"block": block, "position": pos, "head_position": head}
        random = pos != "none" or head != "none"
        cases.append(("preresnet", kwargs, _preresnet_ids(pos, head, (1, 1, 1)), random))
    deeper = {"position": "P3", "blocks": (2, 1, 2), "widths": (16, 32, 32)}
    cases.append(("preresnet", deeper, _preresnet_ids("P3", "none", (2, 1, 2)), True))
    return cases


def _resnet_v1_cases() -> list[tuple]:
    cases = []
    for pos in ("none", "after_conv1", "after_relu1", "end", "after_add"):
        ids = [] if pos == "none" else [f"stages.{s}.0.drop" for s in range(3)]
        cases.append(("resnet_v1", {"position": pos}, ids, pos != "none"))
    deeper = {"position": "end", "blocks": (2, 2)}
    with_ids = ["stages.0.0.drop", "stages.0.1.drop", "stages.1.0.drop", "stages.1.1.drop"]
    cases.append(("resnet_v1", {**deeper, "widths": (16, 32)}, with_ids, True))
    return cases


def _mobilenet_cases() -> list[tuple]:
    cases = []
    for head, softmax in itertools.product(("none", "H1", "H2", "H3", "H4", "H5", "H6", "H7"),
                                           (False, True)):
        ids = [] if head == "none" else ["drop"]
        cases.append(("mobilenet_head", {"head_position": head, "softmax_output": softmax},
                      ids, head != "none"))
    return cases


def _other_cases() -> list[tuple]:
    dense_ids = [f"blocks.{b}.layers.{i}.drop" for b in range(2) for i in range(3)]
    vit_ids = [f"blocks.{i}.{n}" for i in range(2) for n in ("proj_drop", "drop1", "drop2")]
    return [
        ("densenet", {}, dense_ids, True),
        ("densenet", {"p": 0.0}, [], False),
        ("densenet", {"layers_per_block": (2, 1, 2)},
         ["blocks.0.layers.0.drop", "blocks.0.layers.1.drop", "blocks.1.layers.0.drop",
          "blocks.2.layers.0.drop", "blocks.2.layers.1.drop"], True),
        ("functional_bug", {}, ["dropout"], True),  # the unused module; F.dropout is not one
        ("transformer", {}, vit_ids + ["head_drop"], True),
        ("transformer", {"p": 0.0, "attn_p": 0.0}, vit_ids + ["head_drop"], False),
        ("transformer", {"p": 0.0}, vit_ids + ["head_drop"], True),  # attention dropout only
    ]


CASES = _preresnet_cases() + _resnet_v1_cases() + _mobilenet_cases() + _other_cases()


def _case_id(case: tuple) -> str:
    name, kwargs = case[0], case[1]
    return name + "-" + ",".join(f"{k}={v}" for k, v in kwargs.items())


# ---------------------------------------------------------------------------------------------
# Per-file contract


@pytest.mark.parametrize("name", FILES)
def test_exactly_one_zero_arg_model_class(name: str) -> None:
    module = _load(name)
    zero_arg = [c for c in _own_classes(module) if _zero_arg(c)]
    assert len(zero_arg) == 1, zero_arg
    cls = zero_arg[0]
    assert issubclass(cls, nn.Module)
    assert tuple(cls.input_shape) == (2, 3, 32, 32)
    assert isinstance(cls(), nn.Module)
    for helper in set(_own_classes(module)) - {cls}:
        with pytest.raises(TypeError):
            helper()


@pytest.mark.parametrize("name", FILES)
def test_no_public_zero_arg_functions(name: str) -> None:
    module = _load(name)
    public = [f for n, f in vars(module).items()
              if inspect.isfunction(f) and f.__module__ == module.__name__
              and not n.startswith("_")]
    assert public == []


@pytest.mark.parametrize("name", FILES)
def test_docstring_names_audit_command_and_rules(name: str) -> None:
    doc = _load(name).__doc__ or ""
    assert f"dropcheck audit examples/{name}.py" in doc
    expected_rules = {
        "preresnet": ("DC001", "DC002", "DC003", "DC005"),
        "resnet_v1": ("DC001",),
        "mobilenet_head": ("DC001", "DC002", "DC003"),
        "densenet": ("DC001",),
        "functional_bug": ("DC006", "DC007"),
        "transformer": ("DC001", "DC006"),
    }[name]
    for code in expected_rules:
        assert code in doc


# ---------------------------------------------------------------------------------------------
# Per-configuration behaviour


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_model_builds_runs_and_traces(case: tuple) -> None:
    name, kwargs, expected_ids, _ = case
    cls = _model_class(name)
    model = cls(**kwargs)
    x = _input(cls)
    assert _dropout_ids(model) == expected_ids
    model.train()
    assert model(x).shape == (2, 10)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 10)
    gm = torch.fx.symbolic_trace(model)
    assert isinstance(gm, torch.fx.GraphModule)
    if name != "functional_bug":
        with torch.no_grad():
            assert torch.equal(gm(x), out)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "functional_bug"], ids=_case_id)
def test_eval_switches_dropout_off(case: tuple) -> None:
    name, kwargs, _, _ = case
    cls = _model_class(name)
    model = cls(**kwargs).eval()
    x = _input(cls)
    with torch.no_grad():
        assert torch.equal(model(x), _without_dropout(model)(x))


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_train_mode_randomness_matches_dropout(case: tuple) -> None:
    name, kwargs, _, random = case
    cls = _model_class(name)
    model = cls(**kwargs).train()
    x = _input(cls)
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    b = model(x)
    assert torch.equal(a, b) is not random


def test_dropout_called_once_per_block_in_graph() -> None:
    # Only the chosen slot calls `drop`; the others are plain pass-throughs.
    gm = torch.fx.symbolic_trace(_model_class("preresnet")(position="P3", head_position="H4"))
    called = [n.target for n in gm.graph.nodes if n.op == "call_module" and "drop" in n.target]
    assert called == ["stages.0.0.drop", "stages.1.0.drop", "stages.2.0.drop", "head_drop"]


def test_no_batchnorm_in_transformer() -> None:
    model = _model_class("transformer")()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_functional_bug_is_random_in_eval_and_module_unused() -> None:
    cls = _model_class("functional_bug")
    model = cls().eval()
    x = _input(cls)
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))  # F.dropout without training= stays on
    gm = torch.fx.symbolic_trace(model)
    assert not any(n.op == "call_module" and n.target == "dropout" for n in gm.graph.nodes)
    assert any(n.op == "call_function" and n.target is torch.nn.functional.dropout
               for n in gm.graph.nodes)


@pytest.mark.parametrize("name, kwargs, valid", [
    ("preresnet", {"position": "P8"}, "P6"),
    ("preresnet", {"block": "wide"}, "bottleneck"),
    ("preresnet", {"head_position": "H1"}, "H4"),
    ("preresnet", {"p": 1.0}, "[0, 1)"),
    ("preresnet", {"blocks": (1, 1)}, "blocks"),
    ("resnet_v1", {"position": "P6"}, "after_add"),
    ("mobilenet_head", {"head_position": "H8"}, "H7"),
    ("densenet", {"p": -0.1}, "[0, 1)"),
    ("functional_bug", {"p": 1.5}, "[0, 1)"),
    ("transformer", {"attn_p": 1.0}, "[0, 1)"),
])
def test_invalid_values_raise(name: str, kwargs: dict, valid: str) -> None:
    with pytest.raises(ValueError) as info:
        _model_class(name)(**kwargs)
    assert valid in str(info.value)
