"""One kind per flow node (BatchNorm, weight layer, add, pool, activation, dropout, ...), for Graph."""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from ..records import FlowNode

BN, WEIGHT, ADD, CONCAT, POOL, ACT, SOFTMAX, DROPOUT, STOCHASTIC = (
    "bn", "weight", "add", "concat", "pool", "act", "softmax", "dropout", "stochastic")
INPUT, PARAM, OPAQUE, OTHER = "input", "param", "opaque", "other"
_CONCAT_FUNCTIONS = {torch.cat, torch.concat, torch.stack}
# swish written out, x * sigmoid(x) (EfficientNet re-implementations): an activation, not a gate
_MUL_FUNCTIONS, _MUL_METHODS = {operator.mul, torch.mul}, {"mul", "__mul__"}
_SIGMOID_FUNCTIONS = {torch.sigmoid, F.sigmoid}


@dataclass
class _Nodes:
    """What classifying a node needs to know of the graph around it."""

    nodes: list[FlowNode]
    index: dict[str, int]
    inputs: list[list[int]]
    users: list[list[int]]
    data: list[bool]
    opaque_by_module: dict[str, Any]
    kinds: list[str]


def node_kinds(nodes: list[FlowNode], index: dict[str, int], inputs: list[list[int]], users: list[list[int]],
               data: list[bool], opaque_by_module: dict[str, Any]) -> list[str]:
    """The kind of every node, in order; swish written out (x * sigmoid(x)) counts as an activation."""
    view = _Nodes(nodes, index, inputs, users, data, opaque_by_module, [])
    view.kinds = [_kind(view, n) for n in nodes]
    _mark_swish(view)
    return view.kinds


def _kind(self: "_Nodes", n: FlowNode) -> str:
    if n.op == "placeholder":
        return INPUT
    if n.op == "get_attr":
        return PARAM
    if n.op == "call_module":
        m = n.module
        if n.target in self.opaque_by_module:
            return OPAQUE
        if ops.is_dropout_module(m):
            return DROPOUT
        if ops.is_stochastic_depth_module(m):
            return STOCHASTIC
        if ops.is_batchnorm_module(m):
            return BN
        if ops.is_weight_module(m):
            return WEIGHT
        if ops.is_activation_module(m):
            return ACT
        if isinstance(m, ops.POOL_MODULES):
            return POOL
        if isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Sigmoid)):
            return SOFTMAX
        return OTHER
    if n.op == "call_function":
        t = n.target
        if ops.is_dropout_function(t):
            return DROPOUT
        if t in ops.ATTENTION_FUNCTIONS:
            return DROPOUT if _attention_p(self, n) > 0 else OTHER
        if ops.is_stochastic_depth_function(t):
            return STOCHASTIC
        if t in ops.BATCHNORM_FUNCTIONS:
            return BN if ops.is_batchnorm_call(t, n.args, n.kwargs) else OTHER
        if t in ops.WEIGHT_FUNCTIONS:
            return WEIGHT
        if t in ops.MATMUL_FUNCTIONS:
            return WEIGHT if _has_param_operand(self, n) else OTHER
        if t in ops.ADD_FUNCTIONS:
            return ADD
        if t in _CONCAT_FUNCTIONS:
            return CONCAT
        if t in ops.POOL_FUNCTIONS:
            return POOL
        if t in ops.ACTIVATION_FUNCTIONS:
            return ACT
        if t in ops.SOFTMAX_FUNCTIONS:
            return SOFTMAX
        return OTHER
    if n.op == "call_method":
        t = n.target
        if t in ops.ADD_METHODS:
            return ADD
        if t in ops.POOL_METHODS:
            return POOL
        if t in ops.ACTIVATION_METHODS:
            return ACT
        if t in ops.SOFTMAX_METHODS:
            return SOFTMAX
        if t in ("matmul", "__matmul__"):
            return WEIGHT if _has_param_operand(self, n) else OTHER
    return OTHER

def _mark_swish(self: "_Nodes") -> None:
    """`x * x.sigmoid()`, `x * torch.sigmoid(x)`: the product and its sigmoid are one activation
    (SiLU), where a sigmoid of another tensor (an SE gate) is not."""
    for i, n in enumerate(self.nodes):
        if not ((n.op == "call_function" and n.target in _MUL_FUNCTIONS)
                or (n.op == "call_method" and n.target in _MUL_METHODS)) or len(n.args) != 2:
            continue
        a, b = (self.index.get(x) if isinstance(x, str) else None for x in n.args)
        for x, gate in ((a, b), (b, a)):
            if x is not None and gate is not None and _is_sigmoid(self, gate) and self.inputs[gate] == [x]:
                self.kinds[i] = ACT
                if self.users[gate] == [i]:
                    self.kinds[gate] = ACT

def _is_sigmoid(self: "_Nodes", i: int) -> bool:
    n = self.nodes[i]
    return ((n.op == "call_function" and n.target in _SIGMOID_FUNCTIONS)
            or (n.op == "call_method" and n.target == "sigmoid")
            or (n.op == "call_module" and isinstance(n.module, nn.Sigmoid)))

def _attention_p(self: "_Nodes", n: FlowNode) -> float:
    return ops.function_p_and_training(n.target, n.args, n.kwargs)[0]

def _has_param_operand(self: "_Nodes", n: FlowNode) -> bool:
    """An operand computed from parameters alone (W, W.t(), ...), not from the data."""
    return any(not self.data[self.index[i]] for i in n.inputs)
