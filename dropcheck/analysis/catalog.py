"""The rule catalogue: rules/*.md -> `Rule` records, and --select/--ignore resolution.

Standard library and records only: `dropcheck rules` and `dropcheck explain` must stay
fast, so nothing here may import torch, even indirectly.

A rule file is front matter of flat `key: value` lines between `---` lines, then a fixed
sequence of level-2 headings (style guide §3). The python blocks under "Example" and
"Use instead" are the rule's test cases, so they are extracted verbatim.
"""
from __future__ import annotations

import functools
import pathlib
import re
import textwrap
from collections.abc import Iterable

from ..records import DropcheckError, Rule, Severity, SiteKind

FRONT_MATTER_KEYS = ("code", "name", "severity", "sites", "paper", "summary", "example-dropout")
HEADINGS = (
    "What it flags",
    "Why it hurts",
    "Known limits",
    "Example",
    "Use instead",
    "Fix",
    "References",
)
_FILE_NAME = re.compile(r"^(DC\d{3})-([a-z0-9]+(?:-[a-z0-9]+)*)\.md$")
_KEY_VALUE = re.compile(r"^([a-z][a-z-]*):(.*)$")
_FENCE_OPEN = re.compile(r"^(`{3,}|~{3,})\s*([^\s`]*)")
_PYTHON_INFO = {"python", "py"}
_SITE_KINDS = {kind.value for kind in SiteKind}
_REINSTALL = "reinstall dropcheck; the wheel ships the catalogue in dropcheck/rules"
_FORMAT_HINT = "compare it with another file in rules/; the format is fixed (style guide §3)"
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


def read_rule(path: pathlib.Path) -> Rule:
    """Parse and validate one rule file; any problem is a "catalog" error naming the file."""
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _catalog_error(path, f"cannot be read ({exc})") from exc
    fields, body = _split_front_matter(path, text)
    code, name = _check_file_name(path, fields)
    sections = _sections(path, body)
    return Rule(
        code=code,
        name=name,
        severity=_severity(path, fields["severity"]),
        summary=fields["summary"],
        sites=_sites(path, fields["sites"]),
        paper=fields["paper"],
        path=str(path),
        body=body,
        example_bad=_single_python_block(path, "Example", sections["Example"]),
        example_good=_single_python_block(path, "Use instead", sections["Use instead"]),
        example_dropout=fields["example-dropout"],
    )


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


# --- parsing -----------------------------------------------------------------------


def _catalog_error(path: pathlib.Path, problem: str) -> DropcheckError:
    return DropcheckError("catalog", f"rule file {path.name}: {problem}", hint=_FORMAT_HINT)


def _split_front_matter(path: pathlib.Path, text: str) -> tuple[dict[str, str], str]:
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        raise _catalog_error(path, "must start with a '---' front matter line")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise _catalog_error(path, "front matter is not closed by a '---' line") from None
    fields = _parse_fields(path, lines[1:end])
    body = "\n".join(lines[end + 1 :]).strip("\n") + "\n"
    return fields, body


def _parse_fields(path: pathlib.Path, lines: list[str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in lines:
        if not line.strip():
            continue
        match = _KEY_VALUE.match(line)
        if not match:  # indented (nested) values and YAML list items land here
            problem = f"front matter line '{line.strip()}' is not a flat 'key: value'"
            raise _catalog_error(path, problem)
        key, value = match.group(1), _unquote(match.group(2).strip())
        if key not in FRONT_MATTER_KEYS:
            raise _catalog_error(path, f"unknown front matter key '{key}'")
        if key in fields:
            raise _catalog_error(path, f"front matter key '{key}' is given twice")
        if not value:  # also what a YAML list on the following lines looks like
            problem = f"front matter key '{key}' is empty (values are flat: lists are comma-separated)"
            raise _catalog_error(path, problem)
        fields[key] = value
    missing = [key for key in FRONT_MATTER_KEYS if key not in fields]
    if missing:
        raise _catalog_error(path, f"front matter lacks {', '.join(missing)}")
    return fields


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1].strip()
    return value


def _check_file_name(path: pathlib.Path, fields: dict[str, str]) -> tuple[str, str]:
    match = _FILE_NAME.match(path.name)
    if not match:
        problem = "name must be '<code>-<rule-name>.md', e.g. DC001-dropout-before-batchnorm.md"
        raise _catalog_error(path, problem)
    if fields["code"] != match.group(1):
        raise _catalog_error(path, f"code '{fields['code']}' does not match the file name")
    if fields["name"] != match.group(2):
        raise _catalog_error(path, f"name '{fields['name']}' does not match the file name")
    return fields["code"], fields["name"]


def _severity(path: pathlib.Path, value: str) -> Severity:
    try:
        return Severity(value)
    except ValueError:
        allowed = ", ".join(s.value for s in Severity)
        raise _catalog_error(path, f"severity '{value}' is not one of {allowed}") from None


def _sites(path: pathlib.Path, value: str) -> tuple[str, ...]:
    sites = tuple(site.strip() for site in value.split(",") if site.strip())
    unknown = [site for site in sites if site not in _SITE_KINDS]
    if unknown:
        raise _catalog_error(path, f"unknown site kind {', '.join(unknown)}")
    return sites


def _sections(path: pathlib.Path, body: str) -> dict[str, str]:
    """Level-2 headings -> their text; they must be exactly HEADINGS, in order."""
    titles: list[str] = []
    texts: dict[str, list[str]] = {}
    fence: str | None = None
    for line in body.splitlines():
        fence = _next_fence_state(fence, line)
        if fence is None and line.startswith("## "):
            titles.append(line[3:].strip())
            texts[titles[-1]] = []
        elif titles:
            texts[titles[-1]].append(line)
    if fence is not None:
        raise _catalog_error(path, "a code fence is never closed")
    if tuple(titles) != HEADINGS:
        expected, found = ", ".join(HEADINGS), ", ".join(titles) or "none"
        problem = f"level-2 headings must be {expected}, in this order; found {found}"
        raise _catalog_error(path, problem)
    return {title: "\n".join(lines) for title, lines in texts.items()}


def _next_fence_state(fence: str | None, line: str) -> str | None:
    """The open fence marker after `line` (None outside code), so '## ' in code is not a heading."""
    stripped = line.strip()
    if fence is None:
        match = _FENCE_OPEN.match(stripped)
        return match.group(1) if match else None
    closes = stripped.startswith(fence) and set(stripped) == {fence[0]}
    return None if closes else fence


def _single_python_block(path: pathlib.Path, section: str, text: str) -> str:
    blocks = _python_blocks(text)
    if len(blocks) != 1:
        problem = f"section '{section}' must hold exactly one ```python block, found {len(blocks)}"
        raise _catalog_error(path, problem)
    return blocks[0]


def _python_blocks(text: str) -> list[str]:
    blocks: list[str] = []
    fence: str | None = None
    is_python = False
    current: list[str] = []
    for line in text.splitlines():
        opened = _next_fence_state(fence, line)
        if fence is None and opened is not None:  # an opening line
            info = _FENCE_OPEN.match(line.strip())
            is_python = bool(info) and info.group(2).lower() in _PYTHON_INFO
            current = []
        elif fence is not None and opened is None:  # the closing line
            if is_python:  # dedent: a fence may sit indented inside a list item
                blocks.append(textwrap.dedent("\n".join(current)) + "\n")
        elif fence is not None:
            current.append(line)
        fence = opened
    return blocks


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
