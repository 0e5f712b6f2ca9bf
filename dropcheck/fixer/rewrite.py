"""Apply a fix plan (plan.py) to the captured model: the fixed model's two fx graphs and its modules.

The plan is made once on the analysed train graph and applied to both fx graphs (train and eval):
nodes are matched between them by owner, op and occurrence. New dropouts are registered on a copy
of the model, removed dropout modules that nothing calls become nn.Identity, and tracer constants
move onto the fixed model. verify.py then checks the result.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import torch
from torch import fx, nn

from ..analysis import ops
from ..records import Capture, DropcheckError
from .fixed import FixedModel, make_fixed_model
from .plan import Plan


# --- applying the plan to a graph ----------------------------------------------------------------

def _node_keys(graph: fx.Graph, owners: dict[str, str]) -> dict[str, tuple[Any, ...]]:
    """A name-independent key per node: (owner, op, target, occurrence), equal across train and eval."""
    seen: dict[tuple[Any, ...], int] = defaultdict(int)
    keys = {}
    for n in graph.nodes:
        base = (owners.get(n.name, ""), n.op, _target_name(n.target))
        keys[n.name] = (*base, seen[base])
        seen[base] += 1
    return keys


def _target_name(target: Any) -> str:
    return target if isinstance(target, str) else f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', target)}"


def _apply(graph: fx.Graph, plan: Plan, train_keys: dict[str, tuple[Any, ...]],
           keys: dict[str, tuple[Any, ...]]) -> None:
    by_key = {k: n for n, k in keys.items()}
    nodes = {n.name: n for n in graph.nodes}

    def find(train_name: str) -> fx.Node | None:
        name = by_key.get(train_keys.get(train_name))
        return nodes.get(name) if name else None

    for point in plan.insertions:  # insert first: producers may be dropouts that are removed next
        producer = find(point.producer)
        if producer is None:
            continue
        if not point.consumer:  # on the producer itself: all its users see the dropout
            _insert_on_all_uses(graph, producer, plan.insertions[point][1])
            continue
        consumer = find(point.consumer)
        if consumer is None:
            continue
        with graph.inserting_before(consumer):
            new = graph.call_module(plan.insertions[point][1], (producer,))
        consumer.replace_input_with(producer, new)
    for site in plan.removals:
        node = find(site.node or "")
        if node is None:
            continue
        if node.target in ops.ATTENTION_FUNCTIONS:  # attention dropout: keep the attention, drop nothing
            _zero_attention_dropout(node)
            continue
        node.replace_all_uses_with(_data_input(node))
        graph.erase_node(node)
    for site, name, _ in plan.conversions.values():
        node = find(site.node or "")
        if node is not None:
            with graph.inserting_before(node):
                new = graph.call_module(name, (_data_input(node),))
            node.replace_all_uses_with(new)
            graph.erase_node(node)
    graph.lint()


def _data_input(node: fx.Node) -> Any:
    return node.args[0] if node.args else node.kwargs.get("input")


def _insert_on_all_uses(graph: fx.Graph, producer: fx.Node, module: str) -> None:
    users = set(producer.users)
    if not users:
        return
    first = next(n for n in graph.nodes if n in users)  # before the first user: stays after every placeholder
    with graph.inserting_before(first):
        new = graph.call_module(module, (producer,))
    producer.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)


def _zero_attention_dropout(node: fx.Node) -> None:
    if len(node.args) > 4:
        node.args = (*node.args[:4], 0.0, *node.args[5:])
    else:
        node.kwargs = {**node.kwargs, "dropout_p": 0.0}


# --- the fixed model -----------------------------------------------------------------------------

def build_fixed(capture: Capture, plan: Plan) -> FixedModel:
    """Apply the plan to copies of the train and eval graphs, on a copy of the model."""
    root = copy.deepcopy(capture.root)
    for p, name, reused in plan.insertions.values():
        if name in plan.module_types:  # a channel-wise dropout placed before the pool: element-wise
            _register(root, name, plan.module_types[name](p))
        elif reused:
            root.get_submodule(name).p = p
        else:
            _register(root, name, nn.Dropout(p))
    for site, name, p in plan.conversions.values():
        _register(root, name, (plan.module_types.get(name) or ops.MODULE_FOR_DROPOUT_FUNCTION[site.op])(p))
    train_gm, eval_gm = capture.graph_module, capture.eval_graph_module
    if eval_gm is None:
        raise DropcheckError("fix", "the model could not be traced in eval mode", "fix needs both fx graphs")
    train_keys = _node_keys(train_gm.graph, capture.owners)
    graphs, constants = [], {}
    for tag, gm, owners in (("train", train_gm, capture.owners), ("eval", eval_gm, capture.eval_owners)):
        graph = copy.deepcopy(gm.graph)
        _apply(graph, plan, train_keys, _node_keys(graph, owners))
        constants.update(_move_constants(graph, gm, root, tag))
        graphs.append(graph)
    _retire_removed(root, plan, graphs)
    return make_fixed_model(root, graphs[0], graphs[1], constants)


def _retire_removed(root: nn.Module, plan: Plan, graphs: list[fx.Graph]) -> None:
    """A removed dropout module that no graph calls any more becomes nn.Identity: it holds no state (the
    state_dict is unchanged), the module tree keeps its shape, and a re-audit sees no unused dropout."""
    called = {str(n.target) for g in graphs for n in g.nodes if n.op == "call_module"}
    for site in plan.removals:
        name = site.module if site.op not in ops.MODULE_FOR_DROPOUT_FUNCTION else None
        if name and name not in called and ops.is_dropout_module(root.get_submodule(name)):
            _register(root, name, nn.Identity())


def _register(root: nn.Module, qualname: str, module: nn.Module) -> None:
    parent_name, _, leaf = qualname.rpartition(".")
    (root.get_submodule(parent_name) if parent_name else root).add_module(leaf, module)


def _move_constants(graph: fx.Graph, gm: fx.GraphModule, root: nn.Module, tag: str) -> dict[str, torch.Tensor]:
    """Tensors the tracer stored on the GraphModule (not on the model) get a per-graph name."""
    out = {}
    state = {name for name, _ in root.named_parameters()} | {name for name, _ in root.named_buffers()}
    for n in graph.nodes:
        if n.op != "get_attr":
            continue
        try:
            _resolve(root, n.target)
            if "." in n.target or n.target in state:
                continue  # a parameter, a buffer, or an attribute of a submodule the fixed model keeps
            raise AttributeError(n.target)  # fx parks tensor constants on the traced root: not adopted
        except AttributeError:
            new = f"_{tag}_{n.target.replace('.', '_')}"
            out[new] = _resolve(gm, n.target)
            n.target = new
    return out


def _resolve(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
