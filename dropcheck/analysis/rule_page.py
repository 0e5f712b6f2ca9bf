"""One rule page (rules/DC00x-name.md) -> a validated `Rule` record.

Standard library and records only: `dropcheck rules` and `dropcheck explain` must stay
fast, so nothing here may import torch, even indirectly (check.py, which defines the
conditions and message fields a page may use, is torch-free for that reason).

A page is front matter of flat `key: value` lines between `---` lines, then a fixed
sequence of level-2 headings (style guide §3). The front matter is the rule's single
definition; the engine reads it:

    sites: branch.post_weight            site kinds it fires on, comma-separated, or `any`
    fires-when: site-kind                its condition: one of check.CONDITIONS
    message: {op}(p={p}){at} follows ... the finding's message, a template over check.MESSAGE_FIELDS
    fix: move it before ...              the finding's fix advice (a template too)
    fix.branch.pre_bn: ...               the advice for one site kind, where it differs
    fix.trunk.pre_bn@P0: ...             ... and for one paper position of that kind
    fix-action: move                     what `dropcheck fix` does with it: move, convert or none
    fix-moves: branch.post_weight        with move: the site kinds it is moved from, or `any`
    fix-verifies: yes                    fix checks that a re-audit shows none of it

The python blocks under "Example" and "Use instead" are the rule's test cases, so they
are extracted verbatim.
"""
from __future__ import annotations

import pathlib
import re
import string
import textwrap

from .check import CONDITIONS, MESSAGE_FIELDS
from ..records import DropcheckError, Rule, Severity, SiteKind

FRONT_MATTER_KEYS = ("code", "name", "severity", "sites", "fires-when", "paper", "summary", "message", "fix",
                     "fix-action", "fix-moves", "fix-verifies", "example-dropout")
FIX_ACTIONS = ("move", "convert", "none")
HEADINGS = (
    "What it flags",
    "Why it hurts",
    "Known limits",
    "Example",
    "Use instead",
    "Fix",
    "References",
)
_OPTIONAL_KEYS = {"fix-moves"}  # only with `fix-action: move`
_ADVICE_PREFIX = "fix."  # fix.<site kind>: the advice for that kind
_FILE_NAME = re.compile(r"^(DC\d{3})-([a-z0-9]+(?:-[a-z0-9]+)*)\.md$")
_KEY_VALUE = re.compile(r"^([a-z][a-z0-9_.-]*(?:@[A-Za-z0-9]+)?):(.*)$")
_FENCE_OPEN = re.compile(r"^(`{3,}|~{3,})\s*([^\s`]*)")
_PYTHON_INFO = {"python", "py"}
_SITE_KINDS = tuple(kind.value for kind in SiteKind)
_YES_NO = {"yes": True, "no": False}
_FORMAT_HINT = "compare it with another file in rules/; the format is fixed (style guide §3)"


def read_rule(path: pathlib.Path) -> Rule:
    """Parse and validate one rule file; any problem is a "catalog" error naming the file."""
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise catalog_error(path, f"cannot be read ({exc})") from exc
    fields, body = _split_front_matter(path, text)
    code, name = _check_file_name(path, fields)
    sections = _sections(path, body)
    sites = _sites(path, "sites", fields["sites"])
    fix_action = _choice(path, "fix-action", fields["fix-action"], FIX_ACTIONS)
    return Rule(
        code=code,
        name=name,
        severity=_severity(path, fields["severity"]),
        summary=fields["summary"],
        sites=sites,
        paper=fields["paper"],
        path=str(path),
        body=body,
        example_bad=_single_python_block(path, "Example", sections["Example"]),
        example_good=_single_python_block(path, "Use instead", sections["Use instead"]),
        example_dropout=fields["example-dropout"],
        fires_when=_choice(path, "fires-when", fields["fires-when"], tuple(CONDITIONS)),
        message=_template(path, "message", fields["message"]),
        fix=_template(path, "fix", fields["fix"]),
        fix_by_site=_advice_by_site(path, fields, sites),
        fix_action=fix_action,
        fix_moves=_fix_moves(path, fields, sites, fix_action),
        fix_verifies=_fix_verifies(path, fields["fix-verifies"], fix_action),
    )


def catalog_error(path: pathlib.Path, problem: str) -> DropcheckError:
    return DropcheckError("catalog", f"rule file {path.name}: {problem}", hint=_FORMAT_HINT)


# --- front matter ------------------------------------------------------------------


def _split_front_matter(path: pathlib.Path, text: str) -> tuple[dict[str, str], str]:
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        raise catalog_error(path, "must start with a '---' front matter line")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise catalog_error(path, "front matter is not closed by a '---' line") from None
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
            raise catalog_error(path, problem)
        key, value = match.group(1), _unquote(match.group(2).strip())
        _check_key(path, key)
        if key in fields:
            raise catalog_error(path, f"front matter key '{key}' is given twice")
        if not value:  # also what a YAML list on the following lines looks like
            problem = f"front matter key '{key}' is empty (values are flat: lists are comma-separated)"
            raise catalog_error(path, problem)
        fields[key] = value
    missing = [key for key in FRONT_MATTER_KEYS if key not in fields and key not in _OPTIONAL_KEYS]
    if missing:
        raise catalog_error(path, f"front matter lacks {', '.join(missing)}")
    return fields


def _check_key(path: pathlib.Path, key: str) -> None:
    if key in FRONT_MATTER_KEYS:
        return
    if key.startswith(_ADVICE_PREFIX):
        kind, _, position = key[len(_ADVICE_PREFIX) :].partition("@")  # fix.<kind>@<paper position>
        if kind in _SITE_KINDS and (not position or position.isalnum()):
            return
        problem = (f"front matter key '{key}' names no site kind (fix.<site kind> or fix.<site kind>@<position>, "
                   f"kinds: {', '.join(_SITE_KINDS)})")
        raise catalog_error(path, problem)
    raise catalog_error(path, f"unknown front matter key '{key}'")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1].strip()
    return value


def _check_file_name(path: pathlib.Path, fields: dict[str, str]) -> tuple[str, str]:
    match = _FILE_NAME.match(path.name)
    if not match:
        problem = "name must be '<code>-<rule-name>.md', e.g. DC001-dropout-before-batchnorm.md"
        raise catalog_error(path, problem)
    if fields["code"] != match.group(1):
        raise catalog_error(path, f"code '{fields['code']}' does not match the file name")
    if fields["name"] != match.group(2):
        raise catalog_error(path, f"name '{fields['name']}' does not match the file name")
    return fields["code"], fields["name"]


def _severity(path: pathlib.Path, value: str) -> Severity:
    try:
        return Severity(value)
    except ValueError:
        allowed = ", ".join(s.value for s in Severity)
        raise catalog_error(path, f"severity '{value}' is not one of {allowed}") from None


def _choice(path: pathlib.Path, key: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise catalog_error(path, f"{key} '{value}' is not one of {', '.join(allowed)}")
    return value


def _sites(path: pathlib.Path, key: str, value: str) -> tuple[str, ...]:
    """Site kinds, comma-separated, or `any` alone."""
    sites = tuple(site.strip() for site in value.split(",") if site.strip())
    if Rule.ANY in sites:
        if len(sites) > 1:
            raise catalog_error(path, f"{key}: '{Rule.ANY}' stands alone, without site kinds beside it")
        return sites
    unknown = [site for site in sites if site not in _SITE_KINDS]
    if unknown:
        raise catalog_error(path, f"{key}: unknown site kind {', '.join(unknown)}")
    return sites


def _template(path: pathlib.Path, key: str, value: str) -> str:
    """A message or advice template: only MESSAGE_FIELDS, as plain `{name}` (write `{{` for a brace)."""
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as exc:
        problem = f"{key} is not a valid template ({exc}; write {{{{ for a literal brace)"
        raise catalog_error(path, problem) from None
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if field not in MESSAGE_FIELDS:
            problem = f"{key} uses '{{{field}}}', which is not one of {', '.join(MESSAGE_FIELDS)}"
            raise catalog_error(path, problem)
        if spec or conversion:
            written = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise catalog_error(path, f"{key}: '{written}' takes no format or conversion: fields are already text")
    return value


def _advice_by_site(path: pathlib.Path, fields: dict[str, str],
                    sites: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    advice = []
    for key, value in fields.items():
        if not key.startswith(_ADVICE_PREFIX):
            continue
        kind = key[len(_ADVICE_PREFIX) :]
        if Rule.ANY not in sites and kind.partition("@")[0] not in sites:  # advice nobody could ever read
            raise catalog_error(path, f"{key}: the rule does not fire on {kind} (sites: {', '.join(sites)})")
        advice.append((kind, _template(path, key, value)))
    return tuple(advice)


def _fix_moves(path: pathlib.Path, fields: dict[str, str], sites: tuple[str, ...],
               fix_action: str) -> tuple[str, ...]:
    if fix_action != "move":
        if "fix-moves" in fields:
            raise catalog_error(path, f"fix-moves goes with fix-action: move, not {fix_action}")
        return ()
    if "fix-moves" not in fields:
        raise catalog_error(path, "fix-action: move needs fix-moves (the site kinds it is moved from, or any)")
    moves = _sites(path, "fix-moves", fields["fix-moves"])
    outside = [kind for kind in moves if kind != Rule.ANY and Rule.ANY not in sites and kind not in sites]
    if outside:
        problem = f"fix-moves: the rule does not fire on {', '.join(outside)} (sites: {', '.join(sites)})"
        raise catalog_error(path, problem)
    return moves


def _fix_verifies(path: pathlib.Path, value: str, fix_action: str) -> bool:
    verifies = _YES_NO.get(value)
    if verifies is None:
        raise catalog_error(path, f"fix-verifies '{value}' is not one of yes, no")
    if verifies and fix_action == "none":  # fix cannot promise a clean re-audit of what it leaves alone
        raise catalog_error(path, "fix-verifies: yes needs a fix-action other than none")
    return verifies


# --- body --------------------------------------------------------------------------


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
        raise catalog_error(path, "a code fence is never closed")
    if tuple(titles) != HEADINGS:
        expected, found = ", ".join(HEADINGS), ", ".join(titles) or "none"
        problem = f"level-2 headings must be {expected}, in this order; found {found}"
        raise catalog_error(path, problem)
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
        raise catalog_error(path, problem)
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
