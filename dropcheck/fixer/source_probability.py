"""Write a dropout's planned p into the source, where the source gives p as a number.

`nn.Dropout(0.1)`, `nn.Dropout(p=0.1)`, `F.dropout(x, 0.1, ...)` and `F.dropout(x, p=0.1)` get the
new number in place of the old (only that token changes); `nn.Dropout()` and `F.dropout(x)` gain
`p=`. A p written as an expression (`nn.Dropout(drop_rate)`, `p=self.droprate`) is the user's knob:
it stays, and the request is refused with what to build the model with to get the planned p.
"""
from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from .source_calls import FUNCTIONAL_DROPOUTS
from .source_declarations import DROPOUT_MODULES, assignments, sequential_arguments, sequential_literal
from .source_locate import CannotEdit, SourceIndex, dotted_name
from .source_requests import SetDropoutP
from .source_statements import replace_node

KEPT = "p stays"  # how a refusal that keeps the user's expression begins


def set_dropout_p(index: SourceIndex, request: SetDropoutP) -> cst.Module:
    if not 0.0 <= request.p <= 1.0:
        raise CannotEdit(f"p = {request.p} is not a probability")
    init = index.find_method(request.cls, "__init__")
    if request.call is not None:
        method = index.find_method(request.cls, request.call.method)
        call = index.find_call(request.call)
        if not index.imported_names(call) & FUNCTIONAL_DROPOUTS.keys():
            raise CannotEdit(f"{request.call.callee} at line {index.line(call)} is not a functional dropout")
        where, position = f"the call at line {index.line(call)}", 1  # p follows the input
    else:
        method = init
        call = _declaration(index, init, request)
        where, position = f"{request.cls}.__init__ (line {index.line(call)})", 0
    if any(a.star for a in call.args):
        raise CannotEdit(f"{where} passes *args or **kwargs, so its p is not written in the source")
    given = next((a for a in call.args if a.keyword is not None and a.keyword.value == "p"), None)
    positional = [a for a in call.args if a.keyword is None]
    if given is None and len(positional) > position:
        given = positional[position]
    new = cst.Float(repr(float(request.p)))
    if given is None:  # the default p: say it
        keyword = cst.Arg(new, keyword=cst.Name("p"), equal=cst.AssignEqual(
            whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")))
        args = list(call.args)
        args.insert(len(positional), keyword.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
                    if len(positional) < len(args) else keyword)
        if len(positional) == len(call.args) and positional:  # `F.dropout(x)`: a comma after the input
            args[len(positional) - 1] = args[len(positional) - 1].with_changes(
                comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
        return replace_node(index, call, call.with_changes(args=args))
    value = given.value
    if isinstance(value, (cst.Float, cst.Integer)):
        return replace_node(index, value, new.with_changes(lpar=value.lpar, rpar=value.rpar))
    text = index.code(value).strip()
    raise CannotEdit(f"{KEPT} `{text}` as written in {where}; the fix wants p={request.p:g} here: "
                     f"{_how_to_get(text, request.p, method, init, index)}")


def _declaration(index: SourceIndex, init: cst.FunctionDef, request: SetDropoutP) -> cst.Call:
    self_name = index.self_name(init)
    where = f"{self_name}.{request.attribute}"
    values = [a.value for a in assignments(init, self_name, request.attribute or "")]
    if request.element is not None:
        arguments = sequential_arguments(index, sequential_literal(index, values, where), where)
        if not 0 <= request.element < len(arguments):
            raise CannotEdit(f"{where} has {len(arguments)} elements; there is no element {request.element}")
        values, where = [arguments[request.element].value], f"{where}[{request.element}]"
    calls = [v for v in values if isinstance(v, cst.Call) and index.imported_names(v) & DROPOUT_MODULES]
    if len(calls) != 1 or len(values) != 1:
        raise CannotEdit(f"{where} is not declared once in {request.cls}.__init__ as a torch.nn dropout")
    return calls[0]


def _how_to_get(text: str, p: float, method: cst.FunctionDef, init: cst.FunctionDef, index: SourceIndex) -> str:
    """`build it with drop_rate=0.3` when the expression is (or is set from) an argument of __init__."""
    name = text
    if text.startswith(f"{index.self_name(method)}."):  # `self.droprate`: the __init__ argument it is set from
        attribute = text.split(".", 1)[1]
        sources = [a.value for a in assignments(init, index.self_name(init), attribute) if isinstance(a, cst.Assign)]
        name = dotted_name(sources[0]) or text if len(sources) == 1 else text
    parameters = {param.name.value for param in (*init.params.params, *init.params.kwonly_params)}
    if m.matches(cst.parse_expression(name), m.Name()) and name in parameters:
        return f"build it with {name}={p:g}"
    return f"set `{text}` to {p:g} where the model is built"
