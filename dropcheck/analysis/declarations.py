"""The line of each container element's own constructor call.

load records where each submodule was registered. For the elements of a container written as
one call over several lines,

    self.body = nn.Sequential(      <- every element is registered here
        nn.Linear(20, 64),
        nn.Dropout(0.3),            <- the line a user reads, and puts `# dropcheck: ignore` on
    )

that is the container's line. Here each element gets the line of its own call, read from the
file's syntax tree: positional elements by index (`nn.Sequential(a, b)`, `nn.ModuleList([a, b])`),
named ones by key (`OrderedDict([("drop", ...)])`, `nn.ModuleDict({"drop": ...})`), through nested
containers. An element the tree cannot pin down (`nn.Sequential(*layers)`) keeps the container's
line. Never imports torch; each file is parsed once per call.
"""
from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterable
from typing import Any

from ..records import SourceLocation


def element_lines(modules: Iterable[tuple[str, Any]], declared: dict[str, SourceLocation]) -> dict[str, SourceLocation]:
    """`declared` with each container element moved to its own call's line.

    `modules` is `model.named_modules()` (parents before children); only modules registered on
    the same line as their parent's container call are looked at, so a model whose submodules
    sit on lines of their own costs no parsing."""
    out = dict(declared)
    shared = Counter(declared.values())  # a line where one module alone was registered holds no container
    calls: dict[str, ast.Call] = {}  # qualname -> the call that builds it
    trees: dict[str, dict[int, list[ast.Call]] | None] = {}
    types: dict[str, str] = {}
    for qual, module in modules:
        types[qual] = type(module).__name__
        parent, _, child = qual.rpartition(".")
        here = declared.get(qual)
        if not qual or here is None or shared[here] < 2 or parent not in types:
            continue
        container = calls.get(parent) if declared.get(parent) == here else None
        if container is None:  # the parent's own call on this line (also inside a helper function)
            index = _calls_by_line(here.file, trees)
            container = _call_named(index, here.line, types[parent]) or _call_named(index, here.line, "__init__")
            if container is None:
                continue
            calls[parent] = container
        element = _element(container, child)
        if isinstance(element, ast.Call):
            calls[qual] = element
            out[qual] = SourceLocation(here.file, element.lineno)
    return out


def _calls_by_line(file: str, trees: dict[str, dict[int, list[ast.Call]] | None]) -> dict[int, list[ast.Call]]:
    if file not in trees:
        try:
            with open(file, encoding="utf-8", errors="replace") as handle:
                tree = ast.parse(handle.read())
        except (OSError, SyntaxError, ValueError):
            trees[file] = None
        else:
            index: dict[int, list[ast.Call]] = {}
            for node in ast.walk(tree):  # breadth first: an outer call comes before the calls inside it
                if isinstance(node, ast.Call):
                    index.setdefault(node.lineno, []).append(node)
            trees[file] = index
    return trees[file] or {}


def _call_named(index: dict[int, list[ast.Call]], line: int, name: str) -> ast.Call | None:
    """The outermost call on `line` of a callable named `name` (`nn.Sequential(`, `Sequential(`, or
    `super().__init__(` in a container subclass)."""
    return next((c for c in index.get(line, []) if _name(c.func) == name), None)


def _element(call: ast.Call, child: str) -> ast.AST | None:
    """The argument of a container call that builds its child `child` (a key, else an index)."""
    args = list(call.args)
    if len(args) == 1 and _is_collection(args[0]):  # ModuleList([...]), ModuleDict({...}), Sequential(OrderedDict(...))
        args = _items(args[0])
    for item in args:
        if isinstance(item, ast.Tuple) and len(item.elts) == 2 and isinstance(item.elts[0], ast.Constant) \
                and item.elts[0].value == child:
            return item.elts[1]
    if not child.isdigit():
        return None
    k = int(child)
    if k >= len(args) or any(isinstance(a, ast.Starred) for a in args[:k + 1]):
        return None  # *layers: which element is which is not in the tree
    return args[k]


def _is_collection(node: ast.AST) -> bool:
    if isinstance(node, (ast.List, ast.Tuple, ast.Dict)):
        return True
    return isinstance(node, ast.Call) and _name(node.func) in ("OrderedDict", "dict") and bool(node.args) \
        and isinstance(node.args[0], (ast.List, ast.Tuple, ast.Dict))


def _items(node: ast.AST) -> list[ast.AST]:
    """A literal list's or tuple's elements; a dict's (key, value) pairs, as tuples."""
    if isinstance(node, ast.Call):
        node = node.args[0]
    if isinstance(node, ast.Dict):
        return [ast.Tuple(elts=[k, v]) for k, v in zip(node.keys, node.values) if k is not None]
    return list(node.elts) if isinstance(node, (ast.List, ast.Tuple)) else []


def _name(func: ast.AST) -> str | None:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
