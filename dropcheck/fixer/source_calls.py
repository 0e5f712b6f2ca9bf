"""Edits of the calls in a method: remove a dropout call, apply one before or after another call,
move one (both halves or neither), and make a functional dropout follow train()/eval().

Each edit reads one `SourceIndex` and returns the new module, or raises CannotEdit with the reason.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import libcst as cst
import libcst.matchers as m

from .source_locate import CannotEdit, SourceIndex, descendants, free_names
from .source_requests import ApplyDropout, CallSite, GateOnTraining, MoveDropout, RemoveDropout, Side, Style
from .source_statements import (append_item, assignment_line, insert_after, insert_before, remove_small_statement,
                                replace_node, sole_guard)

# The functional dropouts and the name of their train/eval flag (the third positional argument).
FUNCTIONAL_DROPOUTS = {
    **{f"torch.nn.functional.{n}": "training" for n in ("dropout", "dropout1d", "dropout2d", "dropout3d",
                                                         "alpha_dropout", "feature_alpha_dropout")},
    **{f"torch.{n}": "train" for n in ("dropout", "alpha_dropout", "feature_dropout", "feature_alpha_dropout")},
}
_ELEMENTWISE_FUNCTIONS = {"dropout1d": "dropout", "dropout2d": "dropout", "dropout3d": "dropout",
                          "feature_dropout": "dropout", "feature_alpha_dropout": "alpha_dropout"}
# Expressions that never need parentheses, wherever they stand.
_ATOMS = (cst.Name, cst.Attribute, cst.Call, cst.Subscript, cst.Integer, cst.Float, cst.Imaginary,
          cst.SimpleString, cst.ConcatenatedString, cst.FormattedString, cst.List, cst.Dict, cst.Set,
          cst.ListComp, cst.SetComp, cst.DictComp, cst.Ellipsis)
# Places where any expression stands alone, so an unwrapped `a + b` needs no parentheses.
_WHOLE_EXPRESSION_SLOTS = (cst.Arg, cst.Assign, cst.AnnAssign, cst.AugAssign, cst.Return, cst.Expr, cst.Element,
                           cst.Index)
# Between these and its statement, a call may not run, or run once per item: no statement-style edit.
_CONDITIONAL_CONTEXTS = (cst.Lambda, cst.ListComp, cst.SetComp, cst.DictComp, cst.GeneratorExp, cst.IfExp,
                         cst.BooleanOperation)


@dataclass(frozen=True)
class DropoutTemplate:
    """A dropout call with a hole for its input: `{callee}(<input>, {arguments})`."""

    callee: str
    arguments: str = ""

    def call_on(self, value: cst.BaseExpression) -> cst.Call:
        rest = f", {self.arguments}" if self.arguments.strip() else ""
        try:
            call = cst.parse_expression(f"{self.callee}(_{rest})")
        except cst.ParserSyntaxError as exc:
            raise CannotEdit(f"`{self.callee}(x{rest})` is not a valid call: {exc.message}") from exc
        if not isinstance(call, cst.Call) or call.args[0].keyword is not None:
            raise CannotEdit(f"`{self.callee}` with arguments `{self.arguments}` does not make a call on the input")
        return call.with_changes(args=(call.args[0].with_changes(value=_bare(value)), *call.args[1:]))


def remove_dropout(index: SourceIndex, request: RemoveDropout) -> cst.Module:
    method, call = _method_and_call(index, request.call)
    return _without_call(index, call, index.self_name(method), _is_module_call(request.call))


def apply_dropout(index: SourceIndex, request: ApplyDropout) -> cst.Module:
    # `self` in the request means the method's instance argument, whatever the method calls it
    method, call = _method_and_call(index, request.at)
    self_name = index.self_name(method)
    template = DropoutTemplate(*(re.sub(r"\bself\b", self_name, text) for text in (request.dropout, request.arguments)))
    return _apply_at(index, call, request.at, template, request.side, request.style, prefer_statement=True)


def move_dropout(index: SourceIndex, request: MoveDropout) -> cst.Module:
    """Remove the dropout where it is and call it the same way at the new place, or refuse both."""
    source, to = request.call, request.to
    if (source.cls, source.method) != (to.cls, to.method):
        raise CannotEdit(f"a move stays inside one method; {source} and {to} are in different ones: "
                         "remove the one and apply a dropout at the other")
    method, call = _method_and_call(index, source)
    self_name = index.self_name(method)
    found = index.statement_of(call)
    was_statement = found is not None and _only_dropout(found[0], call)
    kept = _dropout_input(index, call, _is_module_call(source))
    # a guard moves only with a statement that goes entirely (`out = self.drop(out)`, not `h = ...`)
    goes = was_statement and _does_nothing(found[0].deep_replace(call, kept))
    guard = sole_guard(index, found[1], self_name) if goes else None
    comment = _own_comment(found[1]) if goes else None  # `out = self.drop(out)  # why`: the why moves too
    # the dropout must run under the same loops and conditions after the move (its guard moves with it)
    around_source = index.enclosing_blocks(guard or call, method)
    target = index.find_call(to)
    around_target = index.enclosing_blocks(target, method)
    if len(around_source) != len(around_target) or any(a is not b for a, b in zip(around_source, around_target)):
        raise CannotEdit(f"{source} (line {index.line(call)}) and {to} sit under different `if`/`for`/`with` "
                         "blocks, so moving it would change when it runs; move it by hand")
    template = _template_of(index, call, _is_module_call(source))
    if request.elementwise:
        template = _elementwise(index, call, template)
    if request.side == "before" and not to.callee.startswith("."):
        _input_argument(index, target, to)  # refused here, with the lines the user sees
    removed = SourceIndex(_without_call(index, call, self_name, _is_module_call(source)))
    moved_target = _after_removal(index, removed, to, call, kept, target)
    return _apply_at(removed, moved_target, to, template, request.side, request.style,
                     prefer_statement=was_statement, guard=guard, line=index.line(target), comment=comment)


def gate_on_training(index: SourceIndex, request: GateOnTraining) -> cst.Module:
    method, call = _method_and_call(index, request.call)
    flag_names = {FUNCTIONAL_DROPOUTS[n] for n in index.imported_names(call) if n in FUNCTIONAL_DROPOUTS}
    if not flag_names:
        raise CannotEdit(f"{request.call.callee} at line {index.line(call)} is not a functional dropout "
                         f"({', '.join(sorted(FUNCTIONAL_DROPOUTS))})")
    _refuse_star_arguments(index, call)
    keyword = flag_names.pop()
    follows = f"{index.self_name(method)}.training"
    flag = next((a for a in call.args if a.keyword is not None and a.keyword.value == keyword), None)
    positional = [a for a in call.args if a.keyword is None]
    if flag is None and len(positional) > 2:
        flag = positional[2]
    if flag is not None:
        if index.code(flag.value).strip() == follows:
            raise CannotEdit(f"the dropout at line {index.line(call)} already follows {follows}")
        return replace_node(index, flag.value, cst.parse_expression(follows))
    equal = next((a.equal for a in call.args if a.keyword is not None), cst.AssignEqual(
        whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")))
    new_arg = cst.Arg(value=cst.parse_expression(follows), keyword=cst.Name(keyword), equal=equal)
    return replace_node(index, call, call.with_changes(args=append_item(call.args, new_arg)))


# -- removing --------------------------------------------------------------------------------------


def _without_call(index: SourceIndex, call: cst.Call, self_name: str, module_call: bool) -> cst.Module:
    """Replace the call by its input; a statement left doing nothing (`out = out`) goes."""
    replacement = _unwrapped(index, call, _dropout_input(index, call, module_call))
    found = index.statement_of(call)
    if found is None:
        return replace_node(index, call, replacement)
    small, _ = found
    edited = small.deep_replace(call, replacement)
    if _does_nothing(edited):
        return remove_small_statement(index, small, self_name)
    return replace_node(index, small, edited)


def _dropout_input(index: SourceIndex, call: cst.Call, module_call: bool) -> cst.BaseExpression:
    _refuse_star_arguments(index, call)
    if module_call and len(call.args) != 1:
        raise CannotEdit(f"the dropout at line {index.line(call)} is called with {len(call.args)} arguments; "
                         "a dropout module takes one")
    return _input_argument(index, call).value


def _unwrapped(index: SourceIndex, call: cst.Call, value: cst.BaseExpression) -> cst.BaseExpression:
    """`value` where the call stood, with parentheses only where the surroundings need them."""
    if call.lpar:  # `(self.drop(a + b)) * 2`: the call's own parentheses now hold the input
        return value.with_changes(lpar=(*call.lpar, *value.lpar), rpar=(*value.rpar, *call.rpar))
    if isinstance(value, _ATOMS) or value.lpar or isinstance(index.parent(call), _WHOLE_EXPRESSION_SLOTS):
        return value
    return value.with_changes(lpar=(cst.LeftParen(),), rpar=(cst.RightParen(),))


def _does_nothing(small: cst.BaseSmallStatement) -> bool:
    """`out = out` or a bare `out`: what a dropout statement becomes once the dropout is gone."""
    if isinstance(small, cst.Expr):
        return isinstance(small.value, cst.Name)
    if isinstance(small, cst.Assign) and len(small.targets) == 1:
        return m.matches(small.value, m.Name(_name_of(small.targets[0].target) or ""))
    return False


def _own_comment(line: cst.CSTNode) -> cst.TrailingWhitespace | None:
    """The end-of-line comment of a line that holds one statement alone (`out = self.drop(out)  # why`)."""
    if isinstance(line, cst.SimpleStatementLine) and len(line.body) == 1 and line.trailing_whitespace.comment:
        return line.trailing_whitespace
    return None


def _only_dropout(small: cst.BaseSmallStatement, call: cst.Call) -> bool:
    """`out = self.drop(out)` or a bare `self.drop(out)`: the dropout is the whole statement."""
    if isinstance(small, cst.Expr):
        return small.value is call
    return isinstance(small, cst.Assign) and len(small.targets) == 1 and small.value is call


# -- applying --------------------------------------------------------------------------------------


def _apply_at(index: SourceIndex, call: cst.Call, site: CallSite, template: DropoutTemplate, side: Side,
              style: Style, prefer_statement: bool, guard: cst.If | None = None, line: int | None = None,
              comment: cst.TrailingWhitespace | None = None) -> cst.Module:
    """Apply the dropout at `call` (which `site` names). `line`: where the call is in the text the user
    has (a move reads a module with the dropout already taken out, whose lines may have shifted).
    `comment`: the moved line's own end-of-line comment, kept on the new line when there is one."""
    slot = _statement_slot(index, call, site, side)
    statement = style == "statement" or guard is not None or (style == "auto" and prefer_statement
                                                                and not isinstance(slot, str))
    if statement:
        if isinstance(slot, str):
            why = f" (it runs under `if {index.code(guard.test)}`)" if guard is not None else ""
            raise CannotEdit(f"the dropout{why} needs a line of its own {side} {site} "
                             f"(line {line or index.line(call)}), but {slot}")
        anchor, name = slot
        new: cst.BaseStatement = assignment_line(name, template.call_on(cst.Name(name)))
        if comment is not None:
            new = new.with_changes(trailing_whitespace=comment)
        if guard is not None:  # the guard comes along, around the new line (a copy: no node twice in a tree)
            new = guard.deep_clone().with_changes(body=guard.body.with_changes(body=(new,)), leading_lines=())
        return (insert_before if side == "before" else insert_after)(index, anchor, new)
    if side == "after":
        old = call
        new_node = template.call_on(call.with_changes(lpar=(), rpar=())).with_changes(lpar=call.lpar, rpar=call.rpar)
    else:
        old = _input_argument(index, call, site).value if not site.callee.startswith(".") else call.func.value
        new_node = template.call_on(old)
    found = index.statement_of(call)
    line_of_call = found[1] if found is not None else None
    if comment is not None and isinstance(line_of_call, cst.SimpleStatementLine) and \
            not line_of_call.trailing_whitespace.comment:  # the comment goes to the line the dropout joins
        return replace_node(index, line_of_call, line_of_call.deep_replace(old, new_node).with_changes(
            trailing_whitespace=comment))
    return replace_node(index, old, new_node)


def _after_removal(before: SourceIndex, after: SourceIndex, site: CallSite, dropout: cst.Call,
                   kept: cst.BaseExpression, target: cst.Call) -> cst.Call:
    """`target` again, in the module with `dropout` taken out. Lines and occurrences may have moved, but
    the method's calls keep their order, less the dropout call and any call in its arguments other
    than the input it leaves behind (`kept`)."""
    calls = [c for c in descendants(before.find_method(site.cls, site.method).body) if isinstance(c, cst.Call)]
    staying = {id(n) for n in (kept, *descendants(kept))}
    gone = {id(n) for n in (dropout, *descendants(dropout)) if isinstance(n, cst.Call) and id(n) not in staying}
    if id(target) in gone:
        raise CannotEdit(f"{site} is inside the dropout's own arguments")
    position = next(i for i, c in enumerate(calls) if c is target)
    position -= sum(id(c) in gone for c in calls[:position])
    remaining = [c for c in descendants(after.find_method(site.cls, site.method).body) if isinstance(c, cst.Call)]
    if len(remaining) != len(calls) - len(gone):
        raise CannotEdit(f"taking the dropout out changed the other calls of {site.cls}.{site.method}; "
                         "move it by hand")
    return remaining[position]


def _statement_slot(index: SourceIndex, call: cst.Call, site: CallSite,
                    side: Side) -> tuple[cst.SimpleStatementLine, str] | str:
    """Where `name = dropout(name)` can go as a line of its own, and the variable; else why not.

    Before `out = self.conv2(out)` (or `return self.fc(out)`) the new line changes only what the
    call reads. After `out = self.bn2(...)` it changes only what reads the call's result.
    """
    found = index.statement_of(call)
    if found is None:
        return "the call is in the header of a compound statement"
    small, line = found
    if not isinstance(line, cst.SimpleStatementLine) or len(line.body) != 1:
        return "its line holds more than one statement"
    if any(isinstance(n, _CONDITIONAL_CONTEXTS) for n in index.between(call, small)):
        return "the call sits in a lambda, comprehension or conditional expression"
    single_target = _name_of(small.targets[0].target) if isinstance(small, cst.Assign) and len(
        small.targets) == 1 else None
    if side == "after":
        if single_target is None or small.value is not call:
            return "its statement does not assign the call's result, alone, to a variable"
        return line, single_target
    value = call.func.value if site.callee.startswith(".") else _input_argument(index, call, site).value
    name = _name_of(value)
    if name is None:
        return "its input is an expression, not a variable"
    if not isinstance(small, cst.Return) and single_target != name:
        return f"its statement does not assign {name} (a new `{name} = ...` line would reach later uses)"
    if sum(n.value == name for n in free_names(small.value)) != 1:
        return f"its statement reads {name} more than once"
    return line, name


# -- shared ----------------------------------------------------------------------------------------


def _method_and_call(index: SourceIndex, site: CallSite) -> tuple[cst.FunctionDef, cst.Call]:
    return index.find_method(site.cls, site.method), index.find_call(site)


def _is_module_call(site: CallSite) -> bool:
    return site.callee.startswith("self.")


def _input_argument(index: SourceIndex, call: cst.Call, site: CallSite | None = None) -> cst.Arg:
    """The argument a layer or dropout acts on: the first positional one, or `input=`."""
    _refuse_star_arguments(index, call)
    for arg in call.args:
        if arg.keyword is None or arg.keyword.value == "input":
            return arg
    what = site.callee if site is not None else index.code(call.func)
    raise CannotEdit(f"the call to {what} at line {index.line(call)} has no input argument")


def _refuse_star_arguments(index: SourceIndex, call: cst.Call) -> None:
    if any(arg.star for arg in call.args):
        raise CannotEdit(f"the call at line {index.line(call)} passes *args or **kwargs, "
                         "so which argument is the input is not written in the source")


def _template_of(index: SourceIndex, call: cst.Call, module_call: bool) -> DropoutTemplate:
    """The dropout call as written, less its input: what a move writes at the new place."""
    value = _dropout_input(index, call, module_call)
    others = [index.code(a.with_changes(comma=cst.MaybeSentinel.DEFAULT)).strip()
              for a in call.args if a.value is not value]
    return DropoutTemplate(index.code(call.func), ", ".join(others))


def _elementwise(index: SourceIndex, call: cst.Call, template: DropoutTemplate) -> DropoutTemplate:
    """The template calling the element-wise sibling of a channel-wise functional dropout."""
    if not isinstance(call.func, cst.Attribute) or not index.imported_names(call) & FUNCTIONAL_DROPOUTS.keys():
        raise CannotEdit(f"`{template.callee}` is not a functional dropout written as `module.function`; "
                         "a dropout module becomes element-wise where it is declared (MakeElementwise)")
    name = call.func.attr.value
    elementwise = _ELEMENTWISE_FUNCTIONS.get(name, name)
    return DropoutTemplate(template.callee[: -len(name)] + elementwise, template.arguments)


def _name_of(node: cst.CSTNode) -> str | None:
    return node.value if isinstance(node, cst.Name) else None


def _bare(value: cst.BaseExpression) -> cst.BaseExpression:
    """An expression as an argument needs no parentheses, except a tuple or a generator."""
    if value.lpar and not isinstance(value, (cst.Tuple, cst.GeneratorExp)):
        return value.with_changes(lpar=(), rpar=())
    return value
