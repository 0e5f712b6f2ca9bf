"""The rule catalogue: rules/*.md -> `Rule` records, --select/--ignore resolution, and what
the fixer reads from the pages (which rule a move is credited to, which rules fix verifies).

Standard library and records only: `dropcheck rules` and `dropcheck explain` must stay
fast, so nothing here may import torch, even indirectly. One page's format is rule_page's.
"""
from __future__ import annotations

import functools
import pathlib
from collections.abc import Iterable

from .rule_page import FRONT_MATTER_KEYS, HEADINGS, read_rule
from ..records import DropcheckError, Rule, SiteKind

__all__ = ["FRONT_MATTER_KEYS", "HEADINGS", "describe_codes", "get_rule", "load_rules", "moved_by_fix",
           "read_rule", "resolve_selection", "rules_dir", "verified_by_fix"]

_REINSTALL = "reinstall dropcheck; the wheel ships the catalogue in dropcheck/rules"
_SELECTOR_HINT = (
    "use a code (DC001), a prefix (DC00), a rule name (dropout-before-batchnorm) or ALL; "
    "dropcheck rules lists them"
)


def rules_dir() -> pathlib.Path:
    """The catalogue shipped inside the package (wheel), else the repository's rules/."""
    package = pathlib.Path(__file__).resolve().parents[1]  # dropcheck/, above analysis/
    shipped = package / "rules"
    return shipped if shipped.is_dir() else package.parent / "rules"


@functools.cache
def load_rules() -> list[Rule]:
    """Every rule in the catalogue, sorted by code. Cached: treat the list as read-only."""
    directory = rules_dir()
    if not directory.is_dir():
        raise DropcheckError("catalog", f"rule catalogue not found at {directory}", _REINSTALL)
    files = [path for path in sorted(directory.glob("*.md")) if path.name.lower() != "readme.md"]
    if not files:
        raise DropcheckError("catalog", f"rule catalogue {directory} has no rule files", _REINSTALL)
    rules = [read_rule(path) for path in files]
    _check_unique(rules)
    _check_moves_unique(rules)
    return sorted(rules, key=lambda rule: rule.code)


def get_rule(key: str) -> Rule:
    """One rule by code (any case: "dc001") or by name ("dropout-before-batchnorm")."""
    wanted = key.strip().casefold()
    for rule in load_rules():
        if wanted in (rule.code.casefold(), rule.name):
            return rule
    hint = f"dropcheck rules lists them: {_all_codes()}"
    raise DropcheckError("usage", f"unknown rule '{key}'", hint=hint)


def resolve_selection(
    select: Iterable[str] | None = None, ignore: Iterable[str] | None = None
) -> frozenset[str]:
    """The enabled rule codes: `select` (all when empty) minus `ignore`.

    Items are codes, code prefixes, rule names or ALL; an item may also hold several,
    comma-separated, as `--select DC001,DC002` and config strings do.
    """
    rules = load_rules()
    selected_items = _split_items(select)
    enabled = _expand(selected_items, rules) if selected_items else {rule.code for rule in rules}
    return frozenset(enabled - _expand(_split_items(ignore), rules))


# --- selection ---------------------------------------------------------------------


def _split_items(values: Iterable[str] | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):  # one string is one item, not an iterable of characters
        values = [values]
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _expand(items: list[str], rules: list[Rule]) -> set[str]:
    codes: set[str] = set()
    for item in items:
        matched = _match(item, rules)
        if not matched:
            raise DropcheckError("usage", f"unknown rule or prefix '{item}'", hint=_SELECTOR_HINT)
        codes |= matched
    return codes


def _match(item: str, rules: list[Rule]) -> set[str]:
    upper = item.upper()
    if upper == "ALL":
        return {rule.code for rule in rules}
    by_code = {rule.code for rule in rules if rule.code.startswith(upper)}
    return by_code or {rule.code for rule in rules if rule.name == item.casefold()}


def _all_codes() -> str:
    return ", ".join(rule.code for rule in load_rules())


# --- what the fixer reads -----------------------------------------------------------


def moved_by_fix() -> dict[SiteKind, str]:
    """Site kind -> the rule a move from there is credited to (the pages' `fix-moves`).

    A rule whose fix moves every dropout it flags, whatever the kind (`fix-moves: any`, DC004),
    is not in this table: the fixer finds those dropouts by the rule's own condition.
    """
    return {SiteKind(kind): rule.code for rule in load_rules() for kind in rule.fix_moves if kind != Rule.ANY}


def verified_by_fix() -> frozenset[str]:
    """Codes a re-audit of a fixed model must not show (the pages' `fix-verifies: yes`)."""
    return frozenset(rule.code for rule in load_rules() if rule.fix_verifies)


def describe_codes(codes: Iterable[str]) -> str:
    """Codes for people: a run of three or more consecutive ones as "DC001-DC004", else a comma list."""
    ordered = sorted(codes)
    numbers = [int(code[2:]) for code in ordered]  # codes are DC + three digits (rule_page checks)
    consecutive = len(numbers) > 2 and numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    return f"{ordered[0]}-{ordered[-1]}" if consecutive else ", ".join(ordered)


# --- consistency across pages ------------------------------------------------------


def _check_unique(rules: list[Rule]) -> None:
    for attribute in ("code", "name"):
        seen: dict[str, str] = {}
        for rule in rules:
            value = getattr(rule, attribute)
            if value in seen:
                files = f"{seen[value]} and {pathlib.Path(rule.path).name}"
                message = f"rule {attribute} '{value}' is used by both {files}"
                raise DropcheckError("catalog", message, hint="codes and names are never reused")
            seen[value] = pathlib.Path(rule.path).name


def _check_moves_unique(rules: list[Rule]) -> None:
    """A move is credited to one rule: no two pages may name the same site kind in fix-moves."""
    claimed: dict[str, str] = {}
    for rule in rules:
        for kind in rule.fix_moves:
            if kind != Rule.ANY and kind in claimed:
                files = f"{claimed[kind]} and {pathlib.Path(rule.path).name}"
                message = f"fix-moves site kind '{kind}' is claimed by both {files}"
                raise DropcheckError("catalog", message, hint="a move from one site kind is credited to one rule")
            claimed[kind] = pathlib.Path(rule.path).name
