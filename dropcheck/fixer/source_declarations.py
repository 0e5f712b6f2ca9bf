"""Edits of the modules a class declares: add a dropout to `__init__` (or take out one nothing calls any
more), make a channel-wise dropout element-wise, and move a dropout inside an `nn.Sequential(...)` literal without renaming a key.

torch.nn is written the way the file writes it (`nn.Dropout`, `torch.nn.Dropout`, or `Dropout`
when the file imports classes from torch.nn); an import is added only when the file has none.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import libcst as cst
import libcst.matchers as m

from .source_locate import CannotEdit, SourceIndex, dotted_name, free_names
from .source_requests import DeclareDropout, MakeElementwise, MoveInSequential, RemoveDeclaration
from .source_statements import append_item, insert_after, remove_statement, replace_node, replace_nodes

DROPOUT_MODULES = frozenset(f"torch.nn.{n}" for n in ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
                                                       "AlphaDropout", "FeatureAlphaDropout"))
_ELEMENTWISE = {"Dropout1d": "Dropout", "Dropout2d": "Dropout", "Dropout3d": "Dropout",
                "FeatureAlphaDropout": "AlphaDropout"}
# torch.nn layers with no parameters and no buffers: moving past them renames no state_dict key
_STATELESS = frozenset(f"torch.nn.{n}" for n in (
    "Identity", "Flatten", "Unflatten", "ReLU", "ReLU6", "LeakyReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish",
    "Sigmoid", "Tanh", "Hardtanh", "Hardswish", "Hardsigmoid", "Softplus", "Softsign", "Tanhshrink", "Threshold",
    "GLU", "Softmax", "LogSoftmax", "Softmax2d", "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d",
    "AvgPool3d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d", "AdaptiveMaxPool3d", "LPPool1d", "LPPool2d", "Upsample", "UpsamplingNearest2d",
    "UpsamplingBilinear2d", "PixelShuffle", "PixelUnshuffle", "ChannelShuffle", "ZeroPad1d", "ZeroPad2d",
    "ZeroPad3d", "ConstantPad1d", "ConstantPad2d", "ConstantPad3d", "ReflectionPad1d", "ReflectionPad2d",
    "ReflectionPad3d", "ReplicationPad1d", "ReplicationPad2d", "ReplicationPad3d")) | DROPOUT_MODULES


def declare_dropout(index: SourceIndex, request: DeclareDropout) -> cst.Module:
    for name in (request.attribute, request.kind):
        if not name.isidentifier():
            raise CannotEdit(f"`{name}` is not a Python name")
    init = index.find_method(request.cls, "__init__")
    self_name = index.self_name(init)
    existing = assignments(init, self_name, request.attribute)
    if existing:
        raise CannotEdit(f"{self_name}.{request.attribute} is already assigned in {request.cls}.__init__ "
                         f"(line {index.line(existing[0])}); choose another attribute name")
    reference, with_import = _class_reference(index, request.kind)
    line = cst.parse_statement(f"{self_name}.{request.attribute} = {reference}(p={_p_source(request.p)})\n")
    if request.after is None:
        if not isinstance(init.body, cst.IndentedBlock):
            raise CannotEdit(f"{request.cls}.__init__ is written on one line; add the dropout by hand")
        anchor = init.body.body[-1]
    else:
        found = assignments(init, self_name, request.after)
        if not found:
            raise CannotEdit(f"{request.cls}.__init__ assigns no {self_name}.{request.after} to put the dropout after")
        anchor = next(a for a in index.ancestors(found[0]) if index.parent(a) is init.body)
    return with_import(insert_after(index, anchor, line))


def remove_declaration(index: SourceIndex, request: RemoveDeclaration) -> cst.Module:
    try:
        init = index.find_method(request.cls, "__init__")
        cls = index.find_class(request.cls)
    except CannotEdit:
        return index.module  # declared in a base class, or elsewhere: left as it is
    self_name = index.self_name(init)
    found = assignments(init, self_name, request.attribute)
    if len(found) != 1 or not isinstance(found[0], cst.Assign) or len(found[0].targets) != 1:
        return index.module
    value = found[0].value
    if not (isinstance(value, cst.Call) and index.imported_names(value) & DROPOUT_MODULES):
        return index.module
    target = m.Attribute(value=m.Name(self_name), attr=m.Name(request.attribute))
    if len(m.findall(cls, target)) > 1 or len(m.findall(cls, m.Attribute(attr=m.Name(request.attribute)))) > 1:
        return index.module  # still read somewhere in the class (or through another name)
    line = index.parent(found[0])
    if not isinstance(line, cst.SimpleStatementLine) or len(line.body) != 1:
        return index.module
    return remove_statement(index, line, self_name)


def make_elementwise(index: SourceIndex, request: MakeElementwise) -> cst.Module:
    init = index.find_method(request.cls, "__init__")
    self_name = index.self_name(init)
    values = [a.value for a in assignments(init, self_name, request.attribute)]
    where = f"{self_name}.{request.attribute}"
    if request.element is not None:
        arguments = sequential_arguments(index, sequential_literal(index, values, where), where)
        if not 0 <= request.element < len(arguments):
            raise CannotEdit(f"{where} has {len(arguments)} elements; there is no element {request.element}")
        values = [arguments[request.element].value]
        where = f"{where}[{request.element}]"
    channelwise = [v for v in values if isinstance(v, cst.Call) and _channelwise_kind(index, v)]
    if not channelwise:
        raise CannotEdit(f"{where} is not declared in {request.cls}.__init__ as a channel-wise dropout "
                         f"({', '.join(sorted(_ELEMENTWISE))})")
    replacements: dict[cst.CSTNode, cst.CSTNode] = {}
    with_import = _unchanged
    for call in channelwise:
        kind = _ELEMENTWISE[_channelwise_kind(index, call)]
        if isinstance(call.func, cst.Attribute):  # nn.Dropout2d -> nn.Dropout, keeping the prefix as written
            replacements[call.func.attr] = cst.Name(kind)
        else:  # a class imported by name: write the element-wise class the way the file reaches torch.nn
            reference, with_import = _class_reference(index, kind)
            replacements[call.func] = cst.parse_expression(reference)
    return with_import(replace_nodes(index, replacements))


def move_in_sequential(index: SourceIndex, request: MoveInSequential) -> cst.Module:
    method = index.find_method(request.cls, request.method)
    self_name = index.self_name(method)
    where = f"{self_name}.{request.attribute}"
    literal = sequential_literal(index, [a.value for a in assignments(method, self_name, request.attribute)], where)
    arguments = sequential_arguments(index, literal, where)
    size = len(arguments)
    if not (0 <= request.index < size and 0 <= request.to_index < size):
        raise CannotEdit(f"{where} has {size} elements; cannot move {request.index} to {request.to_index}")
    if request.index == request.to_index:
        raise CannotEdit(f"{where}[{request.index}] is already at position {request.to_index}")
    moved = arguments[request.index].value
    if not (isinstance(moved, cst.Call) and index.imported_names(moved) & DROPOUT_MODULES):
        raise CannotEdit(f"{where}[{request.index}] is `{index.code(moved)}`, not a torch.nn dropout")
    has_state = request.has_state if request.has_state is not None else tuple(
        _has_state(index, a.value) for a in arguments)
    if len(has_state) != size:
        raise CannotEdit(f"{where} has {size} elements in the source but {len(has_state)} in the model")
    renames = sequential_key_renames(has_state, request.index, request.to_index)
    if renames:
        keys = ", ".join(f"{request.attribute}.{a}.* -> {request.attribute}.{b}.*" for a, b in sorted(renames.items()))
        raise CannotEdit(f"moving {where}[{request.index}] to position {request.to_index} would rename state_dict "
                         f"keys ({keys}), so old checkpoints would not load; use the exported model (-o)")
    return replace_node(index, literal, literal.with_changes(
        args=_reordered(arguments, request.index, request.to_index)))


def sequential_key_renames(has_state: Sequence[bool], index: int, to_index: int) -> dict[int, int]:
    """Old -> new position of every element holding parameters or buffers that moving element `index`
    of a Sequential to `to_index` shifts; their state_dict keys (`features.3.weight`) are index-based,
    so an empty result means every key stays."""
    step, passed = (-1, range(index + 1, to_index + 1)) if index < to_index else (1, range(to_index, index))
    renames = {k: k + step for k in passed if has_state[k]}
    if has_state[index] and index != to_index:
        renames[index] = to_index
    return renames


# -- nn.Sequential literals ------------------------------------------------------------------------


def sequential_literal(index: SourceIndex, values: list[cst.BaseExpression], where: str) -> cst.Call:
    if len(values) != 1:
        raise CannotEdit(f"{where} is assigned {len(values)} times in this method; expected one nn.Sequential(...)")
    value = values[0]
    if not (isinstance(value, cst.Call) and "torch.nn.Sequential" in index.imported_names(value)):
        raise CannotEdit(f"{where} is not an nn.Sequential(...) literal, so its elements are not written in the "
                         "source; edit it by hand or use the exported model (-o)")
    return value


def sequential_arguments(index: SourceIndex, literal: cst.Call, where: str) -> Sequence[cst.Arg]:
    if any(a.star or a.keyword is not None for a in literal.args):
        raise CannotEdit(f"{where} is built from *layers, so its indices are not in the source")
    if len(literal.args) == 1 and isinstance(literal.args[0].value, cst.Call) and (
            dotted_name(literal.args[0].value.func) or "").endswith("OrderedDict"):
        raise CannotEdit(f"{where} is built from an OrderedDict: its keys are names, edit the entry by hand")
    return literal.args


def _has_state(index: SourceIndex, element: cst.BaseExpression) -> bool:
    """Unknown elements (user blocks, `self.relu`, ...) count as holding state: refusing is safe."""
    return not (isinstance(element, cst.Call) and index.imported_names(element) & _STATELESS)


def _reordered(arguments: Sequence[cst.Arg], index: int, to_index: int) -> list[cst.Arg]:
    """The elements in the new order; the list keeps its ending (trailing comma or none) and each
    element keeps the comment on its line."""
    order = list(arguments)
    order.insert(to_index, order.pop(index))
    last = arguments[-1]
    if order[-1] is not last:
        at = next(i for i, a in enumerate(order) if a is last)
        new_last = order[-1]
        order[-1] = new_last.with_changes(comma=comma_keeping_comment(last.comma, new_last.comma))
        order[at] = last.with_changes(comma=comma_keeping_comment(new_last.comma, last.comma))
    return order


def comma_keeping_comment(comma: cst.Comma | cst.MaybeSentinel,
                           own: cst.Comma | cst.MaybeSentinel) -> cst.Comma | cst.MaybeSentinel:
    """`comma` (punctuation and line break), carrying the comment that followed `own`."""
    if isinstance(comma, cst.Comma) and isinstance(comma.whitespace_after, cst.ParenthesizedWhitespace):
        first = own.whitespace_after.first_line if isinstance(own, cst.Comma) and isinstance(
            own.whitespace_after, cst.ParenthesizedWhitespace) else cst.TrailingWhitespace()
        return comma.with_changes(whitespace_after=comma.whitespace_after.with_changes(first_line=first))
    return comma


# -- declarations and torch.nn ---------------------------------------------------------------------


def assignments(method: cst.FunctionDef, self_name: str, attribute: str) -> list[cst.CSTNode]:
    """Every `self.<attribute> = ...` (or annotated) in the method, in source order."""
    target = m.Attribute(value=m.Name(self_name), attr=m.Name(attribute))
    plain = m.Assign(targets=[m.ZeroOrMore(), m.AssignTarget(target=target), m.ZeroOrMore()])
    return list(m.findall(method.body, plain | m.AnnAssign(target=target, value=m.DoNotCare())))


def _channelwise_kind(index: SourceIndex, call: cst.Call) -> str | None:
    kinds = [n.rsplit(".", 1)[1] for n in index.imported_names(call) if n.startswith("torch.nn.")]
    return next((k for k in kinds if k in _ELEMENTWISE), None)


def _p_source(p: float | str) -> str:
    if isinstance(p, str):
        try:
            cst.parse_expression(p)
        except cst.ParserSyntaxError as exc:
            raise CannotEdit(f"p `{p}` is not a Python expression") from exc
        return p
    if not 0.0 <= float(p) <= 1.0:
        raise CannotEdit(f"p = {p} is not a probability")
    return repr(float(p))


@dataclass
class _TorchNnImports:
    """How the file's top-level imports reach torch.nn."""

    classes: dict[str, str] = field(default_factory=dict)  # class -> the name it is bound to
    nn_alias: str | None = None  # `import torch.nn as nn`, `from torch import nn`
    torch_alias: str | None = None  # `import torch`, `import torch as t`, `import torch.nn`
    from_nn: tuple[int, int] | None = None  # (line, statement) of the first `from torch.nn import ...`


def _torch_nn_imports(module: cst.Module) -> _TorchNnImports:
    found = _TorchNnImports()
    for at, line in enumerate(module.body):
        for position, small in enumerate(line.body if isinstance(line, cst.SimpleStatementLine) else ()):
            if isinstance(small, cst.ImportFrom) and not isinstance(small.names, cst.ImportStar):
                source = None if small.relative or small.module is None else dotted_name(small.module)
                for alias in small.names:
                    name = dotted_name(alias.name) or ""
                    bound = alias.asname.name.value if alias.asname else name
                    if source == "torch.nn":
                        found.classes.setdefault(name, bound)
                        found.from_nn = found.from_nn or (at, position)
                    elif source == "torch" and name == "nn":
                        found.nn_alias = found.nn_alias or bound
            elif isinstance(small, cst.Import):
                for alias in small.names:
                    name = dotted_name(alias.name)
                    if name == "torch.nn" and alias.asname:
                        found.nn_alias = found.nn_alias or alias.asname.name.value
                    elif name == "torch" and alias.asname:
                        found.torch_alias = found.torch_alias or alias.asname.name.value
                    elif name in ("torch", "torch.nn"):
                        found.torch_alias = found.torch_alias or "torch"
    return found


def _class_reference(index: SourceIndex, kind: str) -> tuple[str, Callable[[cst.Module], cst.Module]]:
    """How this file names torch.nn.<kind>, and what adds the import that takes (if any) to a module
    edited below the imports."""
    imports = _torch_nn_imports(index.module)
    if kind in imports.classes:
        return imports.classes[kind], _unchanged
    if imports.nn_alias:
        return f"{imports.nn_alias}.{kind}", _unchanged
    if imports.torch_alias:
        return f"{imports.torch_alias}.nn.{kind}", _unchanged
    if imports.from_nn is not None:  # `from torch.nn import Conv2d, ...`: the class joins that list
        return kind, lambda module: _import_also(module, imports.from_nn, kind)
    if any(n.value == "nn" for n in free_names(index.module)):
        raise CannotEdit("this file does not import torch.nn and uses the name `nn` for something else; "
                         "import torch.nn and retry")
    return f"nn.{kind}", _add_nn_import


def _unchanged(module: cst.Module) -> cst.Module:
    return module


def _import_also(module: cst.Module, where: tuple[int, int], kind: str) -> cst.Module:
    # edits below the imports leave the top-level statements where they were, so `where` still holds
    at, position = where
    line = module.body[at]
    statement = line.body[position]
    names = append_item(statement.names, cst.ImportAlias(cst.Name(kind)))
    body = list(line.body)
    body[position] = statement.with_changes(names=names)
    return module.deep_replace(line, line.with_changes(body=body))


def _add_nn_import(module: cst.Module) -> cst.Module:
    """`import torch.nn as nn` after the file's last top-level import (or its docstring)."""
    body = list(module.body)
    imports = [i for i, s in enumerate(body) if isinstance(s, cst.SimpleStatementLine)
               and any(isinstance(x, (cst.Import, cst.ImportFrom)) for x in s.body)]
    docstring = 1 if body and m.matches(body[0], m.SimpleStatementLine([m.Expr(m.SimpleString())])) else 0
    body.insert(imports[-1] + 1 if imports else docstring, cst.parse_statement("import torch.nn as nn\n"))
    return module.with_changes(body=body)
