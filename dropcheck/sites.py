"""Analyse the captured graph: dropout sites, BatchNorms, residual merges, global pools, the head.

Every question is a reachability question on the data-flow graph. A residual merge is
relative to a dropout: an add with an operand that carries data (descends from the
model input) and does not depend on that dropout. Concatenation is not a merge.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

from torch import nn

from . import ops
from .records import Analysis, Capture, FlowNode, OpaqueRegion, Site, SiteKind, StochasticDepthSite

# node kinds
BN, WEIGHT, ADD, CONCAT, POOL, ACT, SOFTMAX, DROPOUT, STOCHASTIC = (
    "bn", "weight", "add", "concat", "pool", "act", "softmax", "dropout", "stochastic")
INPUT, PARAM, OPAQUE, OTHER = "input", "param", "opaque", "other"
_CONCAT_FUNCTIONS = {__import__("torch").cat, __import__("torch").concat, __import__("torch").stack}
_MAX_BACK_STEPS = 64


@dataclass(frozen=True)
class _Upstream:
    layer: str  # BN, WEIGHT, or "" (branch start / anything else)
    act_between: bool


class _Graph:
    """Index-based view of the flow graph with one kind per node."""

    def __init__(self, capture: Capture) -> None:
        self.capture = capture
        self.names = list(capture.nodes)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.nodes: list[FlowNode] = [capture.nodes[n] for n in self.names]
        self.inputs = [[self.index[i] for i in n.inputs] for n in self.nodes]
        self.users = [[self.index[u] for u in n.users] for n in self.nodes]
        self.opaque_by_module = {o.module: o for o in capture.opaque}
        self.data = self._data_dependent()
        self.kinds = [self._kind(n) for n in self.nodes]
        self.outputs = {self.index[o] for o in capture.outputs if o in self.index}
        self.final_pools = self._final_pools()
        self.post_pool = self.walk(self.final_pools, lambda i: False)
        self.head_bns = {i for i, k in enumerate(self.kinds) if k == BN and self._feeds_final_pool(i)}
        self.has_bn = any(k == BN for k in self.kinds)

    # -- classification of single nodes --------------------------------------------------------

    def _kind(self, n: FlowNode) -> str:
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
                return DROPOUT if self._attention_p(n) > 0 else OTHER
            if ops.is_stochastic_depth_function(t):
                return STOCHASTIC
            if t in ops.BATCHNORM_FUNCTIONS:
                return BN if ops.is_batchnorm_call(t, n.args, n.kwargs) else OTHER
            if t in ops.WEIGHT_FUNCTIONS:
                return WEIGHT
            if t in ops.MATMUL_FUNCTIONS:
                return WEIGHT if self._has_param_operand(n) else OTHER
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
                return WEIGHT if self._has_param_operand(n) else OTHER
        return OTHER

    def _attention_p(self, n: FlowNode) -> float:
        return ops.function_p_and_training(n.target, n.args, n.kwargs)[0]

    def _has_param_operand(self, n: FlowNode) -> bool:
        """An operand computed from parameters alone (W, W.t(), ...), not from the data."""
        return any(not self.data[self.index[i]] for i in n.inputs)

    def _data_dependent(self) -> list[bool]:
        starts = [i for i, n in enumerate(self.nodes) if n.op == "placeholder"]
        seen = self.walk(starts, lambda i: False)
        return [i in seen for i in range(len(self.names))]

    # -- pools and the head --------------------------------------------------------------------

    def _spatial(self, i: int) -> bool:
        shape = self.nodes[i].shape
        if shape is None:
            return False
        # (N, C, spatial...) with room left to pool; for 3-D (tokens N, L, D or N, C, L) both must exceed 1
        return len(shape) >= 3 and _prod(shape[2:]) > 1 and (len(shape) > 3 or shape[1] > 1)

    def _final_pools(self) -> list[int]:
        """Global pools after which the data never becomes spatial again (not SE or norm statistics)."""
        found = []
        for i, k in enumerate(self.kinds):
            if k != POOL or not self._reduces_space(i):
                continue
            spatial_after = self.walk([i], lambda j: False, until=lambda j: self._spatial(j))
            if not any(self._spatial(j) for j in spatial_after if j != i):
                found.append(i)
        return found

    def _reduces_space(self, i: int) -> bool:
        out = self.nodes[i].shape
        ins = [self.nodes[j].shape for j in self.inputs[i] if self.data[j]]
        if not out or not ins or not ins[0]:
            return False
        before = ins[0]
        if not self._spatial(self.inputs[i][0]):
            return False
        return _prod(out[1:]) < _prod(before[1:]) and (len(out) <= 2 or _prod(out[2:]) == 1)

    def _feeds_final_pool(self, bn: int) -> bool:
        stop = {WEIGHT, BN, ADD, CONCAT}
        reached = self.walk([bn], lambda j: self.kinds[j] in stop and j != bn)
        return any(p in reached for p in self.final_pools)

    # -- walks ---------------------------------------------------------------------------------

    def walk(self, starts: Iterable[int], stop: Callable[[int], bool],
             until: Callable[[int], bool] | None = None) -> set[int]:
        """Nodes reachable from `starts` (included); a node where `stop` holds is visited, not expanded."""
        seen: set[int] = set()
        queue = deque(starts)
        while queue:
            i = queue.popleft()
            if i in seen:
                continue
            seen.add(i)
            if until is not None and until(i) and i not in starts:
                return seen
            if i not in starts and stop(i):
                continue
            queue.extend(u for u in self.users[i] if u not in seen)
        return seen

    def reaches_output(self, s: int, stop: Callable[[int], bool]) -> bool:
        """Some path from s to a model output meets no node where `stop` holds."""
        seen = self.walk([s], stop)
        return any(o in seen and (o == s or not stop(o)) for o in self.outputs)

    def depends(self, j: int, s: int, avoid: int | None = None) -> bool:
        """Does node j depend on node s (j == s counts)? Searches back from j, never above s.

        Nodes are in topological order, so only nodes after s can depend on it: the search stays
        local to the region between s and j, which keeps the analysis linear on long networks.
        `avoid` is a node the path may not pass through.
        """
        if j == s:
            return True
        seen = {j}
        stack = [j]
        while stack:
            k = stack.pop()
            for p in self.inputs[k]:
                if p == s:
                    return True
                if p > s and p != avoid and p not in seen:
                    seen.add(p)
                    stack.append(p)
        return False

    def is_merge_for(self, i: int, s: int) -> bool:
        """An add downstream of s with an operand that carries data and does not depend on s."""
        if self.kinds[i] != ADD or i <= s:
            return False
        operands = [j for j in self.inputs[i] if self.data[j]]
        return len(operands) >= 2 and any(not self.depends(j, s) for j in operands)

    def main_input(self, i: int) -> int | None:
        """The operand that carries the main signal: same shape as the output, else the largest."""
        operands = [j for j in self.inputs[i] if self.data[j]]
        if not operands:
            return None
        shape = self.nodes[i].shape
        same = [j for j in operands if self.nodes[j].shape == shape]
        if same:
            return same[0]
        return max(operands, key=lambda j: _prod(self.nodes[j].shape or (0,)))

    def upstream_layer(self, i: int, in_fork: Callable[[int], bool] = lambda j: False) -> _Upstream:
        """The nearest BN or weight layer upstream of node i along its main input, not crossing the fork."""
        act = False
        j = self.main_input(i)
        for _ in range(_MAX_BACK_STEPS):
            if j is None or in_fork(j):
                return _Upstream("", act)
            k = self.kinds[j]
            if k in (BN, WEIGHT):
                return _Upstream(k, act)
            if k in (ADD, CONCAT, POOL, INPUT, OPAQUE):
                return _Upstream("", act)
            act = act or k == ACT
            j = self.main_input(j)
        return _Upstream("", act)

    def display(self, i: int) -> str:
        """The name users know: a module's qualname, else owner/node."""
        n = self.nodes[i]
        if self.kinds[i] == OPAQUE:
            return f"{n.target} (opaque)"
        if n.op == "call_module":
            return str(n.target)
        base = n.name.rsplit("::", 1)[-1]
        return f"{n.owner}/{base}" if n.owner else f"/{base}"


def _prod(dims: Iterable[int]) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


# --- classifying one dropout ---------------------------------------------------------------------

@dataclass(frozen=True)
class _Placement:
    site: SiteKind
    position: str | None
    reaches: tuple[str, ...]
    merge: str | None
    why: str


def _place(g: _Graph, s: int) -> _Placement:
    is_merge = lambda i: g.is_merge_for(i, s)  # noqa: E731
    before_bn = g.walk([s], lambda i: _is_bn_like(g, i) or is_merge(i))
    reached = sorted(i for i in before_bn if i != s and _is_bn_like(g, i))
    to_merge = g.walk([s], is_merge)
    merges = sorted(i for i in to_merge if i != s and is_merge(i))
    merge = merges[0] if merges else None
    merge_name = g.display(merge) if merge is not None else None

    reaches = tuple(g.display(i) for i in reached)  # DC001 follows these, whatever the site kind
    on_predictions = g.reaches_output(s, lambda i: g.kinds[i] == WEIGHT or is_merge(i))
    if on_predictions:
        return _logits(g, s, merge_name, reaches, after_pool=s in g.post_pool)
    if s in g.post_pool:
        return _Placement(SiteKind.HEAD_POST_GAP, "H5", reaches, merge_name,
                          "after global pooling: it masks whole channels (Prop. 5)")
    if reached:
        if all(i in g.head_bns for i in reached) and not merges:
            via_weight = g.walk([s], lambda i: g.kinds[i] in (BN, WEIGHT) or is_merge(i))
            position = "H1" if any(g.kinds[i] == WEIGHT for i in via_weight if i != s) else "H2"
            return _Placement(SiteKind.HEAD_PRE_BN, position, reaches, None,
                              f"reaches the head's BatchNorm {reaches[0]} (variance shift)")
        if merge is not None:
            branch = _Branch(g, s, merge)
            kind = SiteKind.OTHER if branch.on_skip else SiteKind.BRANCH_PRE_BN
            return _Placement(kind, branch.position(pre_bn=True), reaches, merge_name,
                              f"reaches BatchNorm {reaches[0]} before the residual merge")
        position = "P0" if _enters_residual_block(g, s, reached[0]) else None
        return _Placement(SiteKind.TRUNK_PRE_BN, position, reaches, None,
                          f"reaches BatchNorm {reaches[0]} with no residual merge in between")

    clean = g.walk([s], lambda i: g.kinds[i] in (WEIGHT, BN, CONCAT) or is_merge(i))
    if any(p in clean for p in g.final_pools):
        up = g.upstream_layer(s)
        position = "H3" if up.layer == BN and not up.act_between else "H4"
        return _Placement(SiteKind.HEAD_PRE_GAP, position, (), None,
                          "before global pooling, after the head's last BatchNorm (Guideline 2)")
    if not g.has_bn:
        return _Placement(SiteKind.OTHER, None, (), merge_name, "the model has no BatchNorm")
    if merge is not None:
        return _branch_placement(g, s, merge, merge_name)
    # no merge stopped the walk, so before_bn holds everything downstream of s
    return _Placement(SiteKind.OTHER, None, (), None, "no BatchNorm downstream")


def _logits(g: _Graph, s: int, merge_name: str | None, reaches: tuple[str, ...], after_pool: bool) -> _Placement:
    back = _walk_back(g, s, stop=lambda i: g.kinds[i] == WEIGHT)
    position = "H7" if any(g.kinds[i] == SOFTMAX for i in back) else ("H6" if after_pool else None)
    return _Placement(SiteKind.HEAD_LOGITS, position, reaches, merge_name,
                      "no weight layer between it and the model's output: it drops predictions")


def _walk_back(g: _Graph, s: int, stop: Callable[[int], bool]) -> set[int]:
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


class _Branch:
    """The residual branch that holds dropout s and ends at `merge`.

    The skip is the merge's operand that does not depend on s; the fork is where the branch
    leaves the skip's ancestry. Answered with local searches only.
    """

    def __init__(self, g: _Graph, s: int, merge: int) -> None:
        self.g, self.s, self.merge = g, s, merge
        operands = [j for j in g.inputs[merge] if g.data[j]]
        self.skip = next((j for j in operands if not g.depends(j, s)), None)
        self.side = next((j for j in operands if g.depends(j, s)), None)
        self.chain = self._chain()  # merge side back to the fork along main inputs
        self.on_skip = not any(g.kinds[i] == WEIGHT for i in self.chain)

    def in_fork(self, j: int) -> bool:
        return self.skip is not None and self.g.depends(self.skip, j)

    def _chain(self) -> list[int]:
        chain, j = [], self.side
        for _ in range(_MAX_BACK_STEPS * 4):
            if j is None or self.in_fork(j):
                break
            chain.append(j)
            j = self.g.main_input(j)
        return chain

    def weight_after_s(self) -> bool:
        """A weight layer on the main chain between s and the merge (SE gates are side paths)."""
        if self.s in self.chain:
            return any(self.g.kinds[i] == WEIGHT for i in self.chain[:self.chain.index(self.s)])
        after = self.g.walk([self.s], lambda i: self.g.kinds[i] == WEIGHT or i == self.merge)
        return any(self.g.kinds[i] == WEIGHT for i in after if i != self.s)

    def preactivation(self) -> bool:
        """The branch's first layer after the fork is a BatchNorm (the paper's Figure 2)."""
        layers = [i for i in self.chain if self.g.kinds[i] in (BN, WEIGHT)]
        return bool(layers) and self.g.kinds[layers[-1]] == BN

    def position(self, pre_bn: bool) -> str | None:
        """P1..P7 where the branch is a pre-activation one."""
        if self.on_skip or not self.preactivation():
            return None
        up = self.g.upstream_layer(self.s, self.in_fork)
        if pre_bn:
            if up.layer == "":
                return "P1"
            if up.layer == BN:
                return "P3" if up.act_between else "P2"
            return "P4"
        if up.layer == BN:
            return "P6" if up.act_between else "P5"
        if up.layer == WEIGHT and not self.weight_after_s():
            return "P7"
        return None


def _branch_placement(g: _Graph, s: int, merge: int, merge_name: str | None) -> _Placement:
    branch = _Branch(g, s, merge)
    if branch.on_skip:
        return _Placement(SiteKind.OTHER, None, (), merge_name,
                          "on the skip connection: Guideline 1 puts dropout inside the residual branch")
    up = g.upstream_layer(s, branch.in_fork)
    position = branch.position(pre_bn=False)
    if not branch.weight_after_s() and up.layer == WEIGHT:
        return _Placement(SiteKind.BRANCH_POST_WEIGHT, position, (), merge_name,
                          "after the branch's last weight layer (PostDropout, Prop. 2)")
    return _Placement(SiteKind.BRANCH_GUIDELINE, position, (), merge_name,
                      "after the branch's last BatchNorm; merges with the skip before the next BN (Guideline 1)")


def _enters_residual_block(g: _Graph, s: int, first_bn: int) -> bool:
    """The paper's P0: s sits on the trunk where a residual block starts, so its first BatchNorm is
    in the block's branch and the block's add also gets s through the skip (a path avoiding that BN)."""
    ahead = g.walk([first_bn], lambda i: g.kinds[i] in (ADD, CONCAT))
    for i in ahead:
        if g.kinds[i] != ADD:
            continue
        operands = [j for j in g.inputs[i] if g.data[j]]
        if len(operands) >= 2 and any(g.depends(j, s, avoid=first_bn) for j in operands):
            return True
    return False


def _is_bn_like(g: _Graph, i: int) -> bool:
    return g.kinds[i] == BN or _opaque_bn(g, i)


def _opaque_bn(g: _Graph, i: int) -> bool:
    if g.kinds[i] != OPAQUE:
        return g.kinds[i] == BN
    region = g.opaque_by_module.get(str(g.nodes[i].target))
    return bool(region and region.batchnorms)


# --- sites ---------------------------------------------------------------------------------------

def find_sites(capture: Capture) -> Analysis:
    """Every dropout site with its kind and paper position; stochastic depth; notes for the report."""
    g = _Graph(capture)
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


def _site_for(g: _Graph, i: int, n: FlowNode, ids: _IdMaker, live_in_eval: set) -> Site:
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
                source=source, declared=declared)


def _opaque_sites(g: _Graph, i: int, region: OpaqueRegion, ids: _IdMaker, capture: Capture) -> list[Site]:
    """Dropouts hidden in an untraceable leaf.

    torch's MultiheadAttention drops attention weights just before its output projection, so its
    output is a fair place for that site. Anywhere else the position inside is unknown: the site
    is listed as `other`, with no verdict, rather than guessed.
    """
    attention = region.reason == "torch.nn leaf"
    placement = _place(g, i) if attention else None
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


def _stochastic_site(g: _Graph, i: int, n: FlowNode, ids: _IdMaker) -> StochasticDepthSite:
    to_merge = g.walk([i], lambda j: g.is_merge_for(j, i))
    merges = sorted(j for j in to_merge if j != i and g.is_merge_for(j, i))
    if n.op == "call_module":
        qual = str(n.target)
        return StochasticDepthSite(id=ids.module(qual), module=qual, op=type(n.module).__name__,
                                   p=ops.module_p(n.module), merge=g.display(merges[0]) if merges else None,
                                   source=n.source or g.capture.declared.get(qual))
    fn = getattr(n.target, "__name__", str(n.target))
    p, _ = ops.function_p_and_training(n.target, n.args, n.kwargs)
    return StochasticDepthSite(id=ids.functional(n.owner, fn)[0], module=n.owner, op=fn, p=p,
                               merge=g.display(merges[0]) if merges else None, source=n.source)


def _unused_sites(g: _Graph, capture: Capture, sites: list[Site]) -> list[Site]:
    """Dropout modules with p > 0 that forward never calls (and whose p is not used elsewhere)."""
    called = {str(n.target) for n in g.nodes if n.op == "call_module"}
    hidden = [o.module + "." for o in capture.opaque]
    used_ps = _constants_by_owner(g)
    out = []
    for qual, m in capture.root.named_modules():
        if not qual or not ops.is_dropout_module(m) or qual in called:
            continue
        p = ops.module_p(m)
        if p <= 0 or any(qual.startswith(h) for h in hidden):
            continue
        parent = qual.rpartition(".")[0]
        if any(p in values for owner, values in used_ps.items() if owner == parent or owner.startswith(parent + ".")):
            continue  # e.g. timm attention passes attn_drop.p to scaled_dot_product_attention
        out.append(Site(id=qual, module=qual, op=type(m).__name__, p=p, site=SiteKind.UNUSED,
                        active=False, why="declared but never called in forward",
                        source=capture.declared.get(qual), declared=capture.declared.get(qual)))
    return out


def _constants_by_owner(g: _Graph) -> dict[str, set[float]]:
    """Drop probabilities passed to functional dropout and attention, by the owner that passes them."""
    found: dict[str, set[float]] = {}
    for n in g.nodes:
        if n.op == "call_function" and (ops.is_dropout_function(n.target) or n.target in ops.ATTENTION_FUNCTIONS):
            p, _ = ops.function_p_and_training(n.target, n.args, n.kwargs)
            found.setdefault(n.owner, set()).add(p)
    return found
