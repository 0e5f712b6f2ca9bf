"""Plan terms -> source terms: each planned change (plan.py) as edit requests (source_requests) on
the class whose `forward` or `__init__` it touches, or refused with the reason and what to do.

A moved dropout is a MoveDropout (or, when its new place is in another module, RemoveDropout there
and DeclareDropout + ApplyDropout here); an always-on functional dropout is a GateOnTraining; a
dropout inside an nn.Sequential literal is a ReorderSequential, refused where a state_dict key would
change unless `allow_renames` (a checkpoint is converted alongside). A p the plan changes becomes a
SetDropoutP wish (PEdit), written only where every instance agrees (source_keys).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..analysis.load import is_library_frame
from ..records import Capture, Change, Site, SourceNote
from .plan import Plan, Point
from .source_edits import (AllOf, ApplyDropout, CallSite, DeclareDropout, EditRequest, GateOnTraining,
                           MakeElementwise, MoveDropout, RemoveDeclaration, RemoveDropout, ReorderSequential,
                           SetDropoutP, read_source)
from .source_keys import CHECKPOINT_HINT, PEdit
from .source_sequential import order_renames, sequential_order


@dataclass(eq=False)  # units are told apart by identity
class Unit:
    """The edits that fix some sites together: all are written, or none is."""

    sites: tuple[str, ...]
    edits: list[tuple[type, str, EditRequest]] = field(default_factory=list)  # (class, instance, request)
    refusal: str = ""
    hint: str = ""  # what the user can do about the refusal ("" for the usual: -o, or by hand)
    p_edits: list[PEdit] = field(default_factory=list)  # the p it writes, if every instance agrees
    notes: list[SourceNote] = field(default_factory=list)


_CHANNELWISE = frozenset({"Dropout1d", "Dropout2d", "Dropout3d", "FeatureAlphaDropout", "dropout1d", "dropout2d",
                          "dropout3d", "feature_alpha_dropout"})


class Refused(Exception):
    def __init__(self, reason: str, hint: str = "") -> None:
        super().__init__(reason)
        self.hint = hint


class Mapper:
    """Plan terms (train-graph nodes, module qualnames) -> source terms (class, call, line)."""

    def __init__(self, capture: Capture, sites: dict[str, Site], plan: Plan, root: Path,
                 allow_renames: bool = False) -> None:
        self.capture, self.sites, self.plan, self.root = capture, sites, plan, root
        self.allow_renames = allow_renames
        self.points = {module: point for point, (_, module, _) in plan.insertions.items()}
        self.files: dict[type, Path] = {}
        self._texts: dict[Path, str] = {}

    def text(self, path: Path) -> str:
        if path not in self._texts:
            self._texts[path] = read_source(path)
        return self._texts[path]

    def unit(self, change: Change) -> Unit | None:
        unit = Unit((change.dropout,) if change.dropout else (change.module,))
        try:
            if change.action == "convert" and change.module in self.plan.module_types:
                self._make_elementwise(unit, self.sites[change.dropout])  # right before the pool (Guideline 2)
            elif change.action == "convert":
                site = self.sites[change.dropout]
                if not site.always_on:
                    return None  # `F.dropout(..., training=self.training)` already follows train()/eval()
                instance, callee, line = self._call(site.node or "", site)
                unit.edits.append(self._edit(instance, lambda c: GateOnTraining(CallSite(c, callee, line=line))))
                self._want_p(unit, site, change.p)
            elif change.action == "remove":
                self._remove(unit, self.sites[change.dropout])
            elif change.action == "move":
                self._move(unit, self.sites[change.dropout], self.points[change.module], change)
            elif change.action == "add":
                self._declare_and_apply(unit, self.points[change.module], change.p, change.module)
        except Refused as exc:
            unit.refusal, unit.hint = str(exc), exc.hint
        return unit

    # --- one change ------------------------------------------------------------------------------

    def _remove(self, unit: Unit, site: Site) -> None:
        if self._sequential_of(self._dropout_module(site)) is not None:
            return self._reorder(unit, site, None, False)
        instance, callee, line = self._call(site.node or "", site)
        unit.edits.append(self._edit(instance, lambda c: RemoveDropout(CallSite(c, callee, line=line))))
        if callee.startswith("self."):  # its declaration goes too, where nothing else in the class uses it
            unit.edits.append(self._edit(instance, lambda c: RemoveDeclaration(c, callee.removeprefix("self."))))
        return None

    def _move(self, unit: Unit, site: Site, point: Point, change: Change) -> None:
        if self._sequential_of(self._dropout_module(site)) is not None:
            return self._move_in_sequential(unit, site, point, change)
        instance, callee, line = self._call(site.node or "", site)
        place, to_callee, side = self._place(point)
        if place == instance:
            if site.always_on:  # DC006 too: the moved call follows train()/eval() (gated first, where it is)
                unit.edits.append(self._edit(instance, lambda c: GateOnTraining(CallSite(c, callee, line=line))))
            # Guideline 2: a channel-wise dropout moved before the global pool becomes element-wise
            elementwise = site.op in _CHANNELWISE and point.position in ("H3", "H4")
            functional = not callee.startswith("self.")

            def move(cls: str) -> EditRequest:
                request = MoveDropout(CallSite(cls, callee, line=line), to=CallSite(cls, to_callee), side=side,
                                      elementwise=elementwise and functional)
                if elementwise and not functional:  # a module changes where it is declared
                    return AllOf((request, MakeElementwise(cls, callee.removeprefix("self."))))
                return request

            unit.edits.append(self._edit(instance, move))
            self._want_p(unit, site, change.p)
            return None
        self._remove(unit, site)
        self._declare_and_apply(unit, point, change.p, change.module)
        return None

    def _make_elementwise(self, unit: Unit, site: Site) -> None:
        """A channel-wise dropout module right before the global pool becomes element-wise where declared."""
        if site.op not in _CHANNELWISE or site.module is None or site.op.islower():
            raise Refused(f"{site.id} ({site.op}) is a functional call: write it as F.dropout by hand")
        sequential = self._sequential_of(site.module)
        if sequential is not None:
            seq_name, index = sequential
            parent, _, attribute = seq_name.rpartition(".")
            unit.edits.append(self._edit(parent, lambda c: MakeElementwise(c, attribute, index)))
            return
        parent, _, attribute = site.module.rpartition(".")
        unit.edits.append(self._edit(parent, lambda c: MakeElementwise(c, attribute)))

    def _declare_and_apply(self, unit: Unit, point: Point, p: float, module: str) -> None:
        place, to_callee, side = self._place(point)
        holder = self.capture.root.get_submodule(place) if place else self.capture.root
        attribute = module.rpartition(".")[2] if module.rpartition(".")[0] == place else "drop_guideline"
        while hasattr(holder, attribute):
            attribute += "_"
        unit.edits.append(self._edit(place, lambda c: AllOf((
            DeclareDropout(c, attribute, p),
            ApplyDropout(CallSite(c, to_callee), dropout=f"self.{attribute}", side=side)))))

    def _move_in_sequential(self, unit: Unit, site: Site, point: Point, change: Change) -> None:
        seq_name, index = self._sequential_of(site.module or "") or ("", 0)
        for node, after in ((point.consumer, False), (point.producer, True)):
            n = self.capture.nodes.get(node) if node else None
            if n is not None and n.op == "call_module" and str(n.target).rpartition(".")[0] == seq_name:
                if site.op in _CHANNELWISE and point.position in ("H3", "H4"):  # Guideline 2, as in _move
                    parent, _, attribute = seq_name.rpartition(".")
                    unit.edits.append(self._edit(parent, lambda c: MakeElementwise(c, attribute, element=index)))
                self._reorder(unit, site, int(str(n.target).rpartition(".")[2]), after)
                self._want_p(unit, site, change.p)
                return
        self._place(point)  # out of the Sequential: the new place first, then the keys it shifts
        self._reorder(unit, site, None, False)
        self._declare_and_apply(unit, point, change.p, change.module)

    def _reorder(self, unit: Unit, site: Site, anchor: int | None, after: bool) -> None:
        """Move the Sequential element `site` next to element `anchor` (None: take it out)."""
        seq_name, index = self._sequential_of(site.module or "") or ("", 0)
        sequential = self.capture.root.get_submodule(seq_name)
        has_state = tuple(any(True for _ in m.parameters()) or any(True for _ in m.buffers()) for m in sequential)
        move = (index, anchor, after)
        renames = order_renames(has_state, sequential_order(len(has_state), [move]))
        if renames and not self.allow_renames:
            keys = ", ".join(f"{seq_name}.{a}.* -> {seq_name}.{b}.*" for a, b in sorted(renames.items()))
            what = "taking it out of" if anchor is None else "moving it within"
            raise Refused(f"{what} its nn.Sequential would rename state_dict keys ({keys})", CHECKPOINT_HINT)
        parent, _, attribute = seq_name.rpartition(".")
        unit.edits.append(self._edit(parent, lambda c: ReorderSequential(c, attribute, (move,), has_state,
                                                                         self.allow_renames)))

    def _want_p(self, unit: Unit, site: Site, p: float) -> None:
        """Write `p` where the dropout of `site` has its p (when the plan changes it); a note if it cannot."""
        if p == site.p:
            return
        try:
            in_sequential = self._sequential_of(self._dropout_module(site))
            if in_sequential is not None:
                seq_name, index = in_sequential
                parent, _, attribute = seq_name.rpartition(".")
                cls, instance, request = self._edit(parent, lambda c: SetDropoutP(c, p, attribute, index))
                unit.p_edits.append(PEdit(cls, instance, request, site.id, str(index), seq_name))
                return
            instance, callee, line = self._call(site.node or "", site)
            if callee.startswith("self."):
                cls, instance, request = self._edit(instance, lambda c: SetDropoutP(c, p, callee[len("self."):]))
            elif not callee.startswith("."):
                cls, instance, request = self._edit(instance, lambda c: SetDropoutP(
                    c, p, call=CallSite(c, callee, line=line)))
            else:
                raise Refused(f"{site.id} is a tensor method, whose p dropcheck does not edit")
            unit.p_edits.append(PEdit(cls, instance, request, site.id, site.module or ""))
        except Refused as exc:
            unit.notes.append(SourceNote(site.id, f"p stays as written ({exc}); the fix wants p={p:g} here"))

    # --- plan terms -> source terms --------------------------------------------------------------

    def _edit(self, instance: str, request: Any) -> tuple[type, str, EditRequest]:
        """(class, instance, request) for an edit of the class of module `instance`."""
        module = self.capture.root.get_submodule(instance) if instance else self.capture.root
        cls = type(module)
        self._check_editable(cls)
        return cls, instance, request(cls.__name__)

    def _check_editable(self, cls: type) -> None:
        if cls in self.files:
            return
        try:
            file = inspect.getsourcefile(cls)
        except TypeError:
            file = None
        if file is None:
            raise Refused(f"{cls.__name__} has no source file")
        path = Path(file).resolve()
        if is_library_frame(str(path)) or "site-packages" in path.parts or "dist-packages" in path.parts or \
                not path.is_relative_to(self.root):
            raise Refused(f"{cls.__name__} is defined in {file}, which is not a file of your project")
        if cls.__qualname__ != cls.__name__:
            raise Refused(f"{cls.__qualname__} is a nested class")
        self.files[cls] = path

    def _call(self, node_name: str, site: Site | None = None) -> tuple[str, str, int | None]:
        """(instance whose forward makes the call, callee as CallSite writes it, line or None)."""
        n = self.capture.nodes.get(node_name)
        if n is None:
            raise Refused(f"{node_name or 'this site'} is not in the traced graph")
        line = site.source.line if site is not None and site.source is not None else None
        if n.op == "call_module":
            parent, _, leaf = str(n.target).rpartition(".")
            return parent, f"self.{leaf}", line
        if n.op == "call_function":
            name = _function_name(n.target)
            if name is None:
                raise Refused(f"{getattr(n.target, '__name__', n.target)} is not a call dropcheck can point to "
                               "in the source")
            return n.owner, name, line
        if n.op == "call_method":
            return n.owner, f".{n.target}", line
        raise Refused(f"{node_name} is not a call")

    def _place(self, point: Point) -> tuple[str, str, str]:
        """Where an inserted dropout goes: before the consumer's call, or after the producer's."""
        consumer = self.capture.nodes.get(point.consumer) if point.consumer else None
        if consumer is not None and consumer.inputs[:1] == [point.producer] and \
                self._sequential_of(str(consumer.target)) is None:
            try:
                instance, callee, _ = self._call(point.consumer)
                return instance, callee, "before"
            except Refused:
                pass
        producer = self.capture.nodes.get(point.producer)
        if producer is not None and self._sequential_of(str(producer.target)) is not None:
            raise Refused(f"the new place ({point.label}) is inside an nn.Sequential: a new element there would "
                           "rename state_dict keys")
        instance, callee, _ = self._call(point.producer)
        return instance, callee, "after"

    def _dropout_module(self, site: Site) -> str:
        """The dropout's own module; "" for a functional dropout (its `module` is the caller, which may
        well be an element of an nn.Sequential while the call is an ordinary line of its forward)."""
        n = self.capture.nodes.get(site.node or "")
        return site.module or "" if n is not None and n.op == "call_module" else ""

    def _sequential_of(self, qualname: str) -> tuple[str, int] | None:
        """(the Sequential's qualname, index) when `qualname` is an element of an nn.Sequential."""
        parent, _, leaf = qualname.rpartition(".")
        if not leaf.isdigit():
            return None
        try:
            holder = self.capture.root.get_submodule(parent)
        except AttributeError:
            return None
        return (parent, int(leaf)) if type(holder) is nn.Sequential else None


def _function_name(fn: Any) -> str | None:
    """`torch.nn.functional.avg_pool2d` for F.avg_pool2d (the source layer matches any import alias)."""
    name = getattr(fn, "__name__", None)
    if not name:
        return None
    if getattr(torch.nn.functional, name, None) is fn:
        return f"torch.nn.functional.{name}"
    if getattr(torch, name, None) is fn:
        return f"torch.{name}"
    return None



def join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name
