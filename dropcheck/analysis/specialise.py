"""Capture that specialises on the example input, for models plain fx cannot trace.

Plain `symbolic_trace` stops on Python control flow over sizes (`if x.dim() == 3`,
`for i in range(x.size(1))`, `torch.zeros(x.size(0), h)`), though the example input settles
all of it. Here every proxy carries the value its node takes on the example (computed as the
trace goes, on the same kind of tensors shape propagation uses: real, meta or fake), and reads
of metadata (`size()`, `shape`, `dim()`, `dtype`, `device`, `is_cuda`, `len`, iteration) answer
with that value instead of recording a node. The graph stays the one the rest of dropcheck reads
(leaf modules as call_module, owners, source lines), specialised on the example's shape.

Control flow on tensor values (`if x.sum() > 0`) stays an error: a proxy whose example is a tensor
refuses `bool()`. Every place a size or branch was resolved is recorded, so the report can say the
verdict holds for this input.
"""
from __future__ import annotations

import inspect
import sys
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import fx, nn
from torch.fx.proxy import Attribute, TraceError

from ..records import SourceLocation
from .tracer import DropcheckTracer
from .imports import user_location
from .modes import eval_mode


@dataclass(frozen=True)
class Decision:
    """One place the trace used the example's value: a size read, a branch or a loop."""

    kind: str  # "size", "branch" or "loop"
    where: SourceLocation | None


class _Unknown:
    """The example value of a node whose op failed on the example (the failure, for the message)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class ValueControlFlow(TraceError):
    """Python control flow on a tensor's values: no example can settle that for every input."""


class _Concrete:
    """Metadata reads answered from the example value (mixed into fx's Proxy and Attribute)."""

    tracer: "SpecialisingTracer"

    def _example(self) -> Any:
        raise NotImplementedError

    def _read(self, kind: str) -> Any:
        example = self._example()
        if isinstance(example, _Unknown):
            raise TypeError(f"cannot specialise: this value could not be computed on the example input "
                            f"({type(example.exc).__name__}: {str(example.exc).splitlines()[0] if str(example.exc) else ''})")
        self.tracer.record(kind)
        return example

    def size(self, dim: int | None = None) -> Any:
        example = self._read("size")
        return example.size() if dim is None else example.size(dim)

    def dim(self) -> int:
        return self._read("size").dim()

    def ndimension(self) -> int:
        return self._read("size").dim()

    def numel(self) -> int:
        return self._read("size").numel()

    def nelement(self) -> int:
        return self._read("size").numel()

    shape = property(lambda self: self._read("size").shape)
    ndim = property(lambda self: self._read("size").ndim)
    dtype = property(lambda self: self._read("size").dtype)
    device = property(lambda self: self._example_device())
    is_cuda = property(lambda self: self._example_device().type == "cuda")

    def _example_device(self) -> torch.device:
        # the example's own device (meta for a model built there): `.to(x.device)` must stay a no-op
        return getattr(self._read("size"), "device", torch.device("cpu"))

    def __bool__(self) -> bool:
        example = self._example()
        if isinstance(example, torch.Tensor) or isinstance(example, _Unknown):
            raise ValueControlFlow("control flow on a tensor's values")
        self.tracer.record("branch")
        return bool(example)

    def __len__(self) -> int:
        return len(self._read("loop"))

    def __iter__(self) -> Iterator[Any]:
        return iter([self[i] for i in range(len(self._read("loop")))])  # type: ignore[index]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        if name == "data":  # the same values, detached: nothing for a graph of data flow to record
            return self
        return ExampleAttribute(self, name)


class ExampleProxy(_Concrete, fx.Proxy):
    def _example(self) -> Any:
        return self.node.meta.get("example", _Unknown(KeyError(self.node.name)))


class ExampleAttribute(_Concrete, Attribute):
    def _example(self) -> Any:
        parent = self.root._example()  # type: ignore[attr-defined]
        if isinstance(parent, _Unknown):
            return parent
        try:
            return getattr(parent, self.attr)
        except Exception as exc:  # noqa: BLE001 - the proxy's example is unknown
            return _Unknown(exc)


def _is_proxy(value: Any) -> bool:
    return isinstance(value, fx.Proxy)


def _examples_of(value: Any) -> Any:
    """`value` with every proxy replaced by its example."""
    if isinstance(value, _Concrete):
        return value._example()
    if isinstance(value, (list, tuple)):
        items = [_examples_of(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, dict):
        return {k: _examples_of(v) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(_examples_of(value.start), _examples_of(value.stop), _examples_of(value.step))
    return value


def _to_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value if value.device.type == "meta" else value.to("meta")
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_to_meta(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_meta(v) for k, v in value.items()}
    return value


def _unknown_in(value: Any) -> _Unknown | None:
    found: list[_Unknown] = []

    def visit(v: Any) -> None:
        if isinstance(v, _Unknown):
            found.append(v)
        elif isinstance(v, (list, tuple)):
            for x in v:
                visit(x)
        elif isinstance(v, dict):
            for x in v.values():
                visit(x)
    visit(value)
    return found[0] if found else None


class SpecialisingTracer(DropcheckTracer):
    """DropcheckTracer whose proxies carry example values and answer metadata reads with them."""

    def __init__(self, root: nn.Module, inputs: tuple[Any, ...], how: str, extra_leaves: tuple[type, ...] = (),
                 autowrap_functions: Iterable[Callable[..., Any]] = ()) -> None:
        super().__init__(extra_leaves, autowrap_functions)
        try:
            names = list(inspect.signature(root.forward).parameters)
        except (TypeError, ValueError):
            names = []
        self.decisions: list[Decision] = []
        self._computing = False
        self._example_mode: Callable[[], Any]
        if how == "fake":
            from torch._subclasses.fake_tensor import FakeTensorMode
            fake = FakeTensorMode(allow_non_fake_inputs=True)
            inputs = tuple(fake.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in inputs)
            self._example_mode = lambda: fake
        else:
            self._example_mode = nullcontext
        self.examples = dict(zip(names, inputs))
        # on the meta device, tensors the forward makes eagerly (torch.zeros(n, c) from sizes) join it
        self._on_meta = any(isinstance(x, torch.Tensor) and x.device.type == "meta" for x in inputs)

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        graph = super().trace(root, concrete_args)
        for n in graph.nodes:  # the examples served the trace; the graph must not hold them
            n.meta.pop("example", None)
        return graph

    def create_arg(self, a: Any) -> Any:
        if self._on_meta and isinstance(a, torch.Tensor) and not isinstance(a, nn.Parameter) and \
                a.device.type != "meta" and id(a) not in getattr(self, "_buffer_names", {}):
            a = a.to("meta")  # a constant made from sizes: the graph runs on the meta device
        return super().create_arg(a)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ExampleProxy(node, self)  # type: ignore[arg-type]

    def record(self, kind: str) -> None:
        self.decisions.append(Decision(kind, user_location(sys._getframe(2))))

    # while an example is computed, module calls and attribute reads run for real, recording nothing
    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        if self._computing:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self._computing:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, name: str | None = None,
                     type_expr: Any = None, proxy_factory_fn: Any = None) -> fx.Proxy:
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if isinstance(proxy, fx.Proxy):
            proxy.node.meta["example"] = self._compute(kind, target, args, kwargs)
        return proxy

    def _compute(self, kind: str, target: Any, args: Any, kwargs: Any) -> Any:
        if kind == "placeholder":
            return self.examples.get(str(target).lstrip("*"), _Unknown(KeyError(target)))
        if kind == "get_attr":  # read for real: the patched Module.__getattr__ would make another proxy
            self._computing = True
            try:
                return _fetch(self.root, str(target))
            except AttributeError as exc:
                return _Unknown(exc)
            finally:
                self._computing = False
        if kind == "output":
            return None
        ex_args, ex_kwargs = _examples_of(args), _examples_of(kwargs)
        if self._on_meta:
            ex_args, ex_kwargs = _to_meta(ex_args), _to_meta(ex_kwargs)
        unknown = _unknown_in((ex_args, ex_kwargs))
        if unknown is not None:
            return unknown
        self._computing = True
        try:
            with torch.no_grad(), self._example_mode(), ExitStack() as stack:
                if kind == "call_module":
                    m = self.root.get_submodule(target)
                    stack.enter_context(eval_mode(m))  # no BatchNorm buffer moves for an example
                    return m.forward(*ex_args, **ex_kwargs)
                if kind == "call_method":
                    return getattr(ex_args[0], target)(*ex_args[1:], **ex_kwargs)
                return target(*ex_args, **ex_kwargs)
        except Exception as exc:  # noqa: BLE001 - only a metadata read of this value will need it
            return _Unknown(exc)
        finally:
            self._computing = False


def _fetch(root: nn.Module, qualname: str) -> Any:
    value: Any = root
    for part in qualname.split("."):
        value = getattr(value, part)
    return value


def describe(decisions: Iterable[Decision], inputs: tuple[Any, ...], stopped_at: str) -> str:
    """The report's note: on which input the graph was specialised, and where."""
    decisions = list(decisions)
    shape = "; ".join("x".join(str(d) for d in x.shape) for x in inputs if isinstance(x, torch.Tensor))
    parts = []
    for kind, label in (("branch", "branch(es)"), ("loop", "loop(s)"), ("size", "size read(s)")):
        mine = [d for d in decisions if d.kind == kind]
        if mine:
            parts.append(f"{len(mine)} {label} at {_places(d.where for d in mine)}")
    resolved = "; ".join(parts) if parts else "nothing resolved"
    return (f"specialised on {shape}: plain fx stopped at {stopped_at}; {resolved}: the verdict holds for "
            "inputs of this shape")


def _places(wheres: Iterable[SourceLocation | None]) -> str:
    """file:12, 30; other.py:4 (each file once, lines in order, at most 6)."""
    lines: dict[str, set[int]] = {}
    for where in wheres:
        if where is not None:
            lines.setdefault(where.file, set()).add(where.line)
    shown = [f"{file}:{', '.join(str(n) for n in sorted(numbers)[:6])}" for file, numbers in lines.items()]
    return "; ".join(shown) or "(no user code)"
