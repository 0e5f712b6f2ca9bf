"""JSON, schema 1: the document of every command, each drawn from its records' `to_dict()`.

Design §4: keys may be added, never renamed or removed. Each document carries "schema" and
"dropcheck_version"; train-compare's document is also the --resume file, so it is read back here.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console

from ..version import __version__
from ..records import Comparison, DropcheckError, FixResult, Report, Reproduction, Rule
from .console import write_plain

SCHEMA = 1


def write_json(console: Console, document: Any) -> None:
    """`document` indented by two spaces, byte for byte (so `--format json > out.json` stays valid)."""
    write_plain(console, json.dumps(document, indent=2))


# --- audit, rules --------------------------------------------------------------------------------

def audit_document(reports: Sequence[Report]) -> dict[str, Any]:
    """The schema-1 document of design §4."""
    return {"schema": SCHEMA, "dropcheck_version": __version__, "results": [r.to_dict() for r in reports]}


def rules_document(rules: Sequence[Rule]) -> list[dict[str, Any]]:
    """`dropcheck rules --format json`: a list of `Rule.to_dict()`."""
    return [rule.to_dict() for rule in rules]


# --- fix -----------------------------------------------------------------------------------------

def fix_document(result: FixResult | None, written: Sequence[Any] = (), diff: bool = False,
                 error: DropcheckError | None = None, target: str = "") -> dict[str, Any]:
    """`{"schema": 1, "dropcheck_version", "fix": FixResult.to_dict(), "written": [paths]}`, plus
    `"error"` when the fix failed (`"fix"` is null if it failed before there was a result)."""
    document: dict[str, Any] = {"schema": SCHEMA, "dropcheck_version": __version__,
                                "fix": result.to_dict() if result is not None else None,
                                "written": [str(path) for path in written]}
    if error is not None:
        document["target"] = result.target if result is not None else target
        document["error"] = error.to_dict()
    if diff and result is not None:
        document["diff"] = result.diff()
    return document


def render_fix_json(result: FixResult | None, console: Console, written: Sequence[Any] = (), diff: bool = False,
                    error: DropcheckError | None = None, target: str = "") -> None:
    """`dropcheck fix --format json`: the fix document on `console`."""
    write_json(console, fix_document(result, written, diff, error, target))


# --- measure, reproduce, recalibrate -------------------------------------------------------------

def reproduction_document(result: Reproduction, plot: Any = None) -> dict[str, Any]:
    """`{"schema": 1, "dropcheck_version", "reproduce": Reproduction.to_dict(), "plot": path or null}`."""
    return {"schema": SCHEMA, "dropcheck_version": __version__, "reproduce": result.to_dict(),
            "plot": str(plot) if plot is not None else None}


def render_recalibration_json(result: dict[str, Any], console: Console) -> None:
    """`{"schema": 1, "recalibration": {...}}`, through rich's JSON printer as it always was."""
    console.print_json(json.dumps({"schema": SCHEMA, "recalibration": result}))


# --- train-compare -------------------------------------------------------------------------------

def comparison_document(comparison: Comparison) -> dict[str, Any]:
    """`{"schema": 1, "dropcheck_version", "train_compare": Comparison.to_dict()}`: also the --resume file."""
    return {"schema": SCHEMA, "dropcheck_version": __version__, "train_compare": comparison.to_dict()}


def comparison_from_document(text: str, where: str) -> Comparison:
    """The Comparison in a train-compare results file (the --resume of an earlier run)."""
    try:
        doc = json.loads(text)
        return Comparison.from_dict(doc["train_compare"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DropcheckError("usage", f"--resume: {where} is not a train-compare results file",
                             "resume from the --output of an earlier train-compare") from exc
