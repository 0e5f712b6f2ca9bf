"""The analysed data-flow graph: fx nodes (with inlined leaves spliced in) as FlowNodes.

Edges follow values, not Python variables: an in-place op (`out.add_(x)`, `x += y`,
`nn.ReLU(inplace=True)`) makes every later reader of the mutated tensor read the op's result.
Reading a tensor's size is not reading its values: `x.size(0)`, `.shape`, arithmetic on them and
factories that take them (`torch.zeros(n, c, h, w)`) carry no data edge, so a zero padding sized
from a branch's output does not make the other operand of a residual add depend on that branch.
"""
from __future__ import annotations

import builtins
import math
import operator
from typing import Any

from torch import fx

from ..records import FlowNode
from .shapes import Inlined

_INPLACE_FUNCTIONS = {operator.iadd, operator.imul, operator.isub, operator.itruediv}
# what reads a tensor's metadata only (call_method targets; getattr names)
_SIZE_METHODS = {"size", "dim", "ndimension", "numel", "nelement", "get_device", "element_size", "is_contiguous"}
_SIZE_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda", "layout", "requires_grad"}
# factories that read only their argument's size, dtype and device
_LIKE_FACTORIES = {"zeros_like", "ones_like", "empty_like", "full_like", "new_zeros", "new_ones", "new_empty",
                   "new_full", "new_tensor"}
# Python-level arithmetic a traced size can go through and stay a size
_SCALAR_FUNCTIONS = frozenset(
    [f for f in vars(operator).values() if callable(f)] + [builtins.len, builtins.max, builtins.min, builtins.int,
                                                          builtins.abs, builtins.round, *(
        f for f in vars(math).values() if callable(f))])


def build_flow_graph(gm: fx.GraphModule, tracer: Any, inlined: dict[str, Inlined],
                     shapes: dict[str, Any]) -> tuple[dict[str, FlowNode], list[str]]:
    """FlowNodes in topological order, and the nodes that feed the model's output."""
    nodes: dict[str, FlowNode] = {}
    outputs = _add_graph(gm, "", "", tracer, inlined, shapes, nodes, placeholder_inputs=[])
    _follow_inplace_updates(nodes, outputs)
    _ignore_size_reads(nodes)
    for fn in nodes.values():
        for i in fn.inputs:
            nodes[i].users.append(fn.name)
    return nodes, outputs


def _add_graph(gm: fx.GraphModule, prefix: str, owner_prefix: str, tracer: Any, inlined: dict[str, Inlined],
               shapes: dict[str, Any], nodes: dict[str, FlowNode], placeholder_inputs: list[list[str]]) -> list[str]:
    """Add one (sub)graph's nodes; returns the names feeding its output."""
    rename: dict[str, str] = {}
    placeholders = 0
    result: list[str] = []

    def refs(value: Any) -> list[str]:
        found: list[str] = []
        fx.node.map_arg(value, lambda a: found.append(rename[a.name]) or a)
        return found

    for n in gm.graph.nodes:
        name = prefix + n.name
        rename[n.name] = name
        if n.op == "output":
            result = refs(n.args)
            continue
        owner = tracer.owners.get(n.name, "")
        owner = (owner_prefix + "." + owner if owner else owner_prefix) if owner_prefix else owner
        if n.op == "placeholder" and prefix:  # a parameter of an inlined leaf: an alias of the call's argument
            inputs = placeholder_inputs[placeholders] if placeholders < len(placeholder_inputs) else []
            placeholders += 1
            nodes[name] = FlowNode(name=name, op="alias", target=None, inputs=list(inputs), shape=shapes.get(name),
                                   owner=owner)
            continue
        qual = (owner_prefix + "." + n.target if owner_prefix else n.target) \
            if n.op in ("call_module", "get_attr") else n.target
        if n.op == "call_module" and qual in inlined:
            sub = inlined[qual]
            values = sub.placeholder_values(n.args, n.kwargs)
            sub_out = _add_graph(sub.gm, qual + "::", qual, sub.tracer, inlined, shapes, nodes,
                                 [refs(v) for v in values])
            nodes[name] = FlowNode(name=name, op="alias", target=qual, inputs=sub_out, shape=shapes.get(name),
                                   owner=owner)
            continue
        module = gm.get_submodule(n.target) if n.op == "call_module" else None
        nodes[name] = FlowNode(name=name, op=n.op, target=qual, module=module, inputs=refs((n.args, n.kwargs)),
                               shape=shapes.get(name), owner=owner, source=tracer.sources.get(n.name),
                               args=fx.node.map_arg(n.args, lambda a: rename[a.name]),
                               kwargs=fx.node.map_arg(n.kwargs, lambda a: rename[a.name]))
    return result


def _mutated_input(n: FlowNode) -> str | None:
    """The tensor an in-place op writes into, if it is one."""
    if not n.inputs:
        return None
    inplace = (
        (n.op == "call_method" and isinstance(n.target, str) and n.target.endswith("_")
         and not n.target.startswith("_"))
        or (n.op == "call_function" and (n.target in _INPLACE_FUNCTIONS or n.kwargs.get("inplace") is True))
        or (n.op == "call_module" and getattr(n.module, "inplace", False) is True)
    )
    first = n.args[0] if n.args else None
    return first if inplace and isinstance(first, str) and first in n.inputs else None


def _follow_inplace_updates(nodes: dict[str, FlowNode], outputs: list[str]) -> None:
    latest: dict[str, str] = {}
    for n in nodes.values():
        n.inputs = [latest.get(i, i) for i in n.inputs]
        target = _mutated_input(n)
        if target is not None:
            latest[target] = n.name
            for old, new in list(latest.items()):  # earlier names of the same tensor
                if new == target:
                    latest[old] = n.name
    outputs[:] = [latest.get(o, o) for o in outputs]


def _reads_size_only(n: FlowNode, sizes: set[str]) -> bool:
    if n.op == "call_method" and (n.target in _SIZE_METHODS or n.target in _LIKE_FACTORIES):
        return True
    if n.op == "call_function" and getattr(n.target, "__name__", "") in _LIKE_FACTORIES and \
            getattr(n.target, "__module__", "") in ("torch", "torch._C._VariableFunctions", None):
        return True
    if n.op != "call_function":
        return False
    if n.target is builtins.getattr:
        return len(n.args) > 1 and n.args[1] in _SIZE_ATTRIBUTES
    return n.target in _SCALAR_FUNCTIONS and bool(n.inputs) and all(i in sizes for i in n.inputs)


def _ignore_size_reads(nodes: dict[str, FlowNode]) -> None:
    """Sizes (and Python arithmetic on them) carry no data: edges from them are dropped."""
    sizes: set[str] = set()
    for n in nodes.values():
        if _reads_size_only(n, sizes):
            sizes.add(n.name)
    if not sizes:
        return
    for n in nodes.values():
        n.inputs = [] if n.name in sizes else [i for i in n.inputs if i not in sizes]
