"""The fix plan as edits to the user's own source files (design §6, "How it is written").

`plan_source_fix` maps each planned change (plan.py) onto source-edit requests (source_mapper),
then applies them file by file (source_edits). One class's `forward` serves all its instances, so
a class is edited only when every instance of it needs the same edits; a p the plan changes is
written only where every instance wants the same p (source_keys). Moves on one nn.Sequential
literal merge into one reorder, applied after the file's other edits; with `allow_renames` (a
checkpoint is converted alongside) it may rename state_dict keys, and `key_map` lists them.
Whatever cannot be written comes back as a NotInSource with the reason (and what to do); the rest
still applies. A p kept as the user wrote it is a note.

    edits = plan_source_fix(capture, analysis, plan, project_root)
    for patch in edits.patches: print(patch.diff())
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..records import Analysis, Capture, DropcheckError, NotInSource, SourceNote
from .plan import Plan
from .source_edits import EditRequest, ReorderSequential, SourcePatch, patch_source, read_source, write_patch
from .source_keys import CHECKPOINT_HINT, PEdit, even_p_edits, key_map, merge_reorders, new_index
from .source_mapper import Mapper, Unit, join
from .source_probability import KEPT


@dataclass
class SourceEdits:
    """The patch of each file to change, the sites fixed in source and those that are not."""

    patches: list[SourcePatch]
    fixed: list[str]
    not_in_source: list[NotInSource]
    notes: list[SourceNote] = field(default_factory=list)
    key_map: dict[str, str] = field(default_factory=dict)  # old -> new state_dict key, the renamed ones
    p_written: list[tuple[str, float]] = field(default_factory=list)  # (dropout module after the fix, p)

    @property
    def diff(self) -> str:
        return "".join(patch.diff() for patch in self.patches)


@dataclass
class _Patched:
    patches: list[SourcePatch]
    refused: dict[Unit, tuple[str, str]]  # unit -> (reason, hint)
    notes: list[SourceNote]
    reorders: dict[tuple[Path, str, str], ReorderSequential]  # (file, class, attribute) -> the merged request
    p_written: list[PEdit]


def plan_source_fix(capture: Capture, analysis: Analysis, plan: Plan, root: Path,
                    allow_renames: bool = False) -> SourceEdits:
    """Source edits for `plan` in the files under `root` (the user's project). With `allow_renames`
    (a checkpoint is converted alongside), an nn.Sequential may be reordered past elements with state."""
    mapper = Mapper(capture, {s.id: s for s in analysis.sites}, plan, root.resolve(), allow_renames)
    units = [mapper.unit(change) for change in plan.changes]
    units = [u for u in units if u is not None]
    while True:  # each round refuses at least one more unit, or ends: a refusal can make a class uneven
        _refuse_uneven_classes(capture.root, units)
        live = [u for u in units if not u.refusal]
        p_edits, p_notes = even_p_edits(capture.root, (e for u in live for e in u.p_edits))
        done = _patch_files(mapper, live, p_edits)
        if not done.refused:
            break
        for unit, (reason, hint) in done.refused.items():
            unit.refusal, unit.hint = reason, hint
    missing = [NotInSource(site, unit.refusal, *([unit.hint] if unit.hint else []))
               for unit in units if unit.refusal for site in unit.sites]
    fixed = [site for unit in live for site in unit.sites]
    notes = [n for unit in live for n in unit.notes] + p_notes + done.notes
    reordered = {}  # each reordered Sequential of the model (qualname) -> its merged request
    for unit in live:
        for cls, instance, request in unit.edits:
            if isinstance(request, ReorderSequential):
                merged = done.reorders[(mapper.files[cls], request.cls, request.attribute)]
                reordered[join(instance, request.attribute)] = merged
    written = [(join(e.sequential, str(new_index(reordered.get(e.sequential), int(e.module)))) if e.sequential
                is not None else e.module, e.request.p) for e in done.p_written]
    return SourceEdits([p for p in done.patches if p.changed], fixed, missing, notes,
                       key_map(capture.root.state_dict().keys(), reordered.items()) if reordered else {}, written)


def _refuse_uneven_classes(root: nn.Module, units: list[Unit]) -> None:
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


def _patch_files(mapper: Mapper, units: list[Unit], p_edits: list[PEdit]) -> _Patched:
    by_file: dict[Path, list[EditRequest]] = defaultdict(list)
    owner: dict[tuple[Path, EditRequest], list[Unit]] = defaultdict(list)
    p_owner: dict[tuple[Path, EditRequest], list[PEdit]] = defaultdict(list)
    for edit in p_edits:  # first: p is edited where it stands, before anything moves
        path = mapper.files[edit.cls]
        if edit.request not in by_file[path]:
            by_file[path].append(edit.request)
        p_owner[(path, edit.request)].append(edit)
    reorders: dict[tuple[Path, str, str], ReorderSequential] = {}
    for cls, _, request in (edit for unit in units for edit in unit.edits):
        if isinstance(request, ReorderSequential):
            key = (mapper.files[cls], request.cls, request.attribute)
            reorders[key] = merge_reorders(reorders[key], request) if key in reorders else request
    last: dict[Path, list[EditRequest]] = defaultdict(list)  # the reorders: other edits name elements by index
    for unit in units:
        for cls, _, request in unit.edits:
            path = mapper.files[cls]
            if isinstance(request, ReorderSequential):  # moves on one literal go together
                request = reorders[(path, request.cls, request.attribute)]
                if request not in last[path]:
                    last[path].append(request)
            elif request not in by_file[path]:
                by_file[path].append(request)
            owner[(path, request)].append(unit)
    for path, requests in last.items():
        by_file[path].extend(requests)
    done = _Patched([], {}, [], reorders, [])
    for path, requests in by_file.items():
        patch = patch_source(mapper.text(path), requests, _shown(path))
        done.patches.append(patch)
        for result in patch.results:
            for edit in p_owner[(path, result.request)]:
                if result.applied:
                    done.p_written.append(edit)
                else:
                    done.notes.append(SourceNote(edit.site, result.reason if result.reason.startswith(KEPT) else
                                                 f"p stays as written ({result.reason}); the fix wants "
                                                 f"p={edit.request.p:g} here"))
            for unit in owner[(path, result.request)] if not result.applied else ():
                renames = "rename state_dict keys" in result.reason
                done.refused.setdefault(unit, (f"{result.request.__class__.__name__} refused: {result.reason}",
                                               CHECKPOINT_HINT if renames else ""))
    return done


def _shown(path: Path) -> str:
    """The path as the diff names it: relative to the working directory when inside it."""
    cwd = Path.cwd().resolve()
    return str(path.relative_to(cwd)) if path.is_relative_to(cwd) else str(path)


def check_unchanged(patches: list[SourcePatch]) -> None:
    """Each file still holds the text its patch was made from (DropcheckError otherwise)."""
    for patch in patches:
        if read_source(patch.path) != patch.original:
            raise DropcheckError("output", f"{patch.path} changed since dropcheck read it; nothing was written",
                                 "run dropcheck fix again on the new version")


def write_source_patches(patches: list[SourcePatch]) -> list[Path]:
    """Write every patch, or none: each file must still hold the text its patch was made from."""
    check_unchanged(patches)
    return [write_patch(patch) for patch in patches]
