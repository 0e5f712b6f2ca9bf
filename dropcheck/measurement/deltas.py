"""Empirical inconsistency ratios Δ = Var_test / Var_train (paper, Definition 2) per channel.

Method (design §5): BatchNorm running statistics are calibrated in train mode first (unless the
weights are pretrained); then BatchNorm stays in eval mode and the same batches run twice, with
dropout off (test) and on (train). Forward hooks on the BatchNorm modules (their inputs) and on
taps inserted after every residual merge accumulate per-channel statistics in float64 with a
mergeable update, so memory stays flat however many batches run. Stochastic depth stays off in
both runs: Δ isolates dropout.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import fx, nn

from ..analysis import ops
from ..analysis.graph import ADD, BN, DROPOUT, Graph
from ..records import Analysis, Capture, Measurement
from .stats import ChannelStats


class _Tap(nn.Identity):
    """Marks a residual merge's output in the graph; a forward hook reads what passes through."""


def measure_model(capture: Capture, analysis: Analysis, batches: Callable[[], Iterable[Any]], device: torch.device,
                  calibrate: bool = True, progress: Callable[[str], None] | None = None,
                  copy_model: bool = True) -> list[Measurement]:
    """Δ at every BatchNorm input and residual-merge output of the captured model."""
    g = Graph(capture)
    model, taps = _instrumented(capture, g, copy_model)
    model.to(device)
    points = _points(g, taps)
    reach = _reached_by(g, analysis)
    flagged = _dc001_paths(g, analysis)
    flags = {m: m.training for m in model.modules()}
    try:
        if calibrate:
            _calibrate(model, batches, device, progress)
        test = _collect(model, points, batches, device, dropout_on=False, progress=progress, label="dropout off")
        if any(s.active for s in analysis.sites):
            train = _collect(model, points, batches, device, dropout_on=True, progress=progress, label="dropout on")
        else:  # nothing drops: the second pass would repeat the first exactly (Δ = 1 everywhere)
            train = test
    finally:
        for m, flag in flags.items():
            m.training = flag
    out = []
    for key, (node, module, kind) in points.items():
        if test[key].count is None:
            continue  # never ran (a train-only branch when the run did not reach it)
        ratio = _ratio(test[key], train[key])
        if ratio is None:
            continue
        mean, low, sym = ratio
        name = g.display(node)
        by = tuple(flagged.get(node, ())) if kind == "batchnorm" else ()
        out.append(Measurement(node=name, module=module, kind=kind, delta_mean=mean, delta_min=low,
                               symmetric_mean=sym, reached_by=tuple(reach.get(node, ())),
                               flagged=bool(by), flagged_by=by))
    return out


# --- instrumenting the graph ---------------------------------------------------------------------

def _instrumented(capture: Capture, g: Graph, copy_model: bool) -> tuple[fx.GraphModule, dict[str, str]]:
    """The train graph with functional dropout as modules (so eval() switches it) and merge taps."""
    root = copy.deepcopy(capture.root) if copy_model else capture.root
    graph = copy.deepcopy(capture.graph_module.graph)
    nodes = {n.name: n for n in graph.nodes}
    taps: dict[str, str] = {}
    for i, kind in enumerate(g.kinds):
        name = g.names[i]
        if "::" in name or name not in nodes:
            continue  # inside an inlined leaf: its BatchNorm modules still get hooks
        n = nodes[name]
        if kind == DROPOUT and n.op == "call_function" and ops.is_dropout_function(n.target):
            p, training = ops.function_p_and_training(n.target, n.args, n.kwargs)
            module_cls = ops.MODULE_FOR_DROPOUT_FUNCTION.get(getattr(n.target, "__name__", ""), nn.Dropout)
            _swap_for_module(graph, n, root, f"_dropcheck_drop_{i}", module_cls(p) if training else nn.Identity())
        elif g.is_merge(i) or kind == BN and n.op == "call_function":
            tap = f"_dropcheck_tap_{i}"
            root.add_module(tap, _Tap())
            anchor = n if kind == ADD else n.args[0]
            with graph.inserting_after(anchor):
                node = graph.call_module(tap, (anchor,))
            if kind == ADD:
                n.replace_all_uses_with(node, delete_user_cb=lambda user: user is not node)
            else:
                n.replace_input_with(anchor, node)
            taps[name] = tap
    graph.lint()
    return fx.GraphModule(root, graph), taps


def _swap_for_module(graph: fx.Graph, n: fx.Node, root: nn.Module, name: str, module: nn.Module) -> None:
    root.add_module(name, module)
    with graph.inserting_before(n):
        new = graph.call_module(name, (n.args[0] if n.args else n.kwargs["input"],))
    n.replace_all_uses_with(new)
    graph.erase_node(n)


def _points(g: Graph, taps: dict[str, str]) -> dict[str, tuple[int, str | None, str]]:
    """What is measured: key -> (flow node, module qualname or None, kind)."""
    points: dict[str, tuple[int, str | None, str]] = {}
    for i, kind in enumerate(g.kinds):
        n = g.nodes[i]
        if kind == BN and n.op == "call_module":
            points[f"module:{n.target}"] = (i, str(n.target), "batchnorm")
        elif g.names[i] in taps:
            points[f"tap:{taps[g.names[i]]}"] = (i, None, "batchnorm" if kind == BN else "merge")
    return points


def _reached_by(g: Graph, analysis: Analysis) -> dict[int, list[str]]:
    """Every BatchNorm and merge each active dropout reaches by any path."""
    reach: dict[int, list[str]] = {}
    for site in analysis.sites:
        if not site.active or site.node is None or site.node not in g.index:
            continue
        for i in g.walk([g.index[site.node]], lambda j: False):
            if g.kinds[i] in (BN, ADD):
                reach.setdefault(i, []).append(site.id)
    return reach


def _dc001_paths(g: Graph, analysis: Analysis) -> dict[int, list[str]]:
    """Every BatchNorm on a DC001 dropout's path before its next residual merge -> those dropouts.

    The audit's `reaches` names the first BatchNorm on each path; the shift does not stop there
    (a BatchNorm normalises with its running statistics, so the smaller test-time variance passes
    on), so every later BatchNorm up to the merge is flagged too."""
    paths: dict[int, list[str]] = {}
    for site in analysis.sites:
        if not site.active or not site.reaches or site.node is None or site.node not in g.index:
            continue
        s = g.index[site.node]
        for i in sorted(g.walk([s], lambda j: g.is_merge_for(j, s))):
            if i != s and g.kinds[i] == BN and not g.is_merge_for(i, s):
                paths.setdefault(i, []).append(site.id)
    return paths


# --- running -------------------------------------------------------------------------------------

def _calibrate(model: nn.Module, batches: Callable[[], Iterable[Any]], device: torch.device,
               progress: Callable[[str], None] | None) -> None:
    """Population statistics of every BatchNorm under train mode (dropout on), as training leaves them."""
    norms = [m for m in model.modules() if ops.is_batchnorm_module(m)]
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    _set_stochastic_depth(model, on=False)
    try:
        with torch.no_grad():
            for k, batch in enumerate(batches()):
                if progress:
                    progress(f"calibrating BatchNorm (batch {k + 1})")
                model(*_inputs(batch, device))
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum


def _collect(model: nn.Module, points: dict[str, tuple[int, str | None, str]], batches: Callable[[], Iterable[Any]],
             device: torch.device, dropout_on: bool, progress: Callable[[str], None] | None,
             label: str) -> dict[str, ChannelStats]:
    stats = {key: ChannelStats() for key in points}
    model.eval()
    for m in model.modules():
        if ops.is_dropout_module(m):
            m.train(dropout_on)
    handles = []
    for key in points:
        kind, name = key.split(":", 1)
        module = model.get_submodule(name)
        if kind == "module":  # BatchNorm: what comes in
            handles.append(module.register_forward_pre_hook(lambda m, args, s=stats[key]: s.update(args[0])))
        else:  # a tap: what passes through
            handles.append(module.register_forward_hook(lambda m, args, out, s=stats[key]: s.update(out)))
    try:
        with torch.no_grad():
            for k, batch in enumerate(batches()):
                if progress:
                    progress(f"measuring, {label} (batch {k + 1})")
                model(*_inputs(batch, device))
    finally:
        for h in handles:
            h.remove()
    return stats


def _set_stochastic_depth(model: nn.Module, on: bool) -> None:
    for m in model.modules():
        if ops.is_stochastic_depth_module(m):
            m.train(on)


def _inputs(batch: Any, device: torch.device) -> tuple[Any, ...]:
    if isinstance(batch, (tuple, list)):  # (images, labels) from a labelled data set: the images
        batch = batch[0]
    return (batch.to(device),)


def _ratio(test: ChannelStats, train: ChannelStats) -> tuple[float, float, float] | None:
    """Mean and minimum of Δ over channels, and the mean of Li et al.'s symmetric max(r, 1/r)."""
    vt, vr = test.variance, train.variance
    live = (vt > 0) & (vr > 0)  # dead channels (a ReLU that never fires) carry no ratio
    if not bool(live.any()):
        return None
    r = vt[live] / vr[live]
    sym = torch.maximum(r, 1 / r)
    return float(r.mean()), float(r.min()), float(sym.mean())
