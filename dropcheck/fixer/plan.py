"""The fix plan: where each dropout goes, made once on the analysed graph.

Guideline 1: per residual branch, dropout that reaches a BatchNorm before the merge (P0-P4) and
extra dropouts move to one dropout after the branch's last BatchNorm and activation, before its
last weight layer (P6); a branch ending in BatchNorm (ResNetV1) takes it at its end.
Guideline 2: head dropout before the BatchNorm (H1/H2), after global pooling (H5) or on the
predictions (H6/H7) moves before the pool (H4). Functional dropout becomes an nn.Dropout module,
so train()/eval() switch it (this also fixes DC006). Movers into one place settle on one dropout
there; `--add P` puts one in every branch and the head that have none.

The branches, merges and the first merge after a dropout are the graph view's (analysis.graph);
rewrite.py applies the plan to the fx graphs.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from torch import nn

from ..analysis import ops
from ..analysis.catalog import moved_by_fix  # site kind -> the rule a move is credited to (rules/*.md)
from ..analysis.graph import ADD, BN, WEIGHT, Graph
from ..records import Analysis, Capture, Change, Site, SiteKind


@dataclass(frozen=True)
class Point:
    """Insert a dropout on the edge producer -> consumer (train-graph node names).

    An empty consumer means every user of the producer (the model output included) sees the dropout.
    """

    producer: str
    consumer: str
    owner: str  # module that will hold a new dropout
    label: str  # for people: "before stages.0.0.conv2"
    position: str | None  # P6, H4, or None (end of a ResNetV1 branch)
    merge: str = ""  # display name of the residual merge whose branch this is ("" outside a branch)


@dataclass
class Plan:
    root: nn.Module  # the model the plan is for (names of new modules are free in it)
    removals: list[Site] = field(default_factory=list)  # dropouts taken out of the graph
    insertions: dict[Point, tuple[float, str, bool]] = field(default_factory=dict)  # point -> (p, module, reused)
    conversions: dict[str, tuple[Site, str, float]] = field(default_factory=dict)  # id -> (site, new module, p)
    changes: list[Change] = field(default_factory=list)
    unfixable: list[str] = field(default_factory=list)
    taken: set[str] = field(default_factory=set)

    def free_name(self, qualname: str) -> str:
        """`qualname`, or qualname_1, _2 ... if the model (or this plan) already uses it."""
        parent_name, _, leaf = qualname.rpartition(".")
        parent = self.root.get_submodule(parent_name) if parent_name else self.root
        name, k = leaf, 1
        while hasattr(parent, name) or _join(parent_name, name) in self.taken:
            name, k = f"{leaf}_{k}", k + 1
        self.taken.add(_join(parent_name, name))
        return _join(parent_name, name)


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


# --- where dropout goes --------------------------------------------------------------------------

def branch_point(g: Graph, merge: int) -> Point | None:
    """Guideline 1's place in the branch that ends at `merge`."""
    chain = g.branch_chain(merge)
    if chain is None:
        return None
    weights = [k for k, i in enumerate(chain) if g.kinds[i] == WEIGHT]
    if not weights:
        return None
    last_w = weights[0]  # chain runs from the merge backwards
    if any(g.kinds[i] == BN for i in chain[:last_w]):  # the branch ends in BatchNorm (ResNetV1)
        end = chain[0]
        return Point(g.names[end], g.names[merge], _holder(g, end) or g.nodes[merge].owner,
                     f"end of the branch merging at {g.display(merge)}", None, g.display(merge))
    w = chain[last_w]
    producer = g.main_input(w)
    if producer is None:
        return None
    up = g.upstream_layer(w)
    position = "P6" if up.layer == BN and up.act_between else ("P5" if up.layer == BN else None)
    return Point(g.names[producer], g.names[w], _holder(g, w), f"before {g.display(w)}", position,
                 g.display(merge))


def _holder(g: Graph, i: int) -> str:
    """The module whose forward makes node i: for a module call, the parent of the called module (a
    call_module node's owner is the called module itself, and a new dropout must not become a
    child of a BatchNorm or StochasticDepth)."""
    n = g.nodes[i]
    return str(n.target).rpartition(".")[0] if n.op == "call_module" else n.owner


def head_point(g: Graph) -> Point | None:
    """Guideline 2's place: just before the global pool that feeds the output (H4)."""
    if not g.final_pools:
        return None
    pool = max(g.final_pools)
    producer = g.main_input(pool)
    if producer is None:
        return None
    up = g.upstream_layer(pool)
    position = "H3" if up.layer == BN and not up.act_between else "H4"
    return Point(g.names[producer], g.names[pool], "", f"before global pooling {g.display(pool)}", position)


def _block_entered(g: Graph, s: int) -> int | None:
    """For trunk dropout (P0): the add of the residual block its first BatchNorm belongs to."""
    before_bn = g.walk([s], lambda i: g.kinds[i] == BN)
    bns = sorted(i for i in before_bn if g.kinds[i] == BN)
    if not bns:
        return None
    ahead = g.walk([bns[0]], lambda i: g.kinds[i] == ADD)
    return min((i for i in ahead if g.is_merge(i)), default=None)


# --- the plan ------------------------------------------------------------------------------------

def plan_fix(capture: Capture, analysis: Analysis, p_override: float | None = None,
             add_p: float | None = None, repeated: dict[str, list[str]] | None = None) -> Plan:
    """What to remove, insert and convert; every change with the rule that asks for it."""
    g = Graph(capture)
    plan = Plan(root=capture.root)
    movers: dict[Point, list[tuple[Site, str]]] = defaultdict(list)
    kept_at: dict[str, Site] = {}  # producer node (or "branch:" + merge) -> a dropout that stays there
    for site in analysis.sites:
        if site.node is None or site.opaque or not site.active:
            continue
        if "::" in site.node:
            if site.site in moved_by_fix() or site.id in (repeated or {}):
                plan.unfixable.append(f"{site.id}: inside a module traced on its own; fix it in that module")
            continue
        target, rule = _target_for(g, site, repeated or {})
        if target is None:
            if rule:
                plan.unfixable.append(f"{site.id}: no place for it ({rule}): "
                                      + ("no global pooling before the output" if rule != "DC001" or
                                         site.site is SiteKind.HEAD_PRE_BN else "no residual branch or head"))
            else:
                kept_at[site.node] = site
                if site.op in ops.MODULE_FOR_DROPOUT_FUNCTION:
                    p = p_override if p_override is not None else site.p
                    plan.conversions[site.id] = (site, plan.free_name(_new_name(site)), p)
            continue
        movers[target].append((site, rule))
    # Guideline 1 keeps one dropout per branch: one that stays in a branch (before a StochasticDepth at
    # its end, in front of its last activation, ...) takes the movers into that branch, as at its point
    for site in list(kept_at.values()):
        if site.site is SiteKind.BRANCH_GUIDELINE and site.merge:
            kept_at.setdefault(f"branch:{site.merge}", site)
    if add_p is not None:
        _add_everywhere(g, plan, movers, kept_at, add_p)
    for point, group in movers.items():
        _settle(point, group, kept_at, plan, p_override)
    for site, name, p in plan.conversions.values():
        plan.changes.append(Change("convert", site.id, "in place", p,
                                   "DC006" if site.always_on else "", name, site.paper_position,
                                   site.paper_position))
    return plan


def _target_for(g: Graph, site: Site, repeated: dict[str, list[str]]) -> tuple[Point | None, str]:
    s = g.index[site.node]
    # the dropout DC004 keeps in a branch stays only where Guideline 1 puts it; a kept one elsewhere
    # (in an SE gate, or next to another dropout at P6) moves there with the others (DC004's Fix)
    kept = site.id not in repeated and site.site is SiteKind.BRANCH_GUIDELINE and \
        any(site.id in others for others in repeated.values())
    if site.id in repeated or kept:
        merge = g.first_merge_after(s)
        point = branch_point(g, merge) if merge is not None else None
        if kept and (point is None or point.producer == site.node):
            return None, ""
        return point, "DC004"
    rule = moved_by_fix().get(site.site, "")
    if not rule:
        return None, ""
    if site.site in (SiteKind.BRANCH_PRE_BN, SiteKind.BRANCH_POST_WEIGHT):
        merge = g.first_merge_after(s)
        return (branch_point(g, merge) if merge is not None else None), rule
    if site.site is SiteKind.TRUNK_PRE_BN:
        block = _block_entered(g, s) if site.paper_position == "P0" else None
        return (branch_point(g, block) if block is not None else head_point(g)), rule
    return head_point(g), rule


def _settle(point: Point, group: list[tuple[Site, str]], kept_at: dict[str, Site], plan: Plan,
            p_override: float | None) -> None:
    """Movers into one place: one dropout there (an existing one stays), the rest removed."""
    resident = kept_at.get(point.producer) or (kept_at.get(f"branch:{point.merge}") if point.merge else None)
    plan.removals.extend(site for site, _ in group)
    if resident is not None:
        for site, rule in group:
            plan.changes.append(Change("remove", site.id, "", site.p, rule, resident.id, site.paper_position,
                                       resident.paper_position))
        return
    p = p_override if p_override is not None else max(site.p for site, _ in group)
    reuse = next((site.module for site, _ in group
                  if site.op not in ops.MODULE_FOR_DROPOUT_FUNCTION and site.module), None)
    module = reuse or plan.free_name(_point_module_name(point))
    plan.insertions[point] = (p, module, reuse is not None)
    first, rest = group[0], group[1:]
    plan.changes.append(Change("move", first[0].id, point.label, p, first[1], module,
                               first[0].paper_position, point.position))
    for site, rule in rest:
        plan.changes.append(Change("remove", site.id, "", site.p, rule, module, site.paper_position, point.position))


def _add_everywhere(g: Graph, plan: Plan, movers: dict[Point, list[tuple[Site, str]]],
                    kept_at: dict[str, Site], p: float) -> None:
    """--add P: guideline dropout in every residual branch and the head that have none."""
    points = []
    for i in g.merges:
        point = branch_point(g, i)
        if point is not None:
            points.append(point)
    head = head_point(g)
    if head is not None:
        points.append(head)
    for point in points:
        if point in movers or point.producer in kept_at or point in plan.insertions or \
                (point.merge and f"branch:{point.merge}" in kept_at):
            continue
        module = plan.free_name(_point_module_name(point))
        plan.insertions[point] = (p, module, False)
        plan.changes.append(Change("add", "", point.label, p, "", module, None, point.position))


def _point_module_name(point: Point) -> str:
    return f"{point.owner}.drop_guideline" if point.owner else "head_dropout"


def _new_name(site: Site) -> str:
    owner = site.module or ""
    leaf = site.id.rpartition("/")[2]
    return f"{owner}.{leaf}" if owner else leaf
