"""The fx tracer every capture uses: the dropout family and stochastic depth as leaves, the owner
of each node, and the user's source line for the calls a finding points at."""
from __future__ import annotations

import os
import sys
import types
from typing import Any, Callable, Iterable

import torch
from torch import fx, nn

from . import ops
from ..records import SourceLocation
from .imports import display_path, is_library_frame

_MODULE_PY = nn.modules.module.__file__
_NN_MODULES_DIR = _MODULE_PY.rsplit("/", 1)[0]


class DropcheckTracer(fx.Tracer):
    """A plain fx tracer whose leaves are the dropout family, stochastic depth and `extra_leaves`."""

    def __init__(self, extra_leaves: tuple[type, ...] = (),
                 autowrap_functions: Iterable[Callable[..., Any]] = ()) -> None:
        self.autowrap_fns = list(autowrap_functions)
        super().__init__(autowrap_functions=tuple(self.autowrap_fns))
        self.extra_leaves = extra_leaves
        self.sources: dict[str, SourceLocation | None] = {}
        self.owners: dict[str, str] = {}

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        if isinstance(root, nn.Module):  # name lookups by identity: fx scans every parameter per access
            self._param_names = {id(p): n for n, p in root.named_parameters()}
            self._buffer_names = {id(b): n for n, b in root.named_buffers()}
        return super().trace(root, concrete_args)

    def create_arg(self, a: Any) -> Any:
        if isinstance(a, torch.Tensor):  # same get_attr fx would emit, found without a scan
            names = getattr(self, "_param_names" if isinstance(a, nn.Parameter) else "_buffer_names", {})
            if id(a) in names:
                return self.create_node("get_attr", names[id(a)], (), {})
        return super().create_arg(a)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if isinstance(attr_val, nn.Parameter):
            name = getattr(self, "_param_names", {}).get(id(attr_val))
        elif self.proxy_buffer_attributes and isinstance(attr_val, torch.Tensor):
            name = getattr(self, "_buffer_names", {}).get(id(attr_val))
        else:
            return attr_val
        if name is None:
            return super().getattr(attr, attr_val, parameter_proxy_cache)
        if name not in parameter_proxy_cache:
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
        return parameter_proxy_cache[name]

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if ops.is_dropout_module(m) or ops.is_stochastic_depth_module(m):
            return True
        if self.extra_leaves and isinstance(m, self.extra_leaves):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def create_node(self, kind: str, target: Any, args: Any, kwargs: Any, name: str | None = None,
                    type_expr: Any = None) -> fx.Node:
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        self.owners[node.name] = self.scope.module_path
        if _wants_source(kind, target, self.root if hasattr(self, "root") else None):
            self.sources[node.name] = _call_site(sys._getframe(1))
        return node


def user_stochastic_functions(root: Any) -> list[Callable[..., Any]]:
    """The user's stochastic-depth functions (EfficientNet-PyTorch's `drop_connect`, a `drop_path`
    copied into a model file), found by name in the modules that `root`'s classes come from. Traced
    as calls, they are reported as stochastic depth; inlined, they would be anonymous rand and floor."""
    if not isinstance(root, nn.Module):
        return []
    found: dict[int, Callable[..., Any]] = {}
    for module_name in {type(m).__module__ for m in root.modules()}:
        file = getattr(sys.modules.get(module_name), "__file__", None) or "<none>"
        if is_library_frame(file) or any(f"{os.sep}{d}{os.sep}" in file for d in ("site-packages", "dist-packages")):
            continue  # timm's and torchvision's own are known by identity (ops.zoo_functions)
        module = sys.modules[module_name]
        for value in list(vars(module).values()):
            if ops.is_user_stochastic_function(value) and not is_library_frame(value.__code__.co_filename):
                found[id(value)] = value
    return list(found.values())


def _wants_source(kind: str, target: Any, root: nn.Module | None) -> bool:
    if kind == "call_function":
        return (ops.is_dropout_function(target) or target in ops.ATTENTION_FUNCTIONS
                or ops.is_stochastic_depth_function(target))
    if kind == "call_module" and root is not None:
        try:
            m = root.get_submodule(target)
        except AttributeError:
            return False
        return ops.is_dropout_module(m) or ops.is_stochastic_depth_module(m) or ops.is_attention_module(m)
    return False


def _call_site(frame: types.FrameType | None) -> SourceLocation | None:
    """The line in a user's `forward` that made the call (through user helpers, if any).

    None when a torch container (nn.Sequential) made the call: the declaration line says more.
    """
    first: SourceLocation | None = None
    while frame is not None:
        name = frame.f_code.co_filename
        if not is_library_frame(name):
            here = SourceLocation(display_path(name), frame.f_lineno)
            if frame.f_code.co_name == "forward":
                return here
            first = first or here
        elif first is not None:
            return first  # left the user's code without meeting a forward
        elif name.startswith(_NN_MODULES_DIR) and name != _MODULE_PY:
            return None
        frame = frame.f_back
    return first
