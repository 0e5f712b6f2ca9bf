"""What a source patch does to a model's numbers: the p it writes, and the state_dict keys it renames.

A dropout's p is written where the plan changes it (`--p`, or the largest p of several movers that
settle on one dropout), but one declaration serves every instance of its class: it is edited only
when all of them want the same p; otherwise the p stays as written and a note says so.

Reordering an nn.Sequential literal renames the keys of the elements with state that change index.
`key_map` lists them per instance (old key -> new key, only keys that change), which is what a
checkpoint is converted with and what the fresh-process check loads the original's state_dict
through.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace

from torch import nn

from ..records import SourceNote
from .source_requests import ReorderSequential, SetDropoutP
from .source_sequential import order_renames, sequential_order

CHECKPOINT_HINT = ("--checkpoint old.pt --checkpoint-out new.pt would allow it: the keys are renamed and your "
                   "checkpoint converted; or write the fixed model with -o OUT")


@dataclass(frozen=True)
class PEdit:
    """One instance's wish for a dropout's p, as a request on its class."""

    cls: type
    instance: str  # the instance of `cls` whose declaration or call it is
    request: SetDropoutP
    site: str
    module: str  # the dropout's module (a functional one: the module whose forward calls it) after the fix
    sequential: str | None = None  # the nn.Sequential holding it, whose reorder moves its index


def even_p_edits(root: nn.Module, edits: Iterable[PEdit]) -> tuple[list[PEdit], list[SourceNote]]:
    """The p edits every instance of the class agrees on, and a note for each of the others."""
    groups: dict[tuple[type, SetDropoutP], list[PEdit]] = defaultdict(list)
    for edit in edits:
        groups[(edit.cls, replace(edit.request, p=0.0))].append(edit)
    kept, notes = [], []
    for (cls, _), group in groups.items():
        wanted = {edit.instance: edit.request.p for edit in group}
        instances = [name for name, m in root.named_modules() if type(m) is cls]
        if set(wanted) == set(instances) and len(set(wanted.values())) == 1:
            kept.extend(group)
            continue
        shown = ", ".join(f"{wanted[name]:g} at {name or 'the model'}" if name in wanted else
                          f"as written at {name or 'the model'}" for name in instances[:4])
        for edit in group:
            notes.append(SourceNote(edit.site, f"p stays as written: {cls.__name__} serves {len(instances)} "
                                    f"instances that want different p ({shown}); the fix wants "
                                    f"p={edit.request.p:g} here"))
    return kept, notes


def merge_reorders(first: ReorderSequential, second: ReorderSequential) -> ReorderSequential:
    """One request holding the moves of both (on one Sequential literal)."""
    return replace(first, moves=first.moves + tuple(m for m in second.moves if m not in first.moves))


def new_index(request: ReorderSequential | None, index: int) -> int:
    """Where element `index` of the literal is once `request` (if any) is applied."""
    if request is None:
        return index
    return sequential_order(len(request.has_state), request.moves).index(index)


def key_map(state_keys: Iterable[str], sequentials: Iterable[tuple[str, ReorderSequential]]) -> dict[str, str]:
    """Old -> new state_dict key, for the keys the reorders rename. `sequentials` pairs each
    Sequential's qualname in the model with the (merged) request that reorders it."""
    renames_at = {}
    for qualname, request in sequentials:
        renames = order_renames(request.has_state, sequential_order(len(request.has_state), request.moves))
        if renames:
            renames_at[qualname] = renames
    mapping = {}
    for key in state_keys:
        for qualname, renames in renames_at.items():
            prefix = f"{qualname}." if qualname else ""
            head, _, tail = key[len(prefix):].partition(".")
            if key.startswith(prefix) and head.isdigit() and int(head) in renames:
                mapping[key] = f"{prefix}{renames[int(head)]}.{tail}"
    return mapping
