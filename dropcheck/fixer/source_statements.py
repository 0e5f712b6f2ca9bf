"""Statement-level edits that keep the file's layout: insert a line before or after another, remove
one (its comments and blank lines stay), and append an item to a comma-separated list in the style
the list already has.

Indentation is the block's, not the statement's, in libcst; so a new statement only needs the
right place in the right block to look as if the user wrote it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import libcst as cst

from .source_locate import CannotEdit, SourceIndex, is_pure_condition

Item = TypeVar("Item", cst.Arg, cst.ImportAlias)


def replace_node(index: SourceIndex, old: cst.CSTNode, new: cst.CSTNode) -> cst.Module:
    return index.module.deep_replace(old, new)


def replace_nodes(index: SourceIndex, replacements: dict[cst.CSTNode, cst.CSTNode]) -> cst.Module:
    """Several disjoint replacements in one pass (nodes are matched by identity)."""
    return index.module.visit(_Replacer(replacements))


class _Replacer(cst.CSTTransformer):
    def __init__(self, replacements: dict[cst.CSTNode, cst.CSTNode]) -> None:
        super().__init__()
        self._replacements = replacements

    def on_leave(self, original_node: cst.CSTNode, updated_node: cst.CSTNode) -> cst.CSTNode:
        return self._replacements.get(original_node, updated_node)


def assignment_line(name: str, value: cst.BaseExpression) -> cst.SimpleStatementLine:
    """`name = value` on a line of its own."""
    return cst.SimpleStatementLine([cst.Assign(targets=[cst.AssignTarget(cst.Name(name))], value=value)])


def insert_before(index: SourceIndex, anchor: cst.BaseStatement, new: cst.BaseStatement) -> cst.Module:
    """Put `new` just above `anchor`: blank lines above the anchor stay above both, the anchor's own
    comment lines stay attached to it."""
    block, body, at = _place_in_block(index, anchor)
    leading = list(anchor.leading_lines)
    blanks = 0
    while blanks < len(leading) and leading[blanks].comment is None:
        blanks += 1
    body[at:at + 1] = [new.with_changes(leading_lines=leading[:blanks]),
                       anchor.with_changes(leading_lines=leading[blanks:])]
    return replace_node(index, block, block.with_changes(body=body))


def insert_after(index: SourceIndex, anchor: cst.BaseStatement, new: cst.BaseStatement) -> cst.Module:
    block, body, at = _place_in_block(index, anchor)
    body.insert(at + 1, new)
    return replace_node(index, block, block.with_changes(body=body))


def remove_small_statement(index: SourceIndex, small: cst.BaseSmallStatement, self_name: str) -> cst.Module:
    """Remove one statement. A line with others (`a = 1; out = self.drop(out)`) keeps them; an
    emptied `if <pure test>:` without else goes with it; any other emptied block gets `pass`."""
    holder = index.parent(small)
    if len(holder.body) > 1:
        kept = [s for s in holder.body if s is not small]
        if holder.body[-1] is small:  # `a = 1; out = self.drop(out)` leaves no dangling `;`
            kept[-1] = kept[-1].with_changes(semicolon=cst.MaybeSentinel.DEFAULT)
        return replace_node(index, holder, holder.with_changes(body=kept))
    if isinstance(holder, cst.SimpleStatementSuite):  # `if c: out = self.drop(out)` on one line
        owner = index.parent(holder)
        if _is_removable_guard(index, owner, self_name):
            return remove_statement(index, owner, self_name)
        return replace_node(index, small, cst.Pass())
    return remove_statement(index, holder, self_name)


def remove_statement(index: SourceIndex, statement: cst.BaseStatement, self_name: str) -> cst.Module:
    block, body, at = _place_in_block(index, statement)
    del body[at]
    if at < len(body):  # the removed line's comments and blank lines stay where they were
        follower = body[at]
        body[at] = follower.with_changes(leading_lines=(*statement.leading_lines, *follower.leading_lines))
    if not body:
        owner = index.parent(block)
        if _is_removable_guard(index, owner, self_name):
            return remove_statement(index, owner, self_name)
        body = [cst.SimpleStatementLine([cst.Pass()], leading_lines=statement.leading_lines)]
    return replace_node(index, block, block.with_changes(body=body))


def sole_guard(index: SourceIndex, statement: cst.CSTNode, self_name: str) -> cst.If | None:
    """The `if self.droprate > 0:` whose only statement is `statement`, when the guard could stand
    anywhere in the method (no else, a pure test); None otherwise."""
    block = index.parent(statement)
    if isinstance(block, (cst.IndentedBlock, cst.SimpleStatementSuite)) and len(block.body) == 1:
        owner = index.parent(block)
        if _is_removable_guard(index, owner, self_name):
            return owner
    return None


def _is_removable_guard(index: SourceIndex, node: cst.CSTNode, self_name: str) -> bool:
    return (isinstance(node, cst.If) and node.orelse is None and is_pure_condition(node.test, self_name)
            and isinstance(index.parent(node), (cst.IndentedBlock, cst.Module)))


def _place_in_block(index: SourceIndex, statement: cst.CSTNode) -> tuple[cst.CSTNode, list, int]:
    """The block (indented block or module) that holds `statement`, its statements, and the position."""
    block = index.parent(statement)
    if not isinstance(block, (cst.IndentedBlock, cst.Module)):
        raise CannotEdit(f"line {index.line(statement)} is not a statement of its own block")
    body = list(block.body)
    at = next(i for i, s in enumerate(body) if s is statement)
    return block, body, at


def append_item(items: Sequence[Item], new: Item) -> tuple[Item, ...]:
    """`items` with `new` at the end, separated the way the list separates its items: one line or one
    item per line, with or without a trailing comma. A comment after the last item stays on its line."""
    if not items:
        return (new,)
    last = items[-1]
    separator = _clean_comma(items[-2].comma) if len(items) > 1 else None
    if not isinstance(separator, cst.Comma):
        separator = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
    if not isinstance(last.comma, cst.Comma):  # no trailing comma: the new item ends the list bare
        return (*items[:-1], last.with_changes(comma=separator), new)
    # a trailing comma: the new item takes it (and the line break before the bracket); the old
    # last item takes the usual separator, keeping its own comment
    last_comma = separator
    own = last.comma.whitespace_after
    if isinstance(own, cst.ParenthesizedWhitespace) and isinstance(separator.whitespace_after,
                                                                  cst.ParenthesizedWhitespace):
        last_comma = separator.with_changes(
            whitespace_after=separator.whitespace_after.with_changes(first_line=own.first_line))
    return (*items[:-1], last.with_changes(comma=last_comma), new.with_changes(comma=_clean_comma(last.comma)))


def _clean_comma(comma: cst.Comma | cst.MaybeSentinel) -> cst.Comma | cst.MaybeSentinel:
    """The comma without a comment after it (copying a separator must not copy its comment)."""
    if isinstance(comma, cst.Comma) and isinstance(comma.whitespace_after, cst.ParenthesizedWhitespace):
        after = comma.whitespace_after.with_changes(first_line=cst.TrailingWhitespace(), empty_lines=())
        return comma.with_changes(whitespace_after=after)
    return comma
