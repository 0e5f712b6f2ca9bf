"""Where a dropout can go: the places of Guidelines 1 and 2 and, for a dropout with no residual merge
downstream, the nearest place after which no BatchNorm follows (Li et al., CVPR 2019).

A place is an edge producer -> consumer of the train graph (a `Point`). A moved dropout must affect
exactly the model outputs the original affected (`output_change`): a place before the global pool
of a model that returns its pooled features would drop those features too. Every graph fact comes
from the graph view (analysis.graph); plan.py decides which place each site takes.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..analysis.graph import BN, WEIGHT, Graph


@dataclass(frozen=True)
class Point:
    """Insert a dropout on the edge producer -> consumer (train-graph node names).

    An empty consumer means every user of the producer (the model output included) sees the dropout.
    """

    producer: str
    consumer: str
    owner: str  # module that will hold a new dropout
    label: str  # for people: "before stages.0.0.conv2"
    position: str | None  # P6, H4, or None (end of a ResNetV1 branch, a place downstream)
    merge: str = ""  # display name of the residual merge whose branch this is ("" outside a branch)
    after_pool: bool = False  # after the global pool, after the head's last BatchNorm (DC002 stays)


def holder(g: Graph, i: int) -> str:
    """The module whose forward makes node i: for a module call, the parent of the called module (a
    call_module node's owner is the called module itself, and a new dropout must not become a
    child of a BatchNorm or StochasticDepth)."""
    n = g.nodes[i]
    return str(n.target).rpartition(".")[0] if n.op == "call_module" else n.owner


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
        return Point(g.names[end], g.names[merge], holder(g, end) or g.nodes[merge].owner,
                     f"end of the branch merging at {g.display(merge)}", None, g.display(merge))
    w = chain[last_w]
    producer = g.main_input(w)
    if producer is None:
        return None
    up = g.upstream_layer(w)
    position = "P6" if up.layer == BN and up.act_between else ("P5" if up.layer == BN else None)
    return Point(g.names[producer], g.names[w], holder(g, w), f"before {g.display(w)}", position,
                 g.display(merge))


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


def affected_outputs(g: Graph, point: Point) -> frozenset[int]:
    """The model outputs a dropout at `point` reaches."""
    return g.outputs_from(g.index[point.consumer or point.producer])


def output_change(g: Graph, point: Point, outputs: frozenset[int]) -> str:
    """Why a dropout at `point` would not affect exactly `outputs` (the original's), or ""."""
    now = affected_outputs(g, point)
    extra, lost = sorted(now - outputs), sorted(outputs - now)
    if extra:
        return f"{point.label} it would also drop the returned {_names(g, extra)}"
    if lost:
        return f"{point.label} it would no longer drop the returned {_names(g, lost)}"
    return ""


def _names(g: Graph, nodes: list[int]) -> str:
    return ", ".join(g.display(i) for i in nodes)


def head_problem(g: Graph, point: Point, outputs: frozenset[int]) -> str:
    """Why Guideline 2's place does not do for a dropout that affects `outputs`, or ""."""
    pool = g.index[point.consumer]
    bns = g.batchnorms_from(pool)
    if bns:
        return f"{point.label} it still reaches BatchNorm {_names(g, bns)}"
    change = output_change(g, point, outputs)
    if change:
        return change
    bare = [o for o in sorted(g.outputs) if o in g.walk([pool], lambda i: g.kinds[i] == WEIGHT or g.is_merge_for(i, pool))
            and g.kinds[o] != WEIGHT]
    if bare:  # the model returns the pooled features: dropout there would drop them (DC003)
        return f"{point.label} it would drop the returned {_names(g, bare)}, with no weight layer in between"
    return ""


def downstream_point(g: Graph, s: int, outputs: frozenset[int]) -> tuple[Point | None, str]:
    """The nearest edge into a weight layer downstream of dropout s after which no BatchNorm follows
    before a residual merge, affecting exactly `outputs` (Li et al.: dropout after all BatchNorms).

    After the global pool only right after the head's last BatchNorm (and its activation): there
    DC002 stays, the lesser harm than a BatchNorm's variance shift. Else (None, why not).
    """
    down = g.walk([s], lambda i: False)
    reached: list[int] = []
    moved_outputs = ""
    for w in sorted(down):
        if w == s or g.kinds[w] != WEIGHT:
            continue
        producer = g.main_input(w)
        if producer is None or producer not in down:
            continue
        bns = g.batchnorms_from(w)
        if bns:
            reached.extend(b for b in bns if b not in reached)
            continue
        after_pool = w in g.post_pool
        if after_pool and g.upstream_layer(w).layer != BN:
            continue  # after the pool with no BatchNorm in between: DC002's H5 again, not a place
        point = Point(g.names[producer], g.names[w], holder(g, w), f"before {g.display(w)}", None,
                      after_pool=after_pool)
        change = output_change(g, point, outputs)
        if change:
            moved_outputs = moved_outputs or change
            continue
        return point, ""
    if moved_outputs:
        return None, moved_outputs
    if reached:
        last = g.display(max(reached))
        return None, (f"every place before a weight layer downstream reaches BatchNorm {_names(g, sorted(reached))}, "
                      f"and no weight layer follows {last}")
    if any(g.kinds[w] == WEIGHT for w in down if w != s):
        return None, ""  # the weight layers downstream are after the pool (H5): Guideline 2's place is all
    return None, "no weight layer follows it"
