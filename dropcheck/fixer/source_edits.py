"""Patch a user's model source: edit requests in, the patched text and a unified diff out.

`dropcheck fix` on the user's own code edits their file, as a reviewer would by hand: libcst keeps
every byte outside the edited lines (formatting, comments, line endings), so a two-line move is a
two-line diff. Requests are said in source terms (source_requests); each applies or comes back
refused with the reason, and the others still apply. `write_patch` writes the result atomically and
only over the very text it was made from.

    patch = patch_source(read_source(path), [MoveDropout(CallSite("BasicBlock", "self.drop"),
                                                         to=CallSite("BasicBlock", "self.conv2"))], str(path))
    print(patch.diff())
    write_patch(patch)
"""
from __future__ import annotations

import difflib
import hashlib
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path, PurePath

import libcst as cst

from ..atomic import write_with
from ..records import DropcheckError
from .source_calls import apply_dropout, gate_on_training, move_dropout, remove_dropout
from .source_declarations import (declare_dropout, make_elementwise, move_in_sequential, remove_declaration,
                                  sequential_key_renames)
from .source_locate import CannotEdit, SourceIndex
from .source_probability import set_dropout_p
from .source_requests import (AllOf, ApplyDropout, CallSite, DeclareDropout, EditRequest, EditResult, GateOnTraining,
                              MakeElementwise, MoveDropout, MoveInSequential, RemoveDeclaration, RemoveDropout,
                              ReorderSequential, SetDropoutP)
from .source_sequential import reorder_sequential, sequential_order

__all__ = ["AllOf", "ApplyDropout", "CallSite", "DeclareDropout", "EditRequest", "EditResult", "GateOnTraining",
           "MakeElementwise", "MoveDropout", "MoveInSequential", "RemoveDeclaration", "RemoveDropout",
           "ReorderSequential", "SetDropoutP",
           "SourcePatch", "patch_source", "read_source", "sequential_key_renames", "sequential_order", "source_hash",
           "write_patch"]

_EDITS: dict[type, Callable[[SourceIndex, EditRequest], cst.Module]] = {
    RemoveDropout: remove_dropout,
    RemoveDeclaration: remove_declaration,
    ApplyDropout: apply_dropout,
    MoveDropout: move_dropout,
    DeclareDropout: declare_dropout,
    GateOnTraining: gate_on_training,
    MakeElementwise: make_elementwise,
    MoveInSequential: move_in_sequential,
    ReorderSequential: reorder_sequential,
    SetDropoutP: set_dropout_p,
}


@dataclass(frozen=True)
class SourcePatch:
    """A source file before and after the edits, and what became of each request."""

    path: str
    original: str
    patched: str
    results: tuple[EditResult, ...]

    @property
    def changed(self) -> bool:
        return self.patched != self.original

    @property
    def original_hash(self) -> str:
        return source_hash(self.original)

    @property
    def refused(self) -> tuple[EditResult, ...]:
        return tuple(r for r in self.results if not r.applied)

    def diff(self, context: int = 3) -> str:
        """A unified diff (`a/path`, `b/path`), empty when nothing changed."""
        name = PurePath(self.path).as_posix().lstrip("/")
        lines = difflib.unified_diff(_diff_lines(self.original), _diff_lines(self.patched),
                                     f"a/{name}", f"b/{name}", n=context)
        return "".join(lines)


def patch_source(text: str, requests: Sequence[EditRequest], path: str = "model.py") -> SourcePatch:
    """Apply `requests` in order to the source `text` (of the file `path`, named in the diff).
    Lines in call sites are the original text's, whatever the earlier requests inserted or removed.

    Raises DropcheckError only when `text` is not Python; a request that does not apply is a
    refused EditResult and leaves the text as the previous requests made it."""
    bom = "\ufeff" if text.startswith("\ufeff") else ""  # libcst drops a byte-order mark; the file keeps it
    try:
        module = cst.parse_module(text[len(bom):])
    except cst.ParserSyntaxError as exc:
        raise DropcheckError("source", f"{path}:{exc.raw_line}: cannot parse: {exc.message}",
                             "fix the syntax error first") from exc
    results = []
    lines = {n: n for n in range(1, text.count("\n") + 2)}  # each original line -> where it is now
    for request in requests:
        try:
            edited, edited_lines = _edit(module, request, lines)
            _check_compiles(edited, path)
        except CannotEdit as exc:
            results.append(EditResult(request, False, str(exc)))
        except Exception as exc:  # noqa: BLE001 - one odd site must not stop the other edits
            results.append(EditResult(request, False, f"dropcheck could not edit this ({type(exc).__name__}: "
                                                      f"{exc}); please report it"))
        else:
            module, lines = edited, edited_lines
            results.append(EditResult(request, True))
    return SourcePatch(path, text, bom + module.code, tuple(results))


def read_source(path: str | os.PathLike[str]) -> str:
    """The file's text exactly as stored (line endings kept), so its hash matches the bytes on disk."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise DropcheckError("source", f"cannot read {path}: {exc.strerror}", "check the path") from exc
    except UnicodeDecodeError as exc:
        raise DropcheckError("source", f"{path} is not UTF-8 text", "save it as UTF-8 to let dropcheck edit it") \
            from exc


def source_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_patch(patch: SourcePatch, path: str | os.PathLike[str] | None = None) -> Path:
    """Write the patched text over the file it was made from (`patch.path` unless `path` says where),
    through a temporary file in the same folder and os.replace, keeping the file's mode. Refuses
    (DropcheckError) when the file no longer holds the text the patch was made from."""
    target = Path(path if path is not None else patch.path).resolve()  # a symlink's target, not the link
    try:
        current = target.read_bytes()
    except OSError as exc:
        raise DropcheckError("output", f"cannot read {target}: {exc.strerror}", "check the path") from exc
    if hashlib.sha256(current).hexdigest() != patch.original_hash:
        raise DropcheckError("output", f"{target} changed since dropcheck read it; nothing was written",
                             "run dropcheck fix again on the new version")
    if patch.changed:
        _replace_atomically(target, patch.patched.encode("utf-8"))
    return target


def _edit(module: cst.Module, request: EditRequest,
          lines: dict[int, int]) -> tuple[cst.Module, dict[int, int]]:
    """The module after `request`, and where each original line is then."""
    if isinstance(request, AllOf):  # all or nothing: the first refusal refuses the group
        for position, part in enumerate(request.requests):
            try:
                module, lines = _edit(module, part, lines)
            except CannotEdit as exc:
                raise CannotEdit(f"part {position + 1} of {len(request.requests)}: {exc}") from exc
        return module, lines
    edit = _EDITS.get(type(request))
    if edit is None:
        raise CannotEdit(f"{type(request).__name__} is not an edit request")
    edited = edit(SourceIndex(module), _at_current_lines(request, lines))
    return edited, _follow_lines(lines, module.code, edited.code)


def _at_current_lines(request: EditRequest, lines: dict[int, int]) -> EditRequest:
    """The request with its call sites' lines (numbered in the original text) moved to where those
    lines are after the earlier requests."""
    moved = {}
    for field in fields(request):
        site = getattr(request, field.name)
        if isinstance(site, CallSite) and site.line is not None:
            if site.line not in lines:
                raise CannotEdit(f"{site}: an earlier request of this patch rewrote that line")
            moved[field.name] = replace(site, line=lines[site.line])
    return replace(request, **moved) if moved else request


def _follow_lines(lines: dict[int, int], before: str, after: str) -> dict[int, int]:
    """`lines` after one edit: a line kept (or edited in place) maps on, a removed one drops out."""
    # split at "\n" only, as Python counts lines (a form feed is not a line break there)
    matcher = difflib.SequenceMatcher(None, before.split("\n"), after.split("\n"), autojunk=False)
    step = {}
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal" or (tag == "replace" and i2 - i1 == j2 - j1):
            step.update({i1 + k + 1: j1 + k + 1 for k in range(i2 - i1)})
    return {original: step[now] for original, now in lines.items() if now in step}


def _check_compiles(module: cst.Module, path: str) -> None:
    # a last guard: an edit must never hand back code that Python rejects
    try:
        compile(module.code, path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise CannotEdit(f"the edit would leave code that does not compile ({exc.msg}, line {exc.lineno})") from exc


def _diff_lines(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith(("\n", "\r")):
        lines[-1] += "\n\\ No newline at end of file\n"
    return lines


def _replace_atomically(target: Path, data: bytes) -> None:
    """`target` holds `data` or is untouched (atomic.py's temp file and rename), keeping the file's mode."""

    def fill(temp: str) -> None:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # the user's own source: on disk before it replaces the original

    write_with(target, fill, mode=stat.S_IMODE(target.stat().st_mode))