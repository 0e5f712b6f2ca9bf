"""An index-based view of the flow graph: one kind per node, global pools, local dependence tests.

The graph facts every stage reads are worked out here, once: the residual merges (adds with two
data operands), the first merge after a dropout, a merge's residual branch, the branch that holds
a dropout (`Branch`). Sites classify with them, fix places dropout with them, measure taps the
merges, train-compare sweeps the branches. Nodes are in topological order, which keeps every
"does this depend on that" question local.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Iterable, Sequence

from ..records import Capture, FlowNode
from .node_kinds import (ACT, ADD, BN, CONCAT, DROPOUT, INPUT, OPAQUE, OTHER, PARAM, POOL, SOFTMAX, STOCHASTIC,
                         WEIGHT, node_kinds)

__all__ = ["ACT", "ADD", "BN", "CONCAT", "DROPOUT", "INPUT", "OPAQUE", "OTHER", "PARAM", "POOL", "SOFTMAX",
           "STOCHASTIC", "WEIGHT", "MAX_BACK_STEPS", "Branch", "Graph", "Upstream"]

MAX_BACK_STEPS = 64


@dataclass(frozen=True)
class Upstream:
    layer: str  # BN, WEIGHT, or "" (branch start / anything else)
    act_between: bool


class Graph:
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
        self.kinds = node_kinds(self.nodes, self.index, self.inputs, self.users, self.data, self.opaque_by_module)
        self.outputs = {self.index[o] for o in capture.outputs if o in self.index}
        self.final_pools = self._final_pools()
        self.post_pool = self.walk(self.final_pools, lambda i: False)
        self.head_bns = {i for i, k in enumerate(self.kinds) if k == BN and self._feeds_final_pool(i)}
        self.has_bn = any(k == BN for k in self.kinds)
        self._first_merges: dict[int, int | None] = {}
        self._branch_chains: dict[int, list[int] | None] = {}

    # -- classification of single nodes --------------------------------------------------------

    def _data_dependent(self) -> list[bool]:
        starts = [i for i, n in enumerate(self.nodes) if n.op == "placeholder"]
        seen = self.walk(starts, lambda i: False)
        return [i in seen for i in range(len(self.names))]

    # -- pools and the head --------------------------------------------------------------------

    def _spatial(self, i: int) -> bool:
        shape = self.nodes[i].shape
        if shape is None:
            return False
        # room left to pool: two or more non-batch dims above 1 ((N, C, H, W), tokens (N, L, D)). Counting
        # dims keeps a pooled (N, C, 1, 1) pooled when it is permuted to (N, 1, 1, C) for a channels-last
        # LayerNorm, as timm's ConvNeXt and MaxViT heads do
        return len(shape) >= 3 and _extent(shape) >= 2

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
        ins = [self.nodes[j].shape for j in self.data_operands(i)]
        if not out or not ins or not ins[0]:
            return False
        before = ins[0]
        if not self._spatial(self.inputs[i][0]):
            return False
        return _prod(out[1:]) < _prod(before[1:]) and _extent(out) <= 1  # (N, C), (N, C, 1, 1), (N, 1, 1, C)

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

    # -- residual merges and branches ----------------------------------------------------------

    def data_operands(self, i: int) -> list[int]:
        """The inputs of node i that carry data (descend from a model input), in argument order."""
        return [j for j in self.inputs[i] if self.data[j]]

    @cached_property
    def merges(self) -> list[int]:
        """Adds with two data operands, in graph order: where a residual branch can end."""
        return [i for i, k in enumerate(self.kinds) if k == ADD and len(self.data_operands(i)) >= 2]

    @cached_property
    def _merge_set(self) -> frozenset[int]:
        return frozenset(self.merges)

    def is_merge(self, i: int) -> bool:
        return i in self._merge_set

    def is_merge_for(self, i: int, s: int) -> bool:
        """A merge downstream of s with a data operand that does not depend on s."""
        return i > s and self.is_merge(i) and any(not self.depends(j, s) for j in self.data_operands(i))

    def first_merge_after(self, s: int) -> int | None:
        """The merge that ends s's residual branch: the first merge for s that a path from s meets."""
        if s not in self._first_merges:
            reached = self.walk([s], lambda i: self.is_merge_for(i, s))
            self._first_merges[s] = min((i for i in reached if i != s and self.is_merge_for(i, s)), default=None)
        return self._first_merges[s]

    def branch_of(self, s: int) -> Branch | None:
        """The residual branch that holds s and ends at its first merge, if one does."""
        merge = self.first_merge_after(s)
        return Branch(self, s, merge) if merge is not None else None

    def back_to_fork(self, start: int | None, others: Sequence[int]) -> list[int]:
        """From `start` back along main inputs, up to (not including) the first node one of `others`
        depends on: the fork where a merge operand's path leaves the other operands' ancestry."""
        chain, j = [], start
        for _ in range(MAX_BACK_STEPS * 4):
            if j is None or any(self.depends(o, j) for o in others):
                break
            chain.append(j)
            j = self.main_input(j)
        return chain

    def branch_chain(self, merge: int) -> list[int] | None:
        """The residual branch that ends at `merge`: of its data operands the one with the most weight
        layers (then the longest), as its nodes from the merge back to the fork. None for no merge."""
        if merge not in self._branch_chains:
            operands = self.data_operands(merge)
            chains = [self.back_to_fork(j, [o for o in operands if o != j]) for j in operands]
            weights_then_length = lambda c: (sum(self.kinds[i] == WEIGHT for i in c), len(c))  # noqa: E731
            # max keeps the first of equals: ties go to the earlier operand
            self._branch_chains[merge] = max(chains, key=weights_then_length) if len(operands) >= 2 else None
        return self._branch_chains[merge]

    def main_input(self, i: int) -> int | None:
        """The operand that carries the main signal: same shape as the output, else the largest."""
        operands = self.data_operands(i)
        if not operands:
            return None
        shape = self.nodes[i].shape
        same = [j for j in operands if self.nodes[j].shape == shape]
        if same:
            return same[0]
        return max(operands, key=lambda j: _prod(self.nodes[j].shape or (0,)))

    def upstream_layer(self, i: int, in_fork: Callable[[int], bool] = lambda j: False) -> Upstream:
        """The nearest BN or weight layer upstream of node i along its main input, not crossing the fork."""
        act = False
        j = self.main_input(i)
        for _ in range(MAX_BACK_STEPS):
            if j is None or in_fork(j):
                return Upstream("", act)
            k = self.kinds[j]
            if k in (BN, WEIGHT):
                return Upstream(k, act)
            if k in (ADD, CONCAT, POOL, INPUT, OPAQUE):
                return Upstream("", act)
            act = act or k == ACT
            j = self.main_input(j)
        return Upstream("", act)

    def outputs_from(self, i: int) -> frozenset[int]:
        """The model outputs that depend on node i (i itself, if it is one)."""
        seen = self.walk([i], lambda j: False)
        return frozenset(o for o in self.outputs if o in seen)

    def batchnorms_from(self, i: int) -> list[int]:
        """The BatchNorms (an opaque module holding one counts) a path from node i meets before a
        residual merge for i: what a dropout placed right before node i would reach (DC001)."""
        reached = self.walk([i], lambda j: self.is_batchnorm_like(j) or self.is_merge_for(j, i))
        return sorted(j for j in reached if j != i and self.is_batchnorm_like(j))

    def is_batchnorm_like(self, i: int) -> bool:
        if self.kinds[i] == OPAQUE:
            region = self.opaque_by_module.get(str(self.nodes[i].target))
            return bool(region and region.batchnorms)
        return self.kinds[i] == BN

    def display(self, i: int) -> str:
        """The name users know: a module's qualname, else owner/node."""
        n = self.nodes[i]
        if self.kinds[i] == OPAQUE:
            return f"{n.target} (opaque)"
        if n.op == "call_module":
            return str(n.target)
        base = n.name.rsplit("::", 1)[-1]
        return f"{n.owner}/{base}" if n.owner else f"/{base}"


def _extent(shape: tuple[int, ...]) -> int:
    """How many non-batch dims hold more than one element."""
    return sum(1 for d in shape[1:] if d > 1)


def _prod(dims: Iterable[int]) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


class Branch:
    """The residual branch that holds dropout s and ends at `merge`.

    The skip is the merge's operand that does not depend on s; the fork is where the branch
    leaves the skip's ancestry. Answered with local searches only.
    """

    def __init__(self, g: Graph, s: int, merge: int) -> None:
        self.g, self.s, self.merge = g, s, merge
        operands = g.data_operands(merge)
        self.skip = next((j for j in operands if not g.depends(j, s)), None)
        self.side = next((j for j in operands if g.depends(j, s)), None)
        # merge side back to the fork along main inputs
        self.chain = g.back_to_fork(self.side, [self.skip] if self.skip is not None else [])
        self.on_skip = not any(g.kinds[i] == WEIGHT for i in self.chain)
        self.shared_bn = self._shared_preactivation()

    def in_fork(self, j: int) -> bool:
        """At or above the fork (the skip depends on j), short of a BN–ReLU shared with a projection skip."""
        return self.skip is not None and (self.shared_bn is None or j < self.shared_bn) and self.g.depends(self.skip, j)

    def _shared_preactivation(self) -> int | None:
        """The BN of a pre-activation block's first BN–ReLU where it runs before the fork, feeding the
        branch and a 1x1 conv on the skip (WideResNet, PreResNet): it counts as the branch's start."""
        g, layers = self.g, [i for i in self.chain if self.g.kinds[i] in (BN, WEIGHT)]
        if self.skip is None or not layers or g.kinds[layers[-1]] != WEIGHT or g.kinds[layers[0]] != WEIGHT:
            return None  # starts with its own BN, or ends in BN (ResNetV1)
        projection = g.back_to_fork(self.skip, [self.side] if self.side is not None else [])
        j = g.main_input(self.chain[-1])
        while j is not None and g.kinds[j] in (ACT, OTHER):
            j = g.main_input(j)
        return j if j is not None and g.kinds[j] == BN and any(g.kinds[i] == WEIGHT for i in projection) else None

    def weight_after_s(self) -> bool:
        """A weight layer on the main chain between s and the merge (SE gates are side paths)."""
        if self.s in self.chain:
            return any(self.g.kinds[i] == WEIGHT for i in self.chain[:self.chain.index(self.s)])
        after = self.g.walk([self.s], lambda i: self.g.kinds[i] == WEIGHT or i == self.merge)
        return any(self.g.kinds[i] == WEIGHT for i in after if i != self.s)

    def preactivation(self) -> bool:
        """The branch's first layer after the fork is a BatchNorm (the paper's Figure 2), or shared_bn."""
        layers = [i for i in self.chain if self.g.kinds[i] in (BN, WEIGHT)]
        return bool(layers) and (self.g.kinds[layers[-1]] == BN or self.shared_bn is not None)

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
