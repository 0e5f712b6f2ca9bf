"""The fix plan: where each dropout goes, made once on the analysed graph.

Guideline 1: per residual branch, dropout that reaches a BatchNorm before the merge (P0-P4) and
extra dropouts move to one dropout after the branch's last BatchNorm and activation, before its
last weight layer (P6); a branch ending in BatchNorm (ResNetV1) takes it at its end.
Guideline 2: head dropout before the BatchNorm (H1/H2), after global pooling (H5) or on the
predictions (H6/H7) moves before the pool (H4); a channel-wise dropout there becomes element-wise
(and one already right before the pool is converted in place). No residual merge downstream (MLPs,
U-Nets, plain CNNs): the nearest place downstream after which no BatchNorm follows, before a weight
layer (Li et al.); `remove` takes such dropouts out instead. A moved dropout affects exactly the
outputs the original affected; a site with no such place is unfixable, with why. Functional dropout
becomes an nn.Dropout module, so train()/eval() switch it (this also fixes DC006). Movers into one
place settle on one dropout there (the largest p); `--add P` puts one in every branch and the head
that have none.

The places are places.py's, on the graph view (analysis.graph); rewrite.py applies the plan to the
fx graphs.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from torch import nn

from ..analysis import ops
from ..analysis.catalog import moved_by_fix  # site kind -> the rule a move is credited to (rules/*.md)
from ..analysis.graph import ADD, BN, CONCAT, POOL, WEIGHT, Graph
from ..records import Analysis, Capture, Change, Site, SiteKind
from .places import Point, branch_point, downstream_point, head_point, head_problem, output_change

__all__ = ["ELEMENTWISE", "Plan", "Point", "branch_point", "head_point", "plan_fix"]

# channel-wise dropout -> the element-wise kind that takes its place before the global pool (Guideline 2)
ELEMENTWISE: dict[str, type[nn.Module]] = {
    "Dropout1d": nn.Dropout, "Dropout2d": nn.Dropout, "Dropout3d": nn.Dropout, "FeatureAlphaDropout": nn.AlphaDropout,
    "dropout1d": nn.Dropout, "dropout2d": nn.Dropout, "dropout3d": nn.Dropout, "feature_alpha_dropout": nn.AlphaDropout}


@dataclass
class Plan:
    root: nn.Module  # the model the plan is for (names of new modules are free in it)
    removals: list[Site] = field(default_factory=list)  # dropouts taken out of the graph
    insertions: dict[Point, tuple[float, str, bool]] = field(default_factory=dict)  # point -> (p, module, reused)
    conversions: dict[str, tuple[Site, str, float]] = field(default_factory=dict)  # id -> (site, new module, p)
    changes: list[Change] = field(default_factory=list)
    unfixable: list[str] = field(default_factory=list)
    taken: set[str] = field(default_factory=set)
    unfixable_ids: set[str] = field(default_factory=set)  # sites left as they were (their findings stay)
    after_pool: dict[str, str] = field(default_factory=dict)  # dropout module placed after the pool -> why
    module_types: dict[str, type[nn.Module]] = field(default_factory=dict)  # module -> class (element-wise)

    def cannot(self, site: Site, reason: str) -> None:
        self.unfixable.append(f"{site.id}: {reason}")
        self.unfixable_ids.add(site.id)

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


# --- where dropout goes ---------------------------------------------------------------------------

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
             add_p: float | None = None, repeated: dict[str, list[str]] | None = None,
             remove: bool = False) -> Plan:
    """What to remove, insert and convert; every change with the rule that asks for it. `remove`: a
    dropout with no residual merge downstream that reaches a BatchNorm is removed, not moved."""
    g = Graph(capture)
    plan = Plan(root=capture.root)
    movers: dict[Point, list[tuple[Site, str]]] = defaultdict(list)
    kept_at: dict[str, Site] = {}  # producer node (or "branch:" + merge) -> a dropout that stays there
    for site in analysis.sites:
        if site.opaque and site.active and site.site in moved_by_fix():
            plan.cannot(site, f"the {site.op} {site.opaque} drops inside itself, where fix does not rewrite; build "
                              "it with dropout=0 and, for the regularisation, a dropout of your own after the BatchNorm")
            continue
        if site.node is None or site.opaque or not site.active:
            continue
        if "::" in site.node:
            if site.site in moved_by_fix() or site.id in (repeated or {}):
                plan.cannot(site, "inside a module traced on its own; fix it in that module")
            continue
        if remove and _without_merge(g, site):
            plan.removals.append(site)
            plan.changes.append(Change("remove", site.id, "", site.p, "DC001", "", site.paper_position, None))
            continue
        target, rule, why = _target_for(g, site, repeated or {})
        if target is None and rule:
            plan.cannot(site, f"no place for it ({rule}): {why}")
            _convert(g, site, plan, p_override)  # stays, as a module (its id in the fixed model is that module's)
            if site.id in plan.conversions:
                plan.unfixable_ids.add(plan.conversions[site.id][1])
            continue
        if target is None or target.producer == site.node:  # stays where it is
            kept_at[site.node] = site
            if target is not None and target.after_pool:
                plan.after_pool[site.module or site.id] = _AFTER_POOL
            _convert(g, site, plan, p_override)
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
        elementwise = name in plan.module_types
        plan.changes.append(Change("convert", site.id, "in place, element-wise" if elementwise else "in place", p,
                                   "DC006" if site.always_on else ("DC002" if elementwise else ""), name,
                                   site.paper_position, site.paper_position))
    return plan


_AFTER_POOL = ("after global pooling, after the head's last BatchNorm: every place before the pool reaches "
               "a BatchNorm, so DC002 is the lesser harm")


def _without_merge(g: Graph, site: Site) -> bool:
    """A trunk dropout that reaches a BatchNorm with no residual merge downstream of it (what `remove`
    takes: MLPs, U-Nets, plain CNNs). Not P0: it enters a residual block, whose branch takes it."""
    return site.site is SiteKind.TRUNK_PRE_BN and site.paper_position != "P0" and bool(site.reaches) and \
        g.first_merge_after(g.index[site.node or ""]) is None


def _convert(g: Graph, site: Site, plan: Plan, p_override: float | None) -> None:
    """A dropout that stays: functional becomes a module; channel-wise right before the pool, element-wise."""
    p = p_override if p_override is not None else site.p
    elementwise = ELEMENTWISE.get(site.op) if _feeds_pool(g, g.index[site.node or ""]) else None
    if elementwise is not None:
        name = site.module if site.op not in ops.MODULE_FOR_DROPOUT_FUNCTION and site.module else \
            plan.free_name(_new_name(site))
        plan.module_types[name] = elementwise
        plan.conversions[site.id] = (site, name, p)
    elif site.op in ops.MODULE_FOR_DROPOUT_FUNCTION:
        plan.conversions[site.id] = (site, plan.free_name(_new_name(site)), p)


def _feeds_pool(g: Graph, s: int) -> bool:
    """No weight layer, BatchNorm, merge or other pool between dropout s and the global pool."""
    ahead = g.walk([s], lambda i: g.kinds[i] in (WEIGHT, BN, ADD, CONCAT, POOL))
    return any(i in g.final_pools for i in ahead)


def _target_for(g: Graph, site: Site, repeated: dict[str, list[str]]) -> tuple[Point | None, str, str]:
    """(where it goes, the rule that moves it, why it cannot move); (None, "", "") when it stays."""
    s = g.index[site.node or ""]
    # the dropout DC004 keeps in a branch stays only where Guideline 1 puts it; a kept one elsewhere
    # (in an SE gate, or next to another dropout at P6) moves there with the others (DC004's Fix)
    kept = site.id not in repeated and site.site is SiteKind.BRANCH_GUIDELINE and \
        any(site.id in others for others in repeated.values())
    outputs = g.outputs_from(s)
    if site.id in repeated or kept:
        merge = g.first_merge_after(s)
        point = branch_point(g, merge) if merge is not None else None
        if kept and (point is None or point.producer == site.node):
            return None, "", ""
        return _checked(g, point, outputs, "no place for one dropout in its residual branch", "DC004")
    rule = moved_by_fix().get(site.site, "")
    if not rule:
        return None, "", ""
    if site.site in (SiteKind.BRANCH_PRE_BN, SiteKind.BRANCH_POST_WEIGHT):
        merge = g.first_merge_after(s)
        point = branch_point(g, merge) if merge is not None else None
        return _checked(g, point, outputs, "no weight layer in its residual branch", rule)
    if site.site is SiteKind.TRUNK_PRE_BN and site.paper_position == "P0":
        block = _block_entered(g, s)
        point = branch_point(g, block) if block is not None else None
        if point is not None and not output_change(g, point, outputs):
            return point, rule, ""
    # the head (H4), else the nearest place downstream after which no BatchNorm follows
    head = head_point(g)
    problem = head_problem(g, head, outputs) if head is not None else "no global pooling before the output"
    if head is not None and not problem:
        return head, rule, ""
    point, why = downstream_point(g, s, outputs)
    if point is not None:
        return point, rule, ""
    return None, rule, "; ".join(part for part in (problem if head is not None else "", why) if part)


def _checked(g: Graph, point: Point | None, outputs: frozenset[int], missing: str,
             rule: str) -> tuple[Point | None, str, str]:
    if point is None:
        return None, rule, missing
    change = output_change(g, point, outputs)
    return (None, rule, change) if change else (point, rule, "")


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
    reused = next((site for site, _ in group if site.op not in ops.MODULE_FOR_DROPOUT_FUNCTION and site.module), None)
    module = reused.module if reused is not None and reused.module else plan.free_name(_point_module_name(point))
    plan.insertions[point] = (p, module, reused is not None)
    label = point.label
    if reused is not None and reused.op in ELEMENTWISE and point.position in ("H3", "H4"):
        plan.module_types[module] = ELEMENTWISE[reused.op]  # Guideline 2: element-wise before the pool
        label += ", element-wise"
    if point.after_pool:
        plan.after_pool[module] = _AFTER_POOL
    if reused is not None:  # the dropout whose module does the work is the one that moves; the rest go
        group = sorted(group, key=lambda entry: entry[0] is not reused)
    first, rest = group[0], group[1:]
    plan.changes.append(Change("move", first[0].id, label, p, first[1], module,
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
    # not where it would reach a BatchNorm, or a returned tensor with no weight layer in between
    if head is not None and not g.batchnorms_from(g.index[head.consumer]) and \
            not g.reaches_output(g.index[head.consumer], lambda i: g.kinds[i] == WEIGHT):
        points.append(head)
    for point in points:
        if point in movers or point.producer in kept_at or point in plan.insertions or \
                (point.merge and f"branch:{point.merge}" in kept_at):
            continue
        module = plan.free_name(_point_module_name(point))
        plan.insertions[point] = (p, module, False)
        plan.changes.append(Change("add", "", point.label, p, "", module, None, point.position))


def _point_module_name(point: Point) -> str:
    if point.owner:
        return f"{point.owner}.drop_guideline"
    return "head_dropout" if point.position in ("H3", "H4") else "drop_guideline"


def _new_name(site: Site) -> str:
    owner = site.module or ""
    leaf = site.id.rpartition("/")[2]
    return f"{owner}.{leaf}" if owner else leaf
