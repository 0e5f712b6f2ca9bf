"""Records of fix: each change, each verification check, and the FixResult (fix -> output, export, train)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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


@dataclass
class FixResult:
    """The fixed model, what changed, and the checks it passed (fix -> report, export, train)."""

    target: str
    model: Any  # FixedModel
    changes: list[Change]
    checks: list[Check]
    unfixable: list[str]
    code_before: str
    code_after: str
    input_shape: list[int] | None = None

    @property
    def ok(self) -> bool:
        return not self.unfixable and all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "ok": self.ok,
            "input_shape": self.input_shape,
            "changes": [c.to_dict() for c in self.changes],
            "verification": [c.to_dict() for c in self.checks],
            "unfixable": list(self.unfixable),
        }
