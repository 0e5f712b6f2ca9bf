"""Reorder an `nn.Sequential(...)` literal: dropouts moved past other elements or taken out, and
the state_dict keys that this renames.

An element's keys are its index (`features.4.weight`), so moving a dropout past a layer with
parameters or buffers renames that layer's keys. That is done only when asked (`allow_renames`,
which `fix --checkpoint OLD --checkpoint-out NEW` gives: the checkpoint is converted with the
same renames); otherwise the edit is refused.
"""
from __future__ import annotations

from collections.abc import Sequence

import libcst as cst

from .source_declarations import (DROPOUT_MODULES, assignments, comma_keeping_comment, sequential_arguments,
                                  sequential_literal)
from .source_locate import CannotEdit, SourceIndex
from .source_requests import ReorderSequential
from .source_statements import replace_node

Move = tuple[int, "int | None", bool]


def sequential_order(size: int, moves: Sequence[Move]) -> list[int]:
    """The original indices in their new order: each moved element goes just after (or before) its
    anchor, one with no anchor is left out. An anchor that moves itself is refused."""
    moved = {index for index, _, _ in moves}
    if len(moved) != len(moves):
        raise CannotEdit("one element is moved twice")
    for index, anchor, _ in moves:
        if not 0 <= index < size or (anchor is not None and not 0 <= anchor < size):
            raise CannotEdit(f"the nn.Sequential has {size} elements; cannot move {index} next to {anchor}")
        if anchor in moved:
            raise CannotEdit(f"element {index} is to go next to element {anchor}, which moves too")
    order = [k for k in range(size) if k not in moved]
    for index, anchor, after in moves:
        if anchor is not None:
            order.insert(order.index(anchor) + (1 if after else 0), index)
    return order


def order_renames(has_state: Sequence[bool], order: Sequence[int]) -> dict[int, int]:
    """Old -> new index of every element with state whose index the new order changes (an element
    with state that the order leaves out is refused: only dropouts are taken out)."""
    left_out = [k for k in range(len(has_state)) if k not in order and has_state[k]]
    if left_out:
        raise CannotEdit(f"element {left_out[0]} holds parameters or buffers; only a dropout is taken out")
    return {old: new for new, old in enumerate(order) if has_state[old] and old != new}


def reorder_sequential(index: SourceIndex, request: ReorderSequential) -> cst.Module:
    method = index.find_method(request.cls, "__init__")
    self_name = index.self_name(method)
    where = f"{self_name}.{request.attribute}"
    literal = sequential_literal(index, [a.value for a in assignments(method, self_name, request.attribute)], where)
    arguments = sequential_arguments(index, literal, where)
    if len(request.has_state) != len(arguments):
        raise CannotEdit(f"{where} has {len(arguments)} elements in the source but {len(request.has_state)} "
                         "in the model")
    for moved, _, _ in request.moves:
        value = arguments[moved].value if 0 <= moved < len(arguments) else None
        if not (isinstance(value, cst.Call) and index.imported_names(value) & DROPOUT_MODULES):
            shown = f"`{index.code(value)}`" if value is not None else "missing"
            raise CannotEdit(f"{where}[{moved}] is {shown}, not a torch.nn dropout")
    order = sequential_order(len(arguments), request.moves)
    renames = order_renames(request.has_state, order)
    if renames and not request.allow_renames:
        keys = ", ".join(f"{request.attribute}.{a}.* -> {request.attribute}.{b}.*" for a, b in sorted(renames.items()))
        raise CannotEdit(f"this would rename state_dict keys ({keys}), so old checkpoints would not load")
    return replace_node(index, literal, literal.with_changes(args=_in_order(arguments, order)))


def _in_order(arguments: Sequence[cst.Arg], order: Sequence[int]) -> list[cst.Arg]:
    """The elements in `order`: position k keeps the punctuation and line break that position k had
    (the last position the list's own ending), each element the comment on its line."""
    placed = []
    for position, old in enumerate(order):
        element = arguments[old]
        slot = arguments[position] if position < len(order) - 1 else arguments[-1]
        placed.append(element.with_changes(comma=comma_keeping_comment(slot.comma, element.comma)))
    return placed
