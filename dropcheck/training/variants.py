"""The models train-compare trains: the original, the fixed model, no dropout, and the paper's sweep.

A sweep variant is the no-dropout model plus one nn.Dropout at one paper position, in every residual
branch (P0-P7) or in the head (H3-H6). Positions are defined on each branch's chain (the merge operand
back to the fork, along main inputs; Graph.branch_chain), so they reach any ResNet-like model:

    P0 on the block input, before the split (branch and skip both see it)
    P1 into the branch's first BN           P2 right after it
    P3 before the first weight layer after the first BN (and its activation)
    P4 into the branch's last BN            P5 right after it
    P6 Guideline 1's place (plan.branch_point)
    P7 right after the branch's last weight layer
    H3 after the head's last BN             H4 Guideline 2's place (plan.head_point)
    H5 right after the global pool          H6 on the model's output

Each variant is re-audited, and its `positions` say what the audit makes of it: a block that does not
match the paper's pre-activation figure (ResNetV1) may get another position, or none. Every variant is
a new module with the original's state_dict keys and shapes, so all start from the same weights.
"""
from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..analysis import ops
from ..analysis.capture import capture_graph
from ..analysis.graph import BN, WEIGHT, Graph
from ..analysis.sites import find_sites
from ..fixer.pipeline import fix_loaded
from ..fixer.plan import Plan, Point, branch_point, head_point
from ..fixer.rewrite import build_fixed
from ..records import Analysis, Capture, DropcheckError, Target

SWEEP_POSITIONS = ("P0", "P1", "P2", "P3", "P4", "P5", "P6", "P7", "H3", "H4", "H5", "H6")
BASE_VARIANTS = ("original", "fixed", "none")
DEFAULT_SWEEP_P = 0.1
_VALID = f"valid: {', '.join(BASE_VARIANTS)}, or sweep positions {', '.join(SWEEP_POSITIONS)}"


@dataclass
class Variant:
    """One model to train, and what was done to the original to get it."""

    name: str  # "original", "fixed", "none", or a sweep position such as "P3"
    model: nn.Module  # a new module, never the user's; same state_dict keys and shapes as the original
    description: str  # one line for people
    changes: list[str] = field(default_factory=list)  # one line per change
    positions: list[str] = field(default_factory=list)  # the audit's paper position per active dropout

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "changes": list(self.changes),
                "positions": list(self.positions)}


def parse_variants(text: str) -> list[str]:
    """`original,fixed,none` or a sweep such as `P0,P3,H5` (case-insensitive) -> variant names."""
    return _check_names([part.strip() for part in text.split(",") if part.strip()])


def _check_names(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for raw in names:
        name = raw.strip().upper() if raw.strip().upper() in SWEEP_POSITIONS else raw.strip().lower()
        if name not in SWEEP_POSITIONS and name not in BASE_VARIANTS:
            raise DropcheckError("usage", f"unknown variant {raw.strip()!r}", _VALID)
        if name in out:
            raise DropcheckError("usage", f"variant {name} is listed twice", "list each variant once")
        out.append(name)
    if not out:
        raise DropcheckError("usage", "no variants given", _VALID)
    return out


def build_variants(target: Target, names: Sequence[str], p: float | None = None) -> list[Variant]:
    """One new model per name; the user's model is left as it was (weights, flags and RNG state)."""
    names = _check_names(names)
    if p is not None and not 0.0 < p < 1.0:
        raise DropcheckError("usage", f"dropout p must be in (0, 1), got {p:g}", "for example --p 0.1")
    if any(t.is_meta for t in [*target.model.parameters(), *target.inputs] if isinstance(t, torch.Tensor)):
        raise DropcheckError("usage", f"{target.spec} is on the meta device: variants need real weights",
                             "load the target with weights=True")
    with torch.random.fork_rng(devices=[]):
        capture = capture_graph(target)
        analysis = find_sites(capture)
        points = {n: _sweep_points(capture, n, type(target.model).__name__) for n in names if n in SWEEP_POSITIONS}
        out = []
        for name in names:
            if name == "original":
                variant = Variant(name, copy.deepcopy(target.model), "", [], _positions(analysis))
                variant.description = f"the model as given: {_summary(variant.positions)}"
            elif name == "fixed":
                variant = _fixed(target, p)
            else:
                variant = _swept(target, capture, analysis, name, points.get(name, []),
                                 p if p is not None else DEFAULT_SWEEP_P)
            _check_state_dict(target.model, variant)
            out.append(variant)
    return out


# --- original, fixed, none -----------------------------------------------------------------------

def _positions(analysis: Analysis) -> list[str]:
    """The audit's paper position per active dropout (its site kind where it has none)."""
    return [s.paper_position or s.site.value for s in analysis.sites if s.active]


def _summary(positions: list[str]) -> str:
    if not positions:
        return "no active dropout"
    counts = Counter(positions)
    return f"{len(positions)} active dropout(s): " + ", ".join(f"{k} x{v}" if v > 1 else k for k, v in counts.items())


def _audit(target: Target, model: nn.Module) -> Analysis:
    again = Target(spec=target.spec, model=model, example_input=target.example_input, origin="api")
    return find_sites(capture_graph(again, eval_graph=False))


def _fixed(target: Target, p: float | None) -> Variant:
    result = fix_loaded(target, p=p)
    failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.ok]
    if failed:
        raise DropcheckError("fix", f"the fixed variant of {target.spec} failed verification ({failed[0]})",
                             "run `dropcheck fix` on it for details; leave `fixed` out of --variants meanwhile")
    changes = result.change_lines()
    changes += [f"cannot fix  {item}" for item in result.unfixable]
    what = f"{len(result.changes)} change(s)" if result.changes else "no changes, it already follows them"
    return Variant("fixed", result.model, f"dropcheck fix (Guidelines 1 and 2): {what}", changes,
                   _positions(_audit(target, result.model)))


def _removals(capture: Capture, analysis: Analysis) -> tuple[Plan, list[str], list[str], list[str]]:
    """A plan that takes every active dropout out of both graphs; change lines; modules to zero; kept."""
    plan, lines, zero, kept = Plan(root=capture.root), [], [], []
    for site in analysis.sites:
        if not site.active:
            continue
        where = site.paper_position or site.site.value
        if site.node is not None and "::" not in site.node and not site.opaque:
            plan.removals.append(site)
            lines.append(f"remove  {site.id}  {where}  (p={site.p:g})")
        elif site.module and _is_dropout(capture.root, site.module):
            zero.append(site.module)
            lines.append(f"p=0  {site.id}  inside {site.opaque or site.module}, which fx does not trace: "
                         f"cannot be removed from the graph, so its p is set to 0")
        else:
            kept.append(site.id)
            lines.append(f"kept  {site.id}  {where}: functional dropout inside a module fx does not trace; "
                         "it cannot be removed")
    for sd in analysis.stochastic_depth:
        lines.append(f"keep  {sd.id}  stochastic depth ({sd.op}, p={sd.p:g}) is not dropout")
    return plan, lines, zero, kept


def _is_dropout(root: nn.Module, qualname: str) -> bool:
    try:
        m = root.get_submodule(qualname)
    except AttributeError:
        return False
    return ops.is_dropout_module(m) or ops.is_attention_module(m)


def _zero_p(model: nn.Module, qualnames: list[str]) -> None:
    for qual in qualnames:
        m = model.get_submodule(qual)
        if isinstance(m, nn.MultiheadAttention):
            m.dropout = 0.0
            continue
        for attr in ("p", "drop_prob", "drop_rate", "rate", "prob"):
            if isinstance(getattr(m, attr, None), (int, float)):
                setattr(m, attr, 0.0)


def _swept(target: Target, capture: Capture, analysis: Analysis, name: str, points: list[Point],
           p: float) -> Variant:
    """"none", or "none" plus one dropout at sweep position `name` per branch (or in the head)."""
    plan, lines, zero, kept = _removals(capture, analysis)
    removed = len(plan.removals)
    inserted = set()
    for point in points:
        module = plan.free_name(f"{point.owner}.drop_{name.lower()}" if point.owner else f"drop_{name.lower()}")
        plan.insertions[point] = (p, module, False)
        inserted.add(module)
        lines.append(f"add  {module}  {name} {point.label}  (p={p:g})")
    model = build_fixed(capture, plan)
    _zero_p(model, zero)
    audited = _audit(target, model)
    parts = [f"{removed} of the model's dropouts removed"] if removed else []
    parts += [f"{len(zero)} inside untraceable modules set to p=0"] if zero else []
    parts += [f"{len(kept)} could not be removed ({', '.join(kept[:3])})"] if kept else []
    sd = analysis.stochastic_depth
    parts += [f"stochastic depth kept ({len(sd)} {sd[0].op})"] if sd else []
    if name == "none":
        head = "no dropout" + ("" if removed or zero or kept else " (the model has none)")
    else:
        where = f"in {len(points)} residual branch(es)" if name.startswith("P") else \
            ("in the head" if len(points) == 1 else f"on {len(points)} model outputs")
        head = f"dropout (p={p:g}) inserted at {name} {where}"
        lines += _disagreements(audited, name, inserted)
    return Variant(name, model, "; ".join([head, *parts]), lines, _positions(audited))


def _disagreements(audited: Analysis, name: str, inserted: set[str]) -> list[str]:
    mine = [s for s in audited.sites if s.active and s.module in inserted]
    other = Counter(s.paper_position or s.site.value for s in mine if s.paper_position != name)
    lines = [f"audit  {k} of {len(inserted)} dropout(s) inserted at {name} are audited as {pos} "
             f"({next(s.why for s in mine if (s.paper_position or s.site.value) == pos)})"
             for pos, k in other.items()]
    if len(mine) != len(inserted):
        lines.append(f"audit  {len(inserted) - len(mine)} of {len(inserted)} dropout(s) inserted at {name} "
                     "are not in the audited train graph")
    return lines


# --- where each sweep position is ----------------------------------------------------------------

def _sweep_points(capture: Capture, name: str, model: str) -> list[Point]:
    g = Graph(capture)
    if name.startswith("H"):
        points = _head_points(g, capture, name, model)
        if not points:
            raise DropcheckError("usage", f"{name}: no place for it in the head of {model}", "sweep other positions")
        return points
    branches = []
    for merge in g.merges:
        chain = g.branch_chain(merge) if "::" not in g.names[merge] else None
        if chain and any(g.kinds[i] == WEIGHT for i in chain):
            branches.append((merge, chain[::-1]))  # fork side first
    if not branches:
        raise DropcheckError("usage", f"{name}: no residual branch in {model} to put dropout in",
                             "P0-P7 need residual blocks (an add of a branch and a skip); sweep H3-H6, "
                             "or compare original, fixed and none")
    points = [point for merge, path in branches for point in [_branch_point(g, name, merge, path)] if point]
    if not points:
        raise DropcheckError("usage", f"{name}: none of the {len(branches)} residual branches in {model} has a "
                             f"place for it (no BatchNorm, or no weight layer after one)",
                             "sweep P0, P6 or P7 on this model")
    return list(dict.fromkeys(points))


def _branch_point(g: Graph, name: str, merge: int, path: list[int]) -> Point | None:
    """Where sweep position `name` is in the branch `path` (fork side first) that ends at `merge`."""
    owner = g.nodes[merge].owner
    bns = [i for i in path if g.kinds[i] == BN]
    weights = [i for i in path if g.kinds[i] == WEIGHT]
    before = {i: (path[k - 1] if k else g.main_input(i)) for k, i in enumerate(path)}
    after = {i: (path[k + 1] if k + 1 < len(path) else merge) for k, i in enumerate(path)}
    producer: int | None = None
    consumer: int | None = None
    label = ""
    if name == "P0":  # every user of the fork: branch and skip
        producer, label = g.main_input(path[0]), f"on the input of the block merging at {g.display(merge)}"
    elif name in ("P1", "P4") and bns:
        consumer = bns[0] if name == "P1" else bns[-1]
        producer, label = before[consumer], f"before {g.display(consumer)}"
    elif name in ("P2", "P5") and bns:
        producer = bns[0] if name == "P2" else bns[-1]
        consumer, label = after[producer], f"after {g.display(producer)}"
    elif name == "P3" and bns:
        consumer = next((i for i in weights if path.index(i) > path.index(bns[0])), None)
        if consumer is not None:
            producer, label = before[consumer], f"before {g.display(consumer)}"
    elif name == "P6":
        point = branch_point(g, merge)
        return Point(point.producer, point.consumer, owner, point.label, name) if point else None
    elif name == "P7":
        producer = weights[-1]
        consumer, label = after[producer], f"after {g.display(producer)}"
    if producer is None or (name != "P0" and consumer is None):
        return None
    ends = g.names[producer] + (g.names[consumer] if consumer is not None else "")
    if "::" in ends:  # inside a module traced on its own: not in the graph we rewrite
        return None
    return Point(g.names[producer], g.names[consumer] if consumer is not None else "", owner, label, name)


def _head_points(g: Graph, capture: Capture, name: str, model: str) -> list[Point]:
    if name == "H6":
        outs = [o for o in capture.outputs if o in g.index and g.data[g.index[o]] and "::" not in o]
        return [Point(o, "", "", "on the model output", name) for o in dict.fromkeys(outs)]
    if not g.final_pools:
        raise DropcheckError("usage", f"{name}: no global pooling before the output in {model}",
                             "H3-H5 are defined around the head's global pool; sweep H6 or P0-P7")
    pool = max(g.final_pools)
    if name == "H5":
        return [Point(g.names[pool], "", "", f"after global pooling {g.display(pool)}", name)]
    if name == "H4":
        point = head_point(g)
        return [Point(point.producer, point.consumer, "", point.label, name)] if point else []
    bns = sorted(i for i in g.head_bns if i < pool)
    if not bns:
        raise DropcheckError("usage", f"H3: no BatchNorm between the last residual merge and the global pool "
                             f"in {model}", "sweep H4 (before the pool) instead")
    return [Point(g.names[bns[-1]], "", "", f"after the head's BatchNorm {g.display(bns[-1])}", name)]


def _check_state_dict(original: nn.Module, variant: Variant) -> None:
    before = {k: tuple(v.shape) for k, v in original.state_dict().items()}
    after = {k: tuple(v.shape) for k, v in variant.model.state_dict().items()}
    if before != after:
        missing, extra = sorted(set(before) - set(after)), sorted(set(after) - set(before))
        shapes = sorted(k for k in set(before) & set(after) if before[k] != after[k])
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}" for what, keys in
                           (("missing", missing), ("extra", extra), ("shape differs", shapes)) if keys)
        raise DropcheckError("fix", f"variant {variant.name}: its state_dict differs from the original's ({detail})",
                             "please report this: every variant must load the original's weights")
