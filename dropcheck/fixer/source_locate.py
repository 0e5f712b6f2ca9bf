"""Find what an edit request names in a parsed source file: a class, its method, the calls in it,
and the statement that holds a call.

One `SourceIndex` wraps one version of the module with the metadata the edits read (parents,
lines, the qualified names of called functions). Edits make a new module, so each edit reads a
fresh index: libcst trees are immutable and nodes are matched by identity.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping

import libcst as cst
import libcst.matchers as m
from libcst.metadata import CodeRange, MetadataWrapper, PositionProvider, QualifiedNameProvider, QualifiedNameSource

from .source_requests import CallSite


class CannotEdit(Exception):
    """A request that does not apply to this source; the message says why (and what to do)."""


class _ImportedCallees(cst.CSTVisitor):
    """The import-resolved names of every called function: `F.dropout` -> torch.nn.functional.dropout."""

    METADATA_DEPENDENCIES = (QualifiedNameProvider,)

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[cst.Call, frozenset[str]] = {}

    def visit_Call(self, node: cst.Call) -> None:
        names = self.get_metadata(QualifiedNameProvider, node.func, set())
        self.found[node] = frozenset(q.name for q in names if q.source is QualifiedNameSource.IMPORT)


class SourceIndex:
    """One version of a module, with parents, line numbers and imported callee names."""

    def __init__(self, module: cst.Module) -> None:
        # no defensive copy: every edit builds a new module in which no node appears twice
        self._wrapper = MetadataWrapper(module, unsafe_skip_copy=True)
        self.module = self._wrapper.module
        self._parents = _parents(self.module)
        self._positions: Mapping[cst.CSTNode, CodeRange] | None = None  # computed when a message needs a line
        self._callees: dict[cst.Call, frozenset[str]] | None = None  # computed when a request names a function

    # -- tree navigation -------------------------------------------------------------------------

    def span(self, node: cst.CSTNode) -> CodeRange:
        if self._positions is None:
            self._positions = self._wrapper.resolve(PositionProvider)
        return self._positions[node]

    def line(self, node: cst.CSTNode) -> int:
        return self.span(node).start.line

    def parent(self, node: cst.CSTNode) -> cst.CSTNode:
        return self._parents[node]

    def ancestors(self, node: cst.CSTNode) -> Iterator[cst.CSTNode]:
        while node in self._parents:
            node = self._parents[node]
            yield node

    def imported_names(self, call: cst.Call) -> frozenset[str]:
        """What the call's function is, through the file's imports (empty for locals and methods)."""
        if self._callees is None:
            callees = _ImportedCallees()
            self._wrapper.visit(callees)
            self._callees = callees.found
        return self._callees.get(call, frozenset())

    def code(self, node: cst.CSTNode) -> str:
        return self.module.code_for_node(node)

    # -- classes and methods ---------------------------------------------------------------------

    def find_class(self, name: str) -> cst.ClassDef:
        found = [n for n in descendants(self.module) if isinstance(n, cst.ClassDef) and n.name.value == name]
        if not found:
            raise CannotEdit(f"no class {name} in this file")
        if len(found) > 1:
            raise CannotEdit(f"class {name} is defined {len(found)} times (lines {self._lines(found)}); "
                             "edit the one you use by hand")
        return found[0]

    def find_method(self, cls: str, name: str) -> cst.FunctionDef:
        body = self.find_class(cls).body
        statements = body.body if isinstance(body, cst.IndentedBlock) else ()
        found = [s for s in statements if isinstance(s, cst.FunctionDef) and s.name.value == name]
        if not found:
            raise CannotEdit(f"class {cls} defines no method {name} (an inherited one is edited in its own class)")
        if len(found) > 1:
            raise CannotEdit(f"{cls}.{name} is defined {len(found)} times (lines {self._lines(found)})")
        return found[0]

    @staticmethod
    def self_name(method: cst.FunctionDef) -> str:
        """The name the method gives the instance (almost always `self`)."""
        static = any(m.matches(d.decorator, m.Name("staticmethod")) for d in method.decorators)
        if static or not method.params.params:
            raise CannotEdit(f"{method.name.value} takes no instance argument, so it cannot reach self's modules")
        return method.params.params[0].name.value

    # -- calls -----------------------------------------------------------------------------------

    def matching_calls(self, site: CallSite) -> tuple[cst.FunctionDef, list[cst.Call]]:
        """The method and, in source order, the calls in it that `site.callee` names."""
        method = self.find_method(site.cls, site.method)
        self_name = self.self_name(method)
        calls = [c for c in descendants(method.body)
                 if isinstance(c, cst.Call) and self._names(c, site.callee, self_name)]
        return method, calls

    def find_call(self, site: CallSite) -> cst.Call:
        """The one call the site names; refused when it is missing or ambiguous."""
        _, calls = self.matching_calls(site)
        where = f"{site.cls}.{site.method}"
        if site.line is not None:
            calls = [c for c in calls if self._spans(c, site.line)]
            where += f" at line {site.line}"
        if not calls:
            raise CannotEdit(f"no call to {site.callee} in {where}")
        if site.occurrence is None:
            if len(calls) > 1:
                raise CannotEdit(f"{site.callee} is called {len(calls)} times in {where} "
                                 f"(lines {self._lines(calls)}); say which occurrence")
            return calls[0]
        if not 0 <= site.occurrence < len(calls):
            raise CannotEdit(f"{site.callee} is called {len(calls)} times in {where}; "
                             f"there is no occurrence {site.occurrence}")
        return calls[site.occurrence]

    def _spans(self, node: cst.CSTNode, line: int) -> bool:
        return self.span(node).start.line <= line <= self.span(node).end.line

    def _names(self, call: cst.Call, callee: str, self_name: str) -> bool:
        if callee.startswith("."):  # a tensor method, x.mean(...): not a module function, not self's
            func = call.func
            return (isinstance(func, cst.Attribute) and func.attr.value == callee[1:]
                    and not self.imported_names(call) and not m.matches(func.value, m.Name(self_name)))
        if callee == "self" or callee.startswith("self."):
            return dotted_name(call.func) == self_name + callee[len("self"):]
        return callee in self.imported_names(call) or dotted_name(call.func) == callee

    # -- statements ------------------------------------------------------------------------------

    def statement_of(self, node: cst.CSTNode) -> tuple[cst.BaseSmallStatement, cst.CSTNode] | None:
        """The small statement holding `node` and the line (or suite) holding that; None when the node
        sits in a compound statement's header (an `if` test, a `for` iterable, a decorator)."""
        for ancestor in self.ancestors(node):
            if isinstance(ancestor, cst.BaseSmallStatement):
                return ancestor, self.parent(ancestor)
            if isinstance(ancestor, (cst.BaseCompoundStatement, cst.Module)):
                return None
        return None

    def between(self, node: cst.CSTNode, outer: cst.CSTNode) -> list[cst.CSTNode]:
        """The nodes from `node`'s parent up to, not including, `outer`."""
        chain = []
        for ancestor in self.ancestors(node):
            if ancestor is outer:
                return chain
            chain.append(ancestor)
        return chain

    def enclosing_blocks(self, node: cst.CSTNode, method: cst.FunctionDef) -> tuple[cst.CSTNode, ...]:
        """The compound statements (if, for, with, try, ...) around `node` inside `method`."""
        return tuple(a for a in self.between(node, method)
                     if isinstance(a, cst.BaseCompoundStatement) and a is not node)

    def _lines(self, nodes: list[cst.CSTNode]) -> str:
        return ", ".join(str(self.line(n)) for n in nodes)


def _parents(module: cst.Module) -> dict[cst.CSTNode, cst.CSTNode]:
    # a plain walk over `children`: a third of the time of ParentNodeProvider, and every edit needs it
    parents: dict[cst.CSTNode, cst.CSTNode] = {}
    pending: list[cst.CSTNode] = [module]
    while pending:
        node = pending.pop()
        for child in node.children:
            parents[child] = node
            pending.append(child)
    return parents


def descendants(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """Every node under `node`, in source order (a plain walk: much cheaper than a matcher visitor)."""
    pending = list(reversed(node.children))
    while pending:
        current = pending.pop()
        yield current
        pending.extend(reversed(current.children))


def dotted_name(node: cst.CSTNode) -> str | None:
    """`self.block.conv2` for a chain of attributes on a name; None for anything else."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        base = dotted_name(node.value)
        return None if base is None else f"{base}.{node.attr.value}"
    return None


def free_names(expr: cst.CSTNode) -> list[cst.Name]:
    """The variables an expression reads: its Name nodes, less attribute and keyword names."""
    not_variables = {id(a.attr) for a in m.findall(expr, m.Attribute())}
    not_variables |= {id(a.keyword) for a in m.findall(expr, m.Arg()) if a.keyword is not None}
    return [n for n in m.findall(expr, m.Name()) if id(n) not in not_variables]


def is_pure_condition(expr: cst.BaseExpression, self_name: str) -> bool:
    """A test that reads only the instance and constants and calls nothing (`self.droprate > 0`):
    evaluating it anywhere in the method gives the same answer, and dropping it loses no effect."""
    effects = m.findall(expr, m.Call() | m.Await() | m.Yield() | m.NamedExpr() | m.Lambda())
    allowed = {self_name, "None", "True", "False"}
    return not effects and all(n.value in allowed for n in free_names(expr))
