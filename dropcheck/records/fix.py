"""Records of fix: each change, each verification check, and the FixResult (fix -> output, export, train)."""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

from .display import Displayed, shorten


@dataclass(frozen=True)
class Change:
    """One line of the change list: what moved (or was converted, added, removed), and why."""

    action: str  # "move", "remove", "convert", "add"
    dropout: str  # site id before the fix ("" for an added one)
    to: str  # where it is now (label), or "" when removed
    p: float
    rule: str  # the rule code that asked for it, "" for conversions and --add
    module: str  # the dropout module that does the work after the fix
    from_position: str | None = None
    to_position: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "dropout": self.dropout, "to": self.to, "p": self.p, "rule": self.rule,
                "module": self.module, "from_position": self.from_position, "to_position": self.to_position}


@dataclass(frozen=True)
class Check:
    """One verification line of `dropcheck fix`."""

    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class NotInSource:
    """A planned change that `fix` cannot write into the user's source: which site, why, what to do."""

    site: str
    reason: str
    hint: str = "write the fixed model with -o OUT instead, or change this line by hand"

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "reason": self.reason, "hint": self.hint}


@dataclass(frozen=True)
class SourceNote:
    """A site the patch fixes, but not quite as planned: its p stays as the user wrote it (an
    expression such as `drop_rate`), with the value the plan wanted and how to get it."""

    site: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "message": self.message}


@dataclass
class SourceFix:
    """The fix as a patch to the user's own files (file and module targets, design §6)."""

    files: list[str]  # the files the patch changes
    diff: str  # unified diff of those files
    not_in_source: list[NotInSource]
    patches: tuple[Any, ...] = ()  # fixer.source_edits.SourcePatch, one per changed file (for --in-place)
    notes: list[SourceNote] = field(default_factory=list)
    key_map: dict[str, str] = field(default_factory=dict)  # old -> new state_dict key, only the keys that change
    checkpoint: Any = None  # fixer.checkpoint.Checkpoint being converted (--checkpoint), for --in-place
    checkpoint_out: str | None = None  # where the converted checkpoint goes
    checkpoint_written: bool = False

    def to_dict(self) -> dict[str, Any]:
        converted = None if self.checkpoint is None else {
            "input": str(self.checkpoint.path), "output": self.checkpoint_out, "written": self.checkpoint_written}
        return {"files": list(self.files), "diff": self.diff,
                "not_in_source": [n.to_dict() for n in self.not_in_source],
                "notes": [n.to_dict() for n in self.notes], "key_map": dict(self.key_map), "checkpoint": converted}


@dataclass(repr=False)
class FixResult(Displayed):
    """The fixed model, what changed, and the checks it passed (fix -> report, export, train).
    `to_json()` equals the "fix" object of `dropcheck fix --format json`."""

    target: str
    model: Any  # FixedModel
    changes: list[Change]
    checks: list[Check]
    unfixable: list[str]
    code_before: str
    code_after: str
    input_shape: list[int] | None = None
    source: SourceFix | None = None  # the source patch, for the user's own code without -o

    @property
    def ok(self) -> bool:
        return not self.unfixable and all(c.ok for c in self.checks)

    def diff(self) -> str:
        """Unified diff of the forward code (train and eval graphs) before and after the fix:
        what `fix --diff` prints and the JSON document's "diff"."""
        lines = difflib.unified_diff(self.code_before.splitlines(keepends=True),
                                     self.code_after.splitlines(keepends=True),
                                     fromfile=f"{self.target} (original)", tofile=f"{self.target} (fixed)")
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines)

    def moves_diff(self) -> str:
        """The changes with the forward lines each touches, as a diff with one hunk per change (the
        change in its header): what `fix --diff` prints for a graph rewrite; `diff()` is all of it.
        Lines that mention the dropout (or its module) count, and so do the lines they replace or
        are replaced by (same assigned name); a line the eval body repeats is shown once."""
        statements: list[tuple[str, str]] = []
        for line in self.diff().splitlines():
            if line[:1] in "-+" and not line.startswith(("---", "+++")):
                entry = (line[0], line[1:].strip().split(";  ")[0])  # fx's `;  x = None` is noise here
                if entry[1] and entry not in statements:
                    statements.append(entry)
        hunks = []
        for change, text in zip(self.changes, self.change_lines()):
            names = {name.rpartition("/")[2] if "/" in name else name.replace(".", "_")
                     for name in (change.dropout, change.module) if name}
            mentions = re.compile("|".join(rf"\b{re.escape(n)}(?:_\d+)?\b" for n in names)) if names else None
            hit = {i for i, (_, st) in enumerate(statements) if mentions is not None and mentions.search(st)}
            assigned = {statements[i][1].split(" = ")[0] for i in hit if " = " in statements[i][1]}
            hit |= {i for i, (_, st) in enumerate(statements) if " = " in st and st.split(" = ")[0] in assigned}
            if hit:
                hunks.append(f"@@ {text} @@\n" + "".join(f"{sign}{st}\n" for sign, st in
                                                       (statements[i] for i in sorted(hit))))
        if not hunks:
            return ""
        return f"--- {self.target} (original)\n+++ {self.target} (fixed)\n" + "".join(hunks)

    def describe_change(self, change: Change) -> tuple[str, str, str]:
        """One change's line as (subject, detail, why): `move  stages.0.0.drop  P3 -> P6 before
        stages.0.0.conv2  (DC001, p=0.2)` is ("stages.0.0.drop", "P3 -> P6 before stages.0.0.conv2",
        "DC001, p=0.2"). Plain words here, so training can list changes without output; the
        terminal styles each part."""
        p = f"p={change.p:g}"
        why = f"{change.rule}, {p}" if change.rule else p
        where = " ".join(part for part in (change.to_position, change.to) if part)
        if change.action == "move":
            detail = f"{change.from_position} -> {where}" if change.from_position else f"-> {where}"
            if change.module != change.dropout:
                detail += f" as {change.module}"
            return change.dropout, detail, why
        if change.action == "remove":
            was = f"{change.from_position}, " if change.from_position else ""
            if not change.module:  # --remove: nothing takes its place
                return change.dropout, f"{was}removed (no residual merge downstream)", why
            kept = change.module + (f" at {change.to_position}" if change.to_position else "")
            return change.dropout, f"{was}one dropout stays: {kept}", change.rule or p
        if change.action == "convert":
            return change.dropout, f"-> nn.{self._module_type(change.module)} {change.module} {change.to}", why
        if change.action == "add":
            return change.module, where, why
        return change.dropout or change.module, change.to, why

    def change_lines(self) -> list[str]:
        """Every change as one plain line, as `dropcheck fix` prints it when piped."""
        lines = []
        for change in self.changes:
            subject, detail, why = self.describe_change(change)
            lines.append(f"{change.action}  {subject}  {detail}  ({why})")
        return lines

    def _module_type(self, qualname: str) -> str:
        """The class name of the module `qualname` in the fixed model ("Dropout" if it cannot be told)."""
        try:
            return type(self.model.get_submodule(qualname)).__name__
        except (AttributeError, TypeError):
            return "Dropout"

    def headline(self) -> str:
        """One line: 'model.py: ok, 9 changes (move 9), 6/6 checks passed'."""
        actions: dict[str, int] = {}
        for change in self.changes:
            actions[change.action] = actions.get(change.action, 0) + 1
        kinds = ", ".join(f"{action} {n}" for action, n in actions.items())
        passed = sum(c.ok for c in self.checks)
        line = (f"{shorten(self.target, 60)}: {'ok' if self.ok else 'NOT ok'}, {len(self.changes)} "
                f"change{'' if len(self.changes) == 1 else 's'}" + (f" ({kinds})" if kinds else "")
                + f", {passed}/{len(self.checks)} checks passed")
        return line + (f", {len(self.unfixable)} unfixable" if self.unfixable else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "ok": self.ok,
            "input_shape": self.input_shape,
            "changes": [c.to_dict() for c in self.changes],
            "verification": [c.to_dict() for c in self.checks],
            "unfixable": list(self.unfixable),
        } | ({"source_patch": self.source.to_dict()} if self.source is not None else {})
