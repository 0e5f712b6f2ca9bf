"""Inline suppressions: `# dropcheck: ignore[DC002]`, `# dropcheck: ignore[DC002, DC004]` or a bare
`# dropcheck: ignore` on the line of a dropout.

A comment silences a finding when it sits on the finding's source line, or on the source or
declaration line of the finding's dropout (for an element of an `nn.Sequential(...)` spread over
lines, its own line: analysis.declarations), or on the last line of a constructor call spread
over lines. Codes may also be prefixes (`DC00`) or rule names. Suppressed findings move
from `Report.findings` to `Report.suppressed`, so they are counted, never silently lost.
Never imports torch; each file is read (and parsed) once per (path, mtime, size).
"""
from __future__ import annotations

import ast
import io
import os
import re
import tokenize
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..records import Finding, Report, Site, SourceLocation

_IGNORE = re.compile(r"#\s*dropcheck\s*:\s*ignore\b(?:\[([^\]]*)\])?", re.IGNORECASE)
_cache: dict[str, tuple[tuple[int, int], dict[int, IgnoreComment]]] = {}  # file -> ((mtime, size), ignores)
_trees: dict[str, tuple[tuple[int, int], ast.AST | None]] = {}  # file -> ((mtime, size), syntax tree)


@dataclass(frozen=True)
class IgnoreComment:
    """One `# dropcheck: ignore[...]` comment; `codes` is empty for a bare ignore."""

    file: str
    line: int
    codes: tuple[str, ...] = ()

    def covers(self, finding: Finding) -> bool:
        return not self.codes or any(_matches(code, finding) for code in self.codes)

    def text(self, codes: Sequence[str] | None = None) -> str:
        shown = self.codes if codes is None else tuple(codes)
        return "dropcheck: ignore" + (f"[{', '.join(shown)}]" if shown else "")


@dataclass(frozen=True)
class UnusedIgnore:
    """An ignore comment (or some of its codes) that silenced nothing."""

    file: str
    line: int
    codes: tuple[str, ...]  # the unused codes; empty for a bare ignore

    def to_dict(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "codes": list(self.codes)}

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: unused " + IgnoreComment(self.file, self.line, self.codes).text()


def _matches(code: str, finding: Finding) -> bool:
    return finding.rule.startswith(code.upper()) or code.casefold() == finding.name


def ignores_in(file: str) -> dict[int, IgnoreComment]:
    """The ignore comments of a Python file by line; empty if the file cannot be read."""
    try:
        stat = os.stat(file)
    except OSError:
        return {}
    key = (stat.st_mtime_ns, stat.st_size)
    cached = _cache.get(file)
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        with open(file, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return {}
    found = _parse(file, text)
    _cache[file] = (key, found)
    return found


def _parse(file: str, text: str) -> dict[int, IgnoreComment]:
    found: dict[int, IgnoreComment] = {}
    for line, comment in _comments(text):
        match = _IGNORE.search(comment)
        if match is None:
            continue
        codes = tuple(c.strip() for c in (match.group(1) or "").split(",") if c.strip())
        found[line] = IgnoreComment(file, line, codes)
    return found


def _comments(text: str) -> Iterable[tuple[int, str]]:
    """(line, comment text) for each comment; a file that does not tokenize falls back to lines."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return [(n, line[line.index("#"):]) for n, line in enumerate(text.splitlines(), 1) if "#" in line]
    return [(tok.start[0], tok.string) for tok in tokens if tok.type == tokenize.COMMENT]


def _lines_of(finding: Finding, site: Site | None) -> list[SourceLocation]:
    places = [finding.source, *((site.source, site.declared) if site is not None else ())]
    if site is not None and site.declared is not None:
        places.extend(_element_lines(site.declared, site))
    return list(dict.fromkeys(p for p in places if p is not None))


def _element_lines(declared: SourceLocation, site: Site) -> list[SourceLocation]:
    """The lines of the dropout's own constructor call (its first and last, where it spans several)
    and the first line of each container call around it (`self.head = nn.Sequential(` covers its
    elements). Its own call is the one on the declaration line named like its class; where the
    declaration line is still the container's, its child index picks the argument, else the one
    call inside named like the dropout's class."""
    tree = _syntax_tree(declared.file)
    if tree is None:
        return []
    child = (site.module or "").rsplit(".", 1)[-1]
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    lines: list[int] = []
    for call in (n for n in calls if n.lineno == declared.line):
        if _called(call) == site.op:  # its own call (load gives container elements their own line)
            element: ast.AST | None = call
        elif child.isdigit() and int(child) < len(call.args) and isinstance(call.args[int(child)], ast.Call):
            element = call.args[int(child)]
        else:
            named = [n for n in ast.walk(call) if n is not call and isinstance(n, ast.Call) and _called(n) == site.op]
            element = named[0] if len(named) == 1 else None
        if element is None:
            continue
        lines.extend((element.lineno, getattr(element, "end_lineno", None) or element.lineno))
        lines.extend(c.lineno for c in calls if c is not element and _encloses(c, element))
        break
    return [SourceLocation(declared.file, line) for line in dict.fromkeys(lines) if line != declared.line]


def _encloses(outer: ast.AST, inner: ast.AST) -> bool:
    end = getattr(outer, "end_lineno", None) or outer.lineno
    return outer.lineno <= inner.lineno <= end and any(n is inner for n in ast.walk(outer))


def _called(call: ast.Call) -> str | None:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _syntax_tree(file: str) -> ast.AST | None:
    try:
        stat = os.stat(file)
    except OSError:
        return None
    key = (stat.st_mtime_ns, stat.st_size)
    cached = _trees.get(file)
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        with open(file, encoding="utf-8", errors="replace") as handle:
            tree: ast.AST | None = ast.parse(handle.read())
    except (OSError, SyntaxError, ValueError):
        tree = None
    _trees[file] = (key, tree)
    return tree


def matching_comment(finding: Finding, site: Site | None) -> IgnoreComment | None:
    """The ignore comment that silences `finding`, if any."""
    for place in _lines_of(finding, site):
        comment = ignores_in(place.file).get(place.line)
        if comment is not None and comment.covers(finding):
            return comment
    return None


def apply_ignores(report: Report) -> Report:
    """Move the findings an ignore comment silences from `report.findings` to `report.suppressed`."""
    sites = {site.id: site for site in report.dropouts}
    kept: list[Finding] = []
    for finding in report.findings:
        if matching_comment(finding, sites.get(finding.dropout)) is not None:
            report.suppressed.append(finding)
        else:
            kept.append(finding)
    report.findings = kept
    return report


def unused_ignores(reports: Sequence[Report]) -> list[UnusedIgnore]:
    """Ignore comments in the files of the audited sites that silenced no finding of any report.

    Each unused one is also added to the first report whose sites live in its file (its
    `unused_ignores` and a note), so text and JSON both show it.
    """
    used: dict[tuple[str, int], set[str]] = {}
    for report in reports:
        sites = {site.id: site for site in report.dropouts}
        for finding in report.suppressed:
            site = sites.get(finding.dropout)
            for place in _lines_of(finding, site):
                comment = ignores_in(place.file).get(place.line)
                if comment is not None and comment.covers(finding):
                    used.setdefault((comment.file, comment.line), set()).update(
                        [c for c in comment.codes if _matches(c, finding)] or [""])
    seen: set[str] = set()
    found: list[UnusedIgnore] = []
    for report in reports:
        if report.status != "ok":
            continue
        report.unused_ignores = []
        for file in _files(report):
            if file in seen:
                continue
            seen.add(file)
            for line, comment in sorted(ignores_in(file).items()):
                hits = used.get((file, line))
                if hits is None:
                    unused = UnusedIgnore(file, line, comment.codes)
                elif comment.codes and set(comment.codes) - hits:
                    unused = UnusedIgnore(file, line, tuple(c for c in comment.codes if c not in hits))
                else:
                    continue
                report.unused_ignores.append(unused)
                report.notes.append(str(unused))
                found.append(unused)
    return found


def _files(report: Report) -> list[str]:
    places = [p for site in report.dropouts for p in (site.source, site.declared) if p is not None]
    return list(dict.fromkeys(p.file for p in places))
