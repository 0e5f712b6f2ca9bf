"""Edit requests for a user's source file, said in source terms, and what became of each.

A request names a class and, inside it, a call (`CallSite`) or an attribute assigned in
`__init__`; never an fx node, so the fix plan maps its site ids onto these once and the source
layer needs no torch. Every request either applies or comes back with the reason it does not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

Side = Literal["before", "after"]
Style = Literal["auto", "wrap", "statement"]


@dataclass(frozen=True)
class CallSite:
    """A call inside `cls.method`.

    `callee` is written one of three ways: `self.drop` or `self.block.conv2` (a submodule of the
    instance; `self` stands for the method's first parameter), a function's qualified name
    `torch.nn.functional.dropout` (matched whatever the file imports it as: `F.dropout`,
    `nn.functional.dropout`, ...) or its name as written (`F.dropout`), or `.mean` (a tensor
    method, `x.mean(...)`).
    `line` keeps the calls whose text spans that line (what an fx node's stack trace says);
    `occurrence` then counts the remaining matches in source order from 0; with neither, the
    callee must be called exactly once in the method.
    """

    cls: str
    callee: str
    method: str = "forward"
    occurrence: int | None = None
    line: int | None = None

    def __str__(self) -> str:
        which = [f"line {self.line}"] if self.line is not None else []
        which += [f"occurrence {self.occurrence}"] if self.occurrence is not None else []
        return f"{self.callee}(...) in {self.cls}.{self.method}" + (f" ({', '.join(which)})" if which else "")


@dataclass(frozen=True)
class RemoveDropout:
    """Take a dropout call out: `out = self.drop(out)` goes, `self.conv2(self.drop(x))` becomes
    `self.conv2(x)`, `y = F.dropout(x, p, training=self.training)` becomes `y = x`."""

    call: CallSite


@dataclass(frozen=True)
class RemoveDeclaration:
    """Take out `self.<attribute> = nn.Dropout(...)` from `cls.__init__` once nothing in the class uses
    `self.<attribute>` any more (a dropout module holds no state: no state_dict key changes). A tidy-up:
    where it is not safe (still used, several assignments, not a torch.nn dropout, shared line) it
    leaves the file as it is rather than refusing."""

    cls: str
    attribute: str


@dataclass(frozen=True)
class ApplyDropout:
    """Call a dropout on the input of the call at `at` (side "before") or on its result ("after").

    The new call is `{dropout}(<input>, {arguments})`, e.g. dropout="self.drop", or
    dropout="F.dropout" with arguments="p=self.droprate, training=self.training". Style "wrap"
    edits the expression (`self.conv2(self.drop(out))`), "statement" inserts `out = self.drop(out)`
    on a line of its own, "auto" takes a statement where one is safe and wraps otherwise.
    """

    at: CallSite
    dropout: str = "self.drop"
    arguments: str = ""
    side: Side = "before"
    style: Style = "auto"


@dataclass(frozen=True)
class MoveDropout:
    """Remove the dropout call at `call` and apply the same call (same callee and arguments) at `to`,
    both or neither. "auto" keeps the form it had: a statement stays a statement where that is safe.
    A dropout guarded by `if self.<flag>...:` moves with its guard. `elementwise` turns a channel-wise
    functional dropout (`F.dropout2d`) into `F.dropout` on the way (Guideline 2, before the pool);
    a dropout module changes where it is declared, so pair its move with MakeElementwise in AllOf."""

    call: CallSite
    to: CallSite
    side: Side = "before"
    style: Style = "auto"
    elementwise: bool = False


@dataclass(frozen=True)
class DeclareDropout:
    """Add `self.<attribute> = nn.<kind>(p=<p>)` to `cls.__init__`, after the statement that assigns
    `self.<after>` (at the end of `__init__` when None). `p` is a number or source text
    (`"drop_rate"`). torch.nn is written as the file writes it; an import is added when none exists."""

    cls: str
    attribute: str
    p: float | str
    after: str | None = None
    kind: str = "Dropout"


@dataclass(frozen=True)
class GateOnTraining:
    """Make a functional dropout follow train()/eval(): `F.dropout(x, p)` gains
    `training=self.training`; an explicit `training=True` (or a positional flag) is replaced."""

    call: CallSite


@dataclass(frozen=True)
class MakeElementwise:
    """Turn a channel-wise dropout declaration into an element-wise one: `nn.Dropout2d(p)` becomes
    `nn.Dropout(p)` (FeatureAlphaDropout becomes AlphaDropout). The declaration is the value of
    `self.<attribute> = ...` in `__init__`, or element `element` of the nn.Sequential literal there."""

    cls: str
    attribute: str
    element: int | None = None


@dataclass(frozen=True)
class MoveInSequential:
    """Move the dropout at position `index` of the nn.Sequential literal assigned to `self.<attribute>`
    so that it ends at position `to_index`. Refused when a neighbour it passes holds parameters or
    buffers, since their index-based state_dict keys (`features.3.weight`) would change.
    `has_state[i]` says whether element i holds state (from the live model); None reads it from
    the source, taking any element that is not a known parameter-free torch.nn layer as stateful."""

    cls: str
    attribute: str
    index: int
    to_index: int
    has_state: tuple[bool, ...] | None = None
    method: str = "__init__"


@dataclass(frozen=True)
class ReorderSequential:
    """Move or take out dropouts of the nn.Sequential literal assigned to `self.<attribute>` in
    `cls.__init__`. Each move is (index, anchor, after), in the literal's original indices: element
    `index` goes just after (`after`) or before element `anchor`; an anchor of None takes it out.
    Moves on one literal merge into one request. `has_state[i]` says whether element i holds
    parameters or buffers; their index-based keys (`features.4.weight`) may move only with
    `allow_renames` (a checkpoint is converted alongside, see `sequential_order`)."""

    cls: str
    attribute: str
    moves: tuple[tuple[int, int | None, bool], ...]
    has_state: tuple[bool, ...]
    allow_renames: bool = False


@dataclass(frozen=True)
class SetDropoutP:
    """Write `p` where the source gives the dropout's probability as a number: the declaration
    `self.<attribute> = nn.Dropout(0.1)` in `cls.__init__` (element `element` of the nn.Sequential
    literal there, when given), or the functional call `call` (`F.dropout(x, 0.1, ...)`, `p=0.1`).
    A p left to its default is written as `p=`. A p that is an expression (`drop_rate`,
    `self.droprate`) stays: the request is refused, saying what to build the model with instead."""

    cls: str
    p: float
    attribute: str | None = None
    element: int | None = None
    call: CallSite | None = None


@dataclass(frozen=True)
class AllOf:
    """Several requests that make sense only together (declare a dropout and call it): all apply,
    or none does and the first refusal says why."""

    requests: tuple["EditRequest", ...]


EditRequest = Union[RemoveDropout, ApplyDropout, MoveDropout, DeclareDropout, GateOnTraining, MakeElementwise,
                    MoveInSequential, ReorderSequential, SetDropoutP, AllOf]


@dataclass(frozen=True)
class EditResult:
    """What became of one request: applied, or refused with the reason (and what the user can do)."""

    request: EditRequest
    applied: bool
    reason: str = ""
