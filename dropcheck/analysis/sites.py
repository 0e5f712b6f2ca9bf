"""Analyse the captured graph: dropout sites, BatchNorms, residual merges, global pools, the head.

Every question is a reachability question on the data-flow graph, asked of the graph view
(graph.py): a residual merge is relative to a dropout, an add with an operand that carries
data (descends from the model input) and does not depend on that dropout. Concatenation is
not a merge.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

from . import ops
from .graph import ADD, BN, CONCAT, DROPOUT, OPAQUE, SOFTMAX, STOCHASTIC, WEIGHT, Branch, Graph
from ..records import Analysis, Capture, FlowNode, OpaqueRegion, Site, SiteKind, StochasticDepthSite

# --- classifying one dropout ---------------------------------------------------------------------

@dataclass(frozen=True)
class _Placement:
    site: SiteKind
    position: str | None
    reaches: tuple[str, ...]
    merge: str | None
    why: str


def _place(g: Graph, s: int, weight_inside: bool = False) -> _Placement:
    """Where the dropout at node `s` sits. `weight_inside`: the node is a leaf whose own weight layer
    follows its dropout (nn.MultiheadAttention's out_proj), so its output is neither predictions nor
    channels masked after a pool."""
    is_merge = lambda i: g.is_merge_for(i, s)  # noqa: E731
    before_bn = g.walk([s], lambda i: _is_bn_like(g, i) or is_merge(i))
    reached = sorted(i for i in before_bn if i != s and _is_bn_like(g, i))
    merge = g.first_merge_after(s)
    merge_name = g.display(merge) if merge is not None else None

    reaches = tuple(g.display(i) for i in reached)  # DC001 follows these, whatever the site kind
    on_predictions = not weight_inside and g.reaches_output(s, lambda i: g.kinds[i] == WEIGHT or is_merge(i))
    if on_predictions:
        return _logits(g, s, merge_name, reaches, after_pool=s in g.post_pool)
    if s in g.post_pool and not weight_inside:
        return _Placement(SiteKind.HEAD_POST_GAP, "H5", reaches, merge_name,
                          "after global pooling: it masks whole channels (Prop. 5)")
    if reached:
        if all(i in g.head_bns for i in reached) and merge is None:
            via_weight = g.walk([s], lambda i: g.kinds[i] in (BN, WEIGHT) or is_merge(i))
            position = "H1" if any(g.kinds[i] == WEIGHT for i in via_weight if i != s) else "H2"
            return _Placement(SiteKind.HEAD_PRE_BN, position, reaches, None,
                              f"reaches the head's BatchNorm {reaches[0]} (variance shift)")
        branch = g.branch_of(s)
        if branch is not None:
            kind = SiteKind.OTHER if branch.on_skip else SiteKind.BRANCH_PRE_BN
            return _Placement(kind, branch.position(pre_bn=True), reaches, merge_name,
                              f"reaches BatchNorm {reaches[0]} before the residual merge")
        position = "P0" if _enters_residual_block(g, s, reached[0]) else None
        return _Placement(SiteKind.TRUNK_PRE_BN, position, reaches, None,
                          f"reaches BatchNorm {reaches[0]} with no residual merge in between")

    clean = g.walk([s], lambda i: g.kinds[i] in (WEIGHT, BN, CONCAT) or is_merge(i))
    if any(p in clean for p in g.final_pools):
        if ops.masks_channels(g.nodes[s].module, g.nodes[s].target):
            # the pool averages each channel's one mask value into the pooled feature: exactly dropout
            # after the pool, same p (GAP(Dropout2d(x)) = Dropout(GAP(x)) in distribution)
            return _Placement(SiteKind.HEAD_PRE_GAP_CHANNEL, "H5", (), None,
                              "channel-wise dropout before global pooling: the pool keeps each channel's mask, "
                              "so it drops whole pooled channels as after the pool (H5, Prop. 5)")
        up = g.upstream_layer(s)
        position = "H3" if up.layer == BN and not up.act_between else "H4"
        return _Placement(SiteKind.HEAD_PRE_GAP, position, (), None,
                          "before global pooling, after the head's last BatchNorm (Guideline 2)" if g.head_bns
                          else "before global pooling, with no BatchNorm after it (Guideline 2)")
    if not g.has_bn:
        return _Placement(SiteKind.OTHER, None, (), merge_name, "the model has no BatchNorm")
    branch = g.branch_of(s)
    if branch is not None:
        return _branch_placement(g, s, branch, merge_name)
    # no merge stopped the walk, so before_bn holds everything downstream of s
    return _Placement(SiteKind.OTHER, None, (), None, "no BatchNorm downstream")


def _logits(g: Graph, s: int, merge_name: str | None, reaches: tuple[str, ...], after_pool: bool) -> _Placement:
    back = _walk_back(g, s, stop=lambda i: g.kinds[i] == WEIGHT)
    position = "H7" if any(g.kinds[i] == SOFTMAX for i in back) else ("H6" if after_pool else None)
    return _Placement(SiteKind.HEAD_LOGITS, position, reaches, merge_name,
                      "no weight layer between it and the model's output: it drops predictions")


def _walk_back(g: Graph, s: int, stop: Callable[[int], bool]) -> set[int]:
    seen: set[int] = set()
    queue = deque(g.inputs[s])
    while queue:
        i = queue.popleft()
        if i in seen:
            continue
        seen.add(i)
        if not stop(i):
            queue.extend(g.inputs[i])
    return seen


def _branch_placement(g: Graph, s: int, branch: Branch, merge_name: str | None) -> _Placement:
    if branch.on_skip:
        return _Placement(SiteKind.OTHER, None, (), merge_name,
                          "on the skip connection: Guideline 1 puts dropout inside the residual branch")
    up = g.upstream_layer(s, branch.in_fork)
    position = branch.position(pre_bn=False)
    if not branch.weight_after_s() and up.layer == WEIGHT:
        return _Placement(SiteKind.BRANCH_POST_WEIGHT, position, (), merge_name,
                          "after the branch's last weight layer (PostDropout, Prop. 2)")
    after = branch.chain[branch.chain.index(s):] if s in branch.chain else branch.chain
    if any(g.kinds[i] == BN for i in after) or branch.shared_bn is not None:
        why = "after the branch's last BatchNorm; merges with the skip before the next BN (Guideline 1)"
    else:
        why = "in a residual branch with no BatchNorm; merges with the skip before the next BN"
    return _Placement(SiteKind.BRANCH_GUIDELINE, position, (), merge_name, why)


def _enters_residual_block(g: Graph, s: int, first_bn: int) -> bool:
    """The paper's P0: s sits on the trunk where a residual block starts, so its first BatchNorm is
    in the block's branch and the block's add also gets s through the skip (a path avoiding that BN)."""
    ahead = g.walk([first_bn], lambda i: g.kinds[i] in (ADD, CONCAT))
    return any(g.is_merge(i) and any(g.depends(j, s, avoid=first_bn) for j in g.data_operands(i)) for i in ahead)


def _is_bn_like(g: Graph, i: int) -> bool:
    return g.kinds[i] == BN or _opaque_bn(g, i)


def _opaque_bn(g: Graph, i: int) -> bool:
    if g.kinds[i] != OPAQUE:
        return g.kinds[i] == BN
    region = g.opaque_by_module.get(str(g.nodes[i].target))
    return bool(region and region.batchnorms)


# --- sites ---------------------------------------------------------------------------------------

def find_sites(capture: Capture) -> Analysis:
    """Every dropout site with its kind and paper position; stochastic depth; notes for the report."""
    g = Graph(capture)
    live_in_eval = {(owner, op, k) for owner, op, k, _ in capture.eval_live_dropouts}
    sites: list[Site] = []
    stochastic: list[StochasticDepthSite] = []
    ids = _IdMaker()
    for i, n in enumerate(g.nodes):
        kind = g.kinds[i]
        if kind == DROPOUT:
            sites.append(_site_for(g, i, n, ids, live_in_eval))
        elif kind == OPAQUE:
            sites.extend(_opaque_sites(g, i, g.opaque_by_module[str(n.target)], ids, capture))
        elif kind == STOCHASTIC:
            stochastic.append(_stochastic_site(g, i, n, ids))
    sites.extend(_unused_sites(g, capture, sites))
    notes = []
    if not g.has_bn:
        notes.append("no BatchNorm in this model: DC001 cannot fire (LayerNorm/GroupNorm keep no running "
                     "statistics, so dropout causes no variance shift there)")
    return Analysis(sites=sites, stochastic_depth=stochastic, has_batchnorm=g.has_bn,
                    notes=notes + _opaque_notes(capture.opaque) + list(capture.notes))


def _opaque_notes(regions: list[OpaqueRegion]) -> list[str]:
    """One note per kind of opaque leaf, not one per instance."""
    groups: dict[tuple[str, str], list[OpaqueRegion]] = {}
    for region in regions:
        groups.setdefault((region.type, region.reason), []).append(region)
    notes = []
    for (typ, reason), group in groups.items():
        names = ", ".join(r.module for r in group[:3]) + (", ..." if len(group) > 3 else "")
        if reason == "torch.nn leaf":
            notes.append(f"{len(group)} {typ} module(s) are fx leaves ({names}): their attention dropout is "
                         "reported at their output")
        else:
            notes.append(f"{len(group)} {typ} module(s) could not be traced on their own ({reason}): their "
                         f"dropouts are listed without a verdict, and a dropout reaching one that holds "
                         f"BatchNorm counts as reaching that BatchNorm ({names})")
    return notes


class _IdMaker:
    """Site ids: a module's qualname (qualname@2 for a second call); owner/function_N for functional ones."""

    def __init__(self) -> None:
        self.used: dict[str, int] = {}

    def module(self, qual: str) -> str:
        count = self.used.get(qual, 0)
        self.used[qual] = count + 1
        return qual if count == 0 else f"{qual}@{count + 1}"

    def functional(self, owner: str, fn: str) -> tuple[str, int]:
        """The id, and which call of `fn` within `owner` this is (0 for the first)."""
        key = f"{owner}/{fn}"
        count = self.used.get(key, 0)
        self.used[key] = count + 1
        return (key if count == 0 else f"{key}_{count}"), count


def _site_for(g: Graph, i: int, n: FlowNode, ids: _IdMaker, live_in_eval: set) -> Site:
    if n.op == "call_module":
        qual = str(n.target)
        p = ops.module_p(n.module)
        site_id, module, op, active, always_on = ids.module(qual), qual, type(n.module).__name__, p > 0, False
        source = n.source or g.capture.declared.get(qual)
        declared = g.capture.declared.get(qual)
    else:
        fn_name = getattr(n.target, "__name__", str(n.target))
        p, training = ops.function_p_and_training(n.target, n.args, n.kwargs)
        (site_id, occurrence), module, op = ids.functional(n.owner, fn_name), n.owner, fn_name
        active = p > 0 and training
        always_on = active and (n.owner, fn_name, occurrence) in live_in_eval
        source, declared = n.source, None
    placement = _place(g, i)
    return Site(id=site_id, module=module, op=op, p=p, site=placement.site, paper_position=placement.position,
                active=active, always_on=always_on, reaches=placement.reaches, merge=placement.merge,
                why=placement.why if active else f"inactive (p={p:g}); " + placement.why,
                source=source, declared=declared, node=n.name)


def _opaque_sites(g: Graph, i: int, region: OpaqueRegion, ids: _IdMaker, capture: Capture) -> list[Site]:
    """Dropouts hidden in an untraceable leaf.

    torch's MultiheadAttention drops attention weights just before its output projection, so its
    output, with that projection between, is a fair place for that site. Anywhere else the position
    inside is unknown: the site is listed as `other`, with no verdict, rather than guessed.
    """
    attention = region.reason == "torch.nn leaf"
    placement = _place(g, i, weight_inside=True) if attention else None
    out = []
    for qual in region.dropouts:
        m = capture.root.get_submodule(qual)
        p = ops.module_p(m)
        source = capture.declared.get(qual) or g.nodes[i].source
        if placement is not None:
            out.append(Site(id=ids.module(qual), module=qual, op=type(m).__name__, p=p, site=placement.site,
                            active=p > 0, reaches=placement.reaches, merge=placement.merge, opaque=region.module,
                            why="attention dropout inside " + region.module + "; " + placement.why,
                            source=source, declared=capture.declared.get(qual)))
            continue
        out.append(Site(id=ids.module(qual), module=qual, op=type(m).__name__, p=p, site=SiteKind.OTHER,
                        active=p > 0, opaque=region.module,
                        why=f"inside {region.type} {region.module}, which fx cannot trace: position unknown",
                        source=source, declared=capture.declared.get(qual)))
    return out


def _stochastic_site(g: Graph, i: int, n: FlowNode, ids: _IdMaker) -> StochasticDepthSite:
    merge = g.first_merge_after(i)
    merge_name = g.display(merge) if merge is not None else None
    if n.op == "call_module":
        qual = str(n.target)
        return StochasticDepthSite(id=ids.module(qual), module=qual, op=type(n.module).__name__,
                                   p=ops.module_p(n.module), merge=merge_name,
                                   source=n.source or g.capture.declared.get(qual))
    fn = getattr(n.target, "__name__", str(n.target))
    p, _ = ops.function_p_and_training(n.target, n.args, n.kwargs)
    return StochasticDepthSite(id=ids.functional(n.owner, fn)[0], module=n.owner, op=fn, p=p,
                               merge=merge_name, source=n.source)


def _unused_sites(g: Graph, capture: Capture, sites: list[Site]) -> list[Site]:
    """Dropout modules with p > 0 that forward never calls (unless an attention kernel takes their p)."""
    called = {str(n.target) for n in g.nodes if n.op == "call_module"}
    hidden = [o.module + "." for o in capture.opaque]
    fused_ps = _fused_attention_ps(g)
    out = []
    for qual, m in capture.root.named_modules():
        if not qual or not ops.is_dropout_module(m) or qual in called:
            continue
        p = ops.module_p(m)
        if p <= 0 or any(qual.startswith(h) for h in hidden):
            continue
        parent = qual.rpartition(".")[0]
        if any(p in values for owner, values in fused_ps.items()
               if not parent or owner == parent or owner.startswith(parent + ".")):
            continue  # timm attention keeps attn_drop for its p and passes it to scaled_dot_product_attention
        out.append(Site(id=qual, module=qual, op=type(m).__name__, p=p, site=SiteKind.UNUSED,
                        active=False, why="declared but never called in forward",
                        source=capture.declared.get(qual), declared=capture.declared.get(qual)))
    return out


def _fused_attention_ps(g: Graph) -> dict[str, set[float]]:
    """The attention dropout p that fused kernels get (scaled_dot_product_attention's dropout_p, an
    nn.MultiheadAttention's dropout), by the module whose forward runs them. A functional F.dropout
    with the same p is not one: its p is its own, and a module beside it may still be forgotten."""
    found: dict[str, set[float]] = {}
    for n in g.nodes:
        if n.op == "call_function" and n.target in ops.ATTENTION_FUNCTIONS:
            found.setdefault(n.owner, set()).add(ops.function_p_and_training(n.target, n.args, n.kwargs)[0])
        elif n.op == "call_module" and ops.is_attention_module(n.module):  # held by its parent
            found.setdefault(str(n.target).rpartition(".")[0], set()).add(ops.module_p(n.module))
    return found
