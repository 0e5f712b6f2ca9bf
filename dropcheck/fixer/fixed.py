"""The fixed model: the original module tree, run by two rewritten fx graphs (train and eval).

fx freezes `self.training` into a graph, so a single graph cannot keep a model's train-mode
and eval-mode behaviour both (Inception's aux logits, timm's gated dropout). FixedModel keeps
the original's submodules, parameters and buffers under the same names (so checkpoints load
with strict=True) and dispatches `forward` on `self.training` to code generated from each graph.
"""
from __future__ import annotations

import types
from typing import Any, Callable

import torch
from torch import fx, nn

from ..records import DropcheckError
from .carry import CarriedSources, user_sources


def detached(graph: fx.Graph) -> fx.Graph:
    """A copy of `graph` owned by no module (node names kept), without type annotations."""
    new = fx.Graph()
    out = new.graph_copy(graph, {})
    new.output(out)
    for n in new.nodes:
        n.type = None  # annotations become odd globals (_torch_Tensor_) in generated code
    return new


def import_lines(globals_: dict[str, Any]) -> list[str]:
    """Import statements that give fx-generated code its globals, so the code can live in a file."""
    from torch.fx.graph import _custom_builtins

    lines = set()
    for name, obj in globals_.items():
        if name in _custom_builtins:
            lines.add(_custom_builtins[name].import_str)
        elif isinstance(obj, types.ModuleType):
            lines.add(f"import {obj.__name__}" if name == obj.__name__ else f"import {obj.__name__} as {name}")
        elif getattr(obj, "__module__", None) and "<" not in getattr(obj, "__qualname__", "<"):
            top, _, rest = obj.__qualname__.partition(".")
            if rest:
                lines.add(f"from {obj.__module__} import {top} as _{top}\n{name} = _{top}.{rest}")
            else:
                lines.add(f"from {obj.__module__} import {top}" if name == top else
                          f"from {obj.__module__} import {top} as {name}")
        else:
            raise DropcheckError("output", f"the fixed code uses {name} ({type(obj).__name__}), which cannot be "
                                 "imported by name", "use the fixed model in this process (dropcheck.fix)")
    return sorted(lines)


def graph_source(graph: fx.Graph, name: str) -> str:
    """The Python source fx generates for `graph`, as a method named `name` (for diffs)."""
    return detached(graph).python_code(root_module="self").src.replace("def forward(self", f"def {name}(self", 1)


def compile_graph(graph: fx.Graph, name: str) -> tuple[str, dict[str, Any], Callable[..., Any]]:
    """Python source of `graph` as a method named `name`, its globals, and the compiled function."""
    code = graph.python_code(root_module="self")
    src = code.src.replace("def forward(self", f"def {name}(self", 1)
    namespace = dict(code.globals)
    exec(compile(src, f"<dropcheck {name}>", "exec"), namespace)  # noqa: S102 - fx-generated code
    return src, code.globals, namespace[name]


class FixedModel(nn.Module):
    """A model rewritten by `dropcheck fix`. Build it with `make_fixed_model`; it pickles by source."""

    def __init__(self, root: nn.Module, train_graph: fx.Graph, eval_graph: fx.Graph,
                 constants: dict[str, torch.Tensor] | None = None, fixed_from: str = "") -> None:
        super().__init__()
        _adopt(self, root)
        self._constants = dict(constants or {})
        for name, value in self._constants.items():  # tracer-made constants: not part of the state_dict
            object.__setattr__(self, name, value)
        self.fixed_from = fixed_from or type(root).__name__
        self.train_graph, self.eval_graph = detached(train_graph), detached(eval_graph)
        self._compile()

    def _compile(self) -> None:
        self.train_src, train_globals, self._forward_train = compile_graph(self.train_graph, "_forward_train")
        self.eval_src, eval_globals, self._forward_eval = compile_graph(self.eval_graph, "_forward_eval")
        self.globals = {**train_globals, **eval_globals}
        self.forward_src = forward_source(self.train_graph)

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> FixedModel:
        # .to(device) / .cuda() / .half() reach parameters and buffers; tracer constants must follow
        super()._apply(fn, *args, **kwargs)
        for name in self._constants:
            value = fn(getattr(self, name))
            self._constants[name] = value
            object.__setattr__(self, name, value)
        return self

    def __reduce_ex__(self, protocol: Any) -> Any:
        # pickled by source, like fx's GraphModule: graph nodes can name unpicklable functions, and the
        # class is made per model (its forward has the model's own signature), so it is rebuilt on load
        state = {k: v for k, v in self.__dict__.items()
                 if k not in ("_forward_train", "_forward_eval", "globals", "train_graph", "eval_graph")}
        state["imports"] = "\n".join(import_lines(self.globals))
        # the user's own modules travel first, so their classes resolve as the children unpickle
        classes = {cls for m in self.modules() for cls in type(m).__mro__}
        carried = CarriedSources(user_sources([*classes, *self.globals.values()]))
        return rebuild_carried, (carried, self.forward_src, state)


def forward_source(graph: fx.Graph) -> str:
    """`forward` with the traced model's own parameters, dispatching on self.training.

    fx traces the class's forward and reads its parameters, so a fixed model can be audited again.
    """
    params, names = [], []
    for n in graph.nodes:
        if n.op != "placeholder":
            continue
        name = str(n.target)
        names.append(name)
        params.append(f"{name}={n.args[0]!r}" if n.args else name)
    call = ", ".join(names)
    return (f"def forward(self, {', '.join(params)}):\n"
            f"    if self.training:\n"
            f"        return self._forward_train(self, {call})\n"
            f"    return self._forward_eval(self, {call})\n")


def make_fixed_model(root: nn.Module, train_graph: fx.Graph, eval_graph: fx.Graph,
                     constants: dict[str, torch.Tensor] | None = None) -> FixedModel:
    cls = _fixed_class(type(root).__name__, forward_source(train_graph))
    return cls(root, train_graph, eval_graph, constants, fixed_from=type(root).__name__)


def _fixed_class(name: str, source: str) -> type[FixedModel]:
    namespace: dict[str, Any] = {"torch": torch}
    exec(compile(source, "<dropcheck forward>", "exec"), namespace)  # noqa: S102 - our own template
    return type(f"Fixed{name}", (FixedModel,), {"forward": namespace["forward"], "__module__": __name__})


def rebuild(source: str, state: dict[str, Any]) -> FixedModel:
    """The model a pickled FixedModel was (its `__reduce_ex__`): class, compiled bodies and state."""
    cls = _fixed_class(state.get("fixed_from", "Model"), source)
    model = cls.__new__(cls)
    model.__dict__.update(state)
    namespace: dict[str, Any] = {}
    exec(state["imports"], namespace)  # noqa: S102 - import lines written by import_lines
    for src, name in ((state["train_src"], "_forward_train"), (state["eval_src"], "_forward_eval")):
        exec(compile(src, f"<dropcheck {name}>", "exec"), namespace)  # noqa: S102 - fx-generated code
        setattr(model, name, namespace[name])
    model.globals = namespace
    return model


def rebuild_carried(carried: CarriedSources, source: str, state: dict[str, Any]) -> FixedModel:
    """`rebuild` for a pickle that carries the user's sources (installed when `carried` unpickled)."""
    return rebuild(source, state)


def _adopt(module: nn.Module, root: nn.Module) -> None:
    """Give `module` root's children, parameters and buffers under the same names."""
    for name, child in root.named_children():
        module.add_module(name, child)
    for name, param in root.named_parameters(recurse=False):
        module.register_parameter(name, param)
    for name, buf in root.named_buffers(recurse=False):
        module.register_buffer(name, buf, persistent=name not in root._non_persistent_buffers_set)
