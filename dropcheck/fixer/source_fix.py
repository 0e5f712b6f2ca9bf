"""The fix plan as edits to the user's own source files (design §6, "How it is written").

`plan_source_fix` turns each planned change (plan.py) into source-edit requests (source_requests)
in the class whose `forward` makes the call: a moved dropout is a MoveDropout (or, when its new
place is in another module, RemoveDropout there and DeclareDropout + ApplyDropout here), an
always-on functional dropout is a GateOnTraining, a dropout inside an nn.Sequential literal is a
MoveInSequential (refused where a key would change). One class's `forward` serves all its
instances, so a class is edited only when every instance of it needs the same edits. Only files
of the user's project are edited, never torch or an installed package. Whatever cannot be written
comes back as a NotInSource with the reason; the rest still applies. A channel-wise dropout moved
before the global pool becomes element-wise (Guideline 2).

    edits = plan_source_fix(capture, analysis, plan, project_root)
    for patch in edits.patches: print(patch.diff())
"""
from __future__ import annotations

import inspect
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..analysis.load import is_library_frame
from ..records import Analysis, Capture, Change, DropcheckError, NotInSource, Site
from .plan import Plan, Point
from .source_edits import (AllOf, ApplyDropout, CallSite, DeclareDropout, EditRequest, GateOnTraining,
                           MakeElementwise, MoveDropout, MoveInSequential, RemoveDropout, SourcePatch, patch_source,
                           read_source, write_patch)

@dataclass(eq=False)  # units are told apart by identity
class _Unit:
    """The edits that fix some sites together: all are written, or none is."""

    sites: tuple[str, ...]
    edits: list[tuple[type, str, EditRequest]] = field(default_factory=list)  # (class, instance, request)
    refusal: str = ""


@dataclass
class SourceEdits:
    """The patch of each file to change, the sites fixed in source and those that are not."""

    patches: list[SourcePatch]
    fixed: list[str]
    not_in_source: list[NotInSource]

    @property
    def diff(self) -> str:
        return "".join(patch.diff() for patch in self.patches)


_CHANNELWISE = frozenset({"Dropout1d", "Dropout2d", "Dropout3d", "FeatureAlphaDropout", "dropout1d", "dropout2d",
                          "dropout3d", "feature_alpha_dropout"})


class _Refused(Exception):
    pass


def plan_source_fix(capture: Capture, analysis: Analysis, plan: Plan, root: Path) -> SourceEdits:
    """Source edits for `plan` in the files under `root` (the user's project)."""
    mapper = _Mapper(capture, {s.id: s for s in analysis.sites}, plan, root.resolve())
    units = [mapper.unit(change) for change in plan.changes]
    units = [u for u in units if u is not None]
    while True:  # each round refuses at least one more unit, or ends: a refusal can make a class uneven
        _refuse_uneven_classes(capture.root, units)
        patches, refused = _patch_files(mapper, [u for u in units if not u.refusal])
        if not refused:
            break
        for unit, reason in refused.items():
            unit.refusal = reason
    missing = [NotInSource(site, unit.refusal) for unit in units if unit.refusal for site in unit.sites]
    fixed = [site for unit in units if not unit.refusal for site in unit.sites]
    return SourceEdits([p for p in patches if p.changed], fixed, missing)


def _refuse_uneven_classes(root: nn.Module, units: list[_Unit]) -> None:
    """A class whose instances need different edits cannot be edited: its units are refused."""
    while True:
        wanted: dict[type, dict[str, list[EditRequest]]] = defaultdict(lambda: defaultdict(list))
        for unit in units:
            if not unit.refusal:
                for cls, instance, request in unit.edits:
                    wanted[cls][instance].append(request)
        uneven = {}
        for cls, by_instance in wanted.items():
            instances = [name for name, m in root.named_modules() if type(m) is cls]
            kinds = {tuple(by_instance.get(name, ())) for name in instances}
            if len(kinds) > 1:
                bare = [name or "the model" for name in instances if not by_instance.get(name)]
                uneven[cls] = (f"{cls.__name__}.forward serves {len(instances)} instances that need different "
                               "edits" + (f" ({', '.join(bare[:3])} need none)" if bare else ""))
        if not uneven:
            return
        for unit in units:
            reason = next((uneven[c] for c, _, _ in unit.edits if c in uneven), "")
            if reason and not unit.refusal:
                unit.refusal = reason


def _patch_files(mapper: "_Mapper", units: list[_Unit]) -> tuple[list[SourcePatch], dict[_Unit, str]]:
    by_file: dict[Path, list[EditRequest]] = defaultdict(list)
    owner: dict[tuple[Path, EditRequest], list[_Unit]] = defaultdict(list)
    for unit in units:
        for cls, _, request in unit.edits:
            path = mapper.files[cls]
            if request not in by_file[path]:
                by_file[path].append(request)
            owner[(path, request)].append(unit)
    patches, refused = [], {}
    for path, requests in by_file.items():
        patch = patch_source(mapper.text(path), requests, _shown(path))
        patches.append(patch)
        for result in patch.refused:
            for unit in owner[(path, result.request)]:
                refused.setdefault(unit, f"{result.request.__class__.__name__} refused: {result.reason}")
    return patches, refused


class _Mapper:
    """Plan terms (train-graph nodes, module qualnames) -> source terms (class, call, line)."""

    def __init__(self, capture: Capture, sites: dict[str, Site], plan: Plan, root: Path) -> None:
        self.capture, self.sites, self.plan, self.root = capture, sites, plan, root
        self.points = {module: point for point, (_, module, _) in plan.insertions.items()}
        self.files: dict[type, Path] = {}
        self._texts: dict[Path, str] = {}

    def text(self, path: Path) -> str:
        if path not in self._texts:
            self._texts[path] = read_source(path)
        return self._texts[path]

    def unit(self, change: Change) -> _Unit | None:
        unit = _Unit((change.dropout,) if change.dropout else (change.module,))
        try:
            if change.action == "convert":
                site = self.sites[change.dropout]
                if not site.always_on:
                    return None  # `F.dropout(..., training=self.training)` already follows train()/eval()
                instance, callee, line = self._call(site.node or "", site)
                unit.edits.append(self._edit(instance, lambda c: GateOnTraining(CallSite(c, callee, line=line))))
            elif change.action == "remove":
                self._remove(unit, self.sites[change.dropout])
            elif change.action == "move":
                self._move(unit, self.sites[change.dropout], self.points[change.module], change)
            elif change.action == "add":
                self._declare_and_apply(unit, self.points[change.module], change.p, change.module)
        except _Refused as exc:
            unit.refusal = str(exc)
        return unit

    # --- one change ------------------------------------------------------------------------------

    def _remove(self, unit: _Unit, site: Site) -> None:
        if self._sequential_of(self._dropout_module(site)) is not None:
            raise _Refused(f"{site.id} is an element of an nn.Sequential: taking it out would rename the "
                           "state_dict keys of the elements after it")
        instance, callee, line = self._call(site.node or "", site)
        unit.edits.append(self._edit(instance, lambda c: RemoveDropout(CallSite(c, callee, line=line))))

    def _move(self, unit: _Unit, site: Site, point: Point, change: Change) -> None:
        if self._sequential_of(self._dropout_module(site)) is not None:
            return self._move_in_sequential(unit, site, point)
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
            return None
        self._remove(unit, site)
        self._declare_and_apply(unit, point, change.p, change.module)
        return None

    def _declare_and_apply(self, unit: _Unit, point: Point, p: float, module: str) -> None:
        place, to_callee, side = self._place(point)
        holder = self.capture.root.get_submodule(place) if place else self.capture.root
        attribute = module.rpartition(".")[2] if module.rpartition(".")[0] == place else "drop_guideline"
        while hasattr(holder, attribute):
            attribute += "_"
        unit.edits.append(self._edit(place, lambda c: AllOf((
            DeclareDropout(c, attribute, p),
            ApplyDropout(CallSite(c, to_callee), dropout=f"self.{attribute}", side=side)))))

    def _move_in_sequential(self, unit: _Unit, site: Site, point: Point) -> None:
        seq_name, index = self._sequential_of(site.module or "") or ("", 0)
        sequential = self.capture.root.get_submodule(seq_name)
        to_index = None
        for node, after in ((point.consumer, False), (point.producer, True)):
            n = self.capture.nodes.get(node) if node else None
            if n is not None and n.op == "call_module" and str(n.target).rpartition(".")[0] == seq_name:
                k = int(str(n.target).rpartition(".")[2])
                to_index = (k if after else k - 1) if k > index else (k + 1 if after else k)
                break
        if to_index is None:
            raise _Refused(f"{site.id} would leave its nn.Sequential `{seq_name}`, which renames state_dict keys")
        parent, _, attribute = seq_name.rpartition(".")
        has_state = tuple(any(True for _ in m.parameters()) or any(True for _ in m.buffers()) for m in sequential)
        unit.edits.append(self._edit(parent, lambda c: MoveInSequential(c, attribute, index, to_index, has_state)))

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
            raise _Refused(f"{cls.__name__} has no source file")
        path = Path(file).resolve()
        if is_library_frame(str(path)) or "site-packages" in path.parts or "dist-packages" in path.parts or \
                not path.is_relative_to(self.root):
            raise _Refused(f"{cls.__name__} is defined in {file}, which is not a file of your project")
        if cls.__qualname__ != cls.__name__:
            raise _Refused(f"{cls.__qualname__} is a nested class")
        self.files[cls] = path

    def _call(self, node_name: str, site: Site | None = None) -> tuple[str, str, int | None]:
        """(instance whose forward makes the call, callee as CallSite writes it, line or None)."""
        n = self.capture.nodes.get(node_name)
        if n is None:
            raise _Refused(f"{node_name or 'this site'} is not in the traced graph")
        line = site.source.line if site is not None and site.source is not None else None
        if n.op == "call_module":
            parent, _, leaf = str(n.target).rpartition(".")
            return parent, f"self.{leaf}", line
        if n.op == "call_function":
            name = _function_name(n.target)
            if name is None:
                raise _Refused(f"{getattr(n.target, '__name__', n.target)} is not a call dropcheck can point to "
                               "in the source")
            return n.owner, name, line
        if n.op == "call_method":
            return n.owner, f".{n.target}", line
        raise _Refused(f"{node_name} is not a call")

    def _place(self, point: Point) -> tuple[str, str, str]:
        """Where an inserted dropout goes: before the consumer's call, or after the producer's."""
        consumer = self.capture.nodes.get(point.consumer) if point.consumer else None
        if consumer is not None and consumer.inputs[:1] == [point.producer] and \
                self._sequential_of(str(consumer.target)) is None:
            try:
                instance, callee, _ = self._call(point.consumer)
                return instance, callee, "before"
            except _Refused:
                pass
        producer = self.capture.nodes.get(point.producer)
        if producer is not None and self._sequential_of(str(producer.target)) is not None:
            raise _Refused(f"the new place ({point.label}) is inside an nn.Sequential: a new element there would "
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


def _shown(path: Path) -> str:
    """The path as the diff names it: relative to the working directory when inside it."""
    cwd = Path.cwd().resolve()
    return str(path.relative_to(cwd)) if path.is_relative_to(cwd) else str(path)


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


def write_source_patches(patches: list[SourcePatch]) -> list[Path]:
    """Write every patch, or none: each file must still hold the text its patch was made from."""
    for patch in patches:
        if read_source(patch.path) != patch.original:
            raise DropcheckError("output", f"{patch.path} changed since dropcheck read it; nothing was written",
                                 "run dropcheck fix again on the new version")
    return [write_patch(patch) for patch in patches]
