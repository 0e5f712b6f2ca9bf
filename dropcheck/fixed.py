"""The fixed model: the original module tree, run by two rewritten fx graphs (train and eval).

fx freezes `self.training` into a graph, so a single graph cannot keep a model's train-mode
and eval-mode behaviour both (Inception's aux logits, timm's gated dropout). FixedModel keeps
the original's submodules, parameters and buffers under the same names (so checkpoints load
with strict=True) and dispatches `forward` on `self.training` to code generated from each graph.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import fx, nn


def detached(graph: fx.Graph) -> fx.Graph:
    """A copy of `graph` owned by no module (node names kept), small to pickle."""
    new = fx.Graph()
    out = new.graph_copy(graph, {})
    new.output(out)
    return new


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
        self.train_src, self._train_globals, self._forward_train = compile_graph(self.train_graph, "_forward_train")
        self.eval_src, self._eval_globals, self._forward_eval = compile_graph(self.eval_graph, "_forward_eval")

    def __reduce_ex__(self, protocol: Any) -> Any:
        # the class is made per model (its forward has the model's own signature): rebuild it on load
        state = dict(self.__dict__)
        for key in ("_forward_train", "_forward_eval", "_train_globals", "_eval_globals"):
            state.pop(key, None)
        return _rebuild, (forward_source(self.train_graph), state)


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


def _rebuild(source: str, state: dict[str, Any]) -> FixedModel:
    cls = _fixed_class(state.get("fixed_from", "Model"), source)
    model = cls.__new__(cls)
    model.__dict__.update(state)
    model._compile()
    return model


def _adopt(module: nn.Module, root: nn.Module) -> None:
    """Give `module` root's children, parameters and buffers under the same names."""
    for name, child in root.named_children():
        module.add_module(name, child)
    for name, param in root.named_parameters(recurse=False):
        module.register_parameter(name, param)
    for name, buf in root.named_buffers(recurse=False):
        module.register_buffer(name, buf, persistent=name not in root._non_persistent_buffers_set)
