"""fx capture: leaf modules, owners and source lines per node, shapes, train and eval graphs.

The model is traced twice, in train and in eval mode, because `symbolic_trace` freezes
`self.training` into the graph: a functional dropout still live in the eval graph is
always on (DC006). Leaves that hide BatchNorm or dropout (timm's notrace modules,
torch.nn containers) are traced on their own and inlined; what cannot be traced is
reported as an opaque region, never skipped.
"""
from __future__ import annotations

import inspect
import sys
import types
from typing import Any, Callable, Iterable

import torch
from torch import fx, nn

from . import ops
from .load import display_path, is_library_frame, user_location
from .records import Capture, DropcheckError, FlowNode, OpaqueRegion, SourceLocation, Target

_MAX_INLINE_DEPTH = 4
_MODULE_PY = nn.modules.module.__file__
_NN_MODULES_DIR = _MODULE_PY.rsplit("/", 1)[0]


class DropcheckTracer(fx.Tracer):
    """A plain fx tracer whose leaves are the dropout family, stochastic depth and `extra_leaves`."""

    def __init__(self, extra_leaves: tuple[type, ...] = (), autowrap_functions: Iterable[Callable[..., Any]] = (),
                 root_is_leaf_ok: bool = True) -> None:
        super().__init__(autowrap_functions=tuple(autowrap_functions))
        self.extra_leaves = extra_leaves
        self.sources: dict[str, SourceLocation | None] = {}
        self.owners: dict[str, str] = {}

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        if isinstance(root, nn.Module):  # name lookups by identity: fx scans every parameter per access
            self._param_names = {id(p): n for n, p in root.named_parameters()}
            self._buffer_names = {id(b): n for n, b in root.named_buffers()}
        return super().trace(root, concrete_args)

    def create_arg(self, a: Any) -> Any:
        if isinstance(a, torch.Tensor):  # same get_attr fx would emit, found without a scan
            names = getattr(self, "_param_names" if isinstance(a, nn.Parameter) else "_buffer_names", {})
            if id(a) in names:
                return self.create_node("get_attr", names[id(a)], (), {})
        return super().create_arg(a)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if isinstance(attr_val, nn.Parameter):
            name = getattr(self, "_param_names", {}).get(id(attr_val))
        elif self.proxy_buffer_attributes and isinstance(attr_val, torch.Tensor):
            name = getattr(self, "_buffer_names", {}).get(id(attr_val))
        else:
            return attr_val
        if name is None:
            return super().getattr(attr, attr_val, parameter_proxy_cache)
        if name not in parameter_proxy_cache:
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
        return parameter_proxy_cache[name]

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if ops.is_dropout_module(m) or ops.is_stochastic_depth_module(m):
            return True
        if self.extra_leaves and isinstance(m, self.extra_leaves):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def create_node(self, kind: str, target: Any, args: Any, kwargs: Any, name: str | None = None,
                    type_expr: Any = None) -> fx.Node:
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        self.owners[node.name] = self.scope.module_path
        if _wants_source(kind, target, self.root if hasattr(self, "root") else None):
            self.sources[node.name] = _call_site(sys._getframe(1))
        return node


def _wants_source(kind: str, target: Any, root: nn.Module | None) -> bool:
    if kind == "call_function":
        return (ops.is_dropout_function(target) or target in ops.ATTENTION_FUNCTIONS
                or ops.is_stochastic_depth_function(target))
    if kind == "call_module" and root is not None:
        try:
            m = root.get_submodule(target)
        except AttributeError:
            return False
        return ops.is_dropout_module(m) or ops.is_stochastic_depth_module(m) or ops.is_attention_module(m)
    return False


def _call_site(frame: types.FrameType | None) -> SourceLocation | None:
    """The line in a user's `forward` that made the call (through user helpers, if any).

    None when a torch container (nn.Sequential) made the call: the declaration line says more.
    """
    first: SourceLocation | None = None
    while frame is not None:
        name = frame.f_code.co_filename
        if not is_library_frame(name):
            here = SourceLocation(display_path(name), frame.f_lineno)
            if frame.f_code.co_name == "forward":
                return here
            first = first or here
        elif first is not None:
            return first  # left the user's code without meeting a forward
        elif name.startswith(_NN_MODULES_DIR) and name != _MODULE_PY:
            return None
        frame = frame.f_back
    return first


# --- tracing -------------------------------------------------------------------------------------

def _zoo_tracer_config() -> tuple[tuple[type, ...], list[Callable[..., Any]]]:
    """timm's own notrace modules and functions, when timm is in use."""
    if "timm" not in sys.modules:
        return (), []
    from timm.layers import _fx as timm_fx
    return tuple(timm_fx.get_notrace_modules()), list(timm_fx.get_notrace_functions())


def _trace(root: nn.Module, tracer: DropcheckTracer) -> fx.GraphModule:
    concrete = _concrete_defaults(root)
    graph = tracer.trace(root, concrete_args=concrete or None)
    name = root.__class__.__name__ if isinstance(root, nn.Module) else "Model"
    return fx.GraphModule(tracer.root, graph, name)


def _concrete_defaults(root: nn.Module) -> dict[str, Any]:
    """Optional forward arguments after the input keep their defaults (no proxies for None flags)."""
    try:
        params = list(inspect.signature(root.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    out = {}
    for p in params[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is not inspect.Parameter.empty:
            out[p.name] = p.default
    return out


def _trace_error(root: nn.Module, exc: BaseException) -> DropcheckError:
    where = None
    tb = exc.__traceback__
    while tb is not None:
        if not is_library_frame(tb.tb_frame.f_code.co_filename):
            where = SourceLocation(display_path(tb.tb_frame.f_code.co_filename), tb.tb_lineno)
        tb = tb.tb_next
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    place = f"{where}: " if where else ""
    if "control flow" in text or "iterate" in text or "len(" in text:
        hint = ("fx cannot follow data-dependent Python control flow; make that code a leaf module "
                "or a torch.fx.wrap'ed function, or audit a submodule")
    else:
        hint = "the model must be capturable by torch.fx.symbolic_trace; run with --verbose for the traceback"
    return DropcheckError("trace", f"{place}cannot trace {type(root).__name__}: {type(exc).__name__}: {text}", hint)


def _trace_both_modes(root: nn.Module) -> tuple[fx.GraphModule, DropcheckTracer,
                                                tuple[fx.GraphModule, DropcheckTracer] | None, str, tuple]:
    """Trace in train mode with the plain tracer, then the zoo-aware one; then eval mode likewise."""
    leaves, functions = _zoo_tracer_config()
    attempts = [("symbolic_trace", (), [])]
    if leaves or functions:
        attempts.append(("zoo-aware", leaves, functions))
    flags = {m: m.training for m in root.modules()}
    error: DropcheckError | None = None
    try:
        for method, extra, fns in attempts:
            root.train()
            tracer = DropcheckTracer(extra, fns)
            try:
                train_gm = _trace(root, tracer)
            except Exception as exc:  # noqa: BLE001 - any tracing failure is reported the same way
                error = error or _trace_error(root, exc)
                continue
            root.eval()
            eval_tracer = DropcheckTracer(extra, fns)
            try:
                evaluated: tuple[fx.GraphModule, DropcheckTracer] | None = (_trace(root, eval_tracer), eval_tracer)
            except Exception:  # noqa: BLE001 - eval-only failure: DC006 cannot be checked
                evaluated = None
            return train_gm, tracer, evaluated, method, extra
    finally:
        for m, flag in flags.items():
            m.training = flag
    assert error is not None
    raise error


# --- inlining opaque leaves ----------------------------------------------------------------------

def _hides_something(m: nn.Module) -> bool:
    """A leaf whose insides matter: it holds BatchNorm or dropout, or attention dropout."""
    if ops.is_dropout_module(m) or ops.is_stochastic_depth_module(m):
        return False
    if ops.is_attention_module(m) and ops.module_p(m) > 0:
        return True
    if next(iter(m.children()), None) is None:
        return False
    return any(ops.is_batchnorm_module(s) or ops.is_dropout_module(s) or ops.is_attention_module(s)
               for s in m.modules() if s is not m)


def _subtrace(m: nn.Module, extra: tuple[type, ...], fns: list[Callable[..., Any]],
              training: bool) -> tuple[fx.GraphModule, DropcheckTracer] | str:
    flags = {s: s.training for s in m.modules()}
    try:
        m.train(training)
        tracer = DropcheckTracer(tuple(t for t in extra if t is not type(m)), fns)
        return _trace(m, tracer), tracer
    except Exception as exc:  # noqa: BLE001 - reported as an opaque region
        return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}"
    finally:
        for s, flag in flags.items():
            s.training = flag


# --- shapes --------------------------------------------------------------------------------------

class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once (meta or fake tensors) and records each node's output shape."""

    def __init__(self, gm: fx.GraphModule, shapes: dict[str, Any], module_prefix: str,
                 inlined: dict[str, fx.GraphModule]) -> None:
        super().__init__(gm)
        self.shapes = shapes
        self.module_prefix = module_prefix  # "" or "a.b." (qualname of the inlined leaf)
        self.prefix = module_prefix[:-1] + "::" if module_prefix else ""  # flow-node name prefix
        self.inlined = inlined

    def run_node(self, n: fx.Node) -> Any:
        try:
            out = super().run_node(n)
        except DropcheckError:
            raise
        except Exception as exc:
            raise _ShapeFailure(self.prefix + n.name, n, exc) from exc
        self.shapes[self.prefix + n.name] = _shape_of(out)
        return out

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        key = self.module_prefix + target
        if key in self.inlined:
            sub = _ShapeRecorder(self.inlined[key], self.shapes, key + ".", self.inlined)
            return sub.run(*args, **kwargs) if not kwargs else sub.run(*args, *kwargs.values())
        m = self.fetch_attr(target)
        if ops.is_dropout_module(m) or ops.is_stochastic_depth_module(m) or (
                ops.is_activation_module(m) and not isinstance(m, nn.GLU)):
            # shape-preserving; their meta kernels are Python decompositions whose first call imports
            # torch._dynamo (1.5 s)
            return args[0]
        if ops.is_batchnorm_module(m) and next(iter(m.children()), None) is None:
            _check_channels(m, args[0])
            return args[0]
        return super().call_module(target, args, kwargs)

    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        if target in ops.BATCHNORM_FUNCTIONS or ops.is_dropout_function(target) or \
                ops.is_stochastic_depth_function(target) or target in ops.ACTIVATION_FUNCTIONS:
            return args[0]
        if target in ops.ADD_FUNCTIONS and _all_meta(args):
            return _broadcast(args)  # the meta add is a Python ref that imports torch._dynamo (1.5 s)
        return super().call_function(target, args, kwargs)

    def call_method(self, target: Any, args: Any, kwargs: Any) -> Any:
        if target in ops.ACTIVATION_METHODS or (target.endswith("_") and not target.startswith("_")):
            # in-place ops keep the shape, and must not touch real buffers (num_batches_tracked.add_)
            return args[0]
        return super().call_method(target, args, kwargs)


def _all_meta(args: Any) -> bool:
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return bool(tensors) and all(t.device.type == "meta" for t in tensors)


def _broadcast(args: Any) -> torch.Tensor:
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    return torch.empty(shape, dtype=tensors[0].dtype, device="meta")


def _check_channels(bn: nn.Module, x: Any) -> None:
    channels = getattr(bn, "num_features", None)
    if isinstance(x, torch.Tensor) and x.dim() >= 2 and channels and x.shape[1] != channels:
        raise RuntimeError(f"expected {channels} channels at dim 1, got input of shape {tuple(x.shape)}")


class _ShapeFailure(Exception):
    def __init__(self, name: str, node: fx.Node, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.name, self.node, self.exc = name, node, exc


def _shape_of(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, torch.Tensor):
        return tuple(int(d) for d in value.shape)
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return tuple(int(d) for d in value[0].shape)
    return None


_REAL_RUN_MAX_PARAMS = 30_000_000


def _shape_mode(target: Target) -> tuple[str, torch.Tensor]:
    """How shapes are found: "meta" tensors, a "real" forward, or "fake" tensors.

    Meta tensors cost no memory, but many meta kernels are Python refs whose first call imports
    torch._dynamo (about 1.5 s). A small model that we built ourselves on the meta device is
    cheaper to materialise, uninitialised, and run for real, unless that import was paid already.
    """
    root, example = target.model, target.example_input
    params = sum(p.numel() for p in root.parameters())
    if example.device.type == "meta":
        if target.origin != "api" and params <= _REAL_RUN_MAX_PARAMS and "torch._dynamo" not in sys.modules:
            root.to_empty(device="cpu")
            return "real", torch.randn(*example.shape)
        return "meta", example
    return ("real" if params <= _REAL_RUN_MAX_PARAMS else "fake"), example


def _propagate_shapes(gm: fx.GraphModule, example: torch.Tensor, device: str,
                      inlined: dict[str, fx.GraphModule]) -> dict[str, Any]:
    """Shapes per flow-node name. Modules run in eval mode, so buffers stay untouched."""
    flags = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        attempts = [(device, example)]
        if device == "real":  # uninitialised buffers (index tables) can break a real run: fake tensors next
            attempts.append(("fake", example))
        if example.shape[0] == 1:  # batch 1 trips train-mode batch_norm on 1x1 maps (Inception's aux head)
            attempts += [(mode, x.expand(2, *x.shape[1:])) for mode, x in list(attempts)]
        first: _ShapeFailure | None = None
        for mode, x in attempts:
            try:
                return _run_recorder(gm, x, mode, inlined)
            except _ShapeFailure as fail:
                first = first or fail
        assert first is not None
        raise _shape_error(gm, first, tuple(example.shape)) from first.exc
    finally:
        for m, flag in flags.items():
            m.training = flag


def _run_recorder(gm: fx.GraphModule, example: torch.Tensor, device: str,
                  inlined: dict[str, fx.GraphModule]) -> dict[str, Any]:
    shapes: dict[str, Any] = {}
    recorder = _ShapeRecorder(gm, shapes, "", inlined)
    if device in ("meta", "real"):
        with torch.no_grad():
            recorder.run(example)
    else:  # large real weights: fake tensors give shapes without computing anything
        from torch._subclasses.fake_tensor import FakeTensorMode
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True) as mode:
            recorder.run(mode.from_tensor(example))
    return shapes


def _shape_error(gm: fx.GraphModule, fail: _ShapeFailure, shape: tuple[int, ...]) -> DropcheckError:
    n = fail.node
    what = n.target if n.op == "call_module" else getattr(n.target, "__name__", str(n.target))
    text = (str(fail.exc).strip().splitlines() or [type(fail.exc).__name__])[0][:200]
    dims = ",".join(str(d) for d in shape)
    return DropcheckError("shape", f"input shape {dims} does not fit {type(gm).__name__} at {what}: {text}",
                          "pass the shape the model expects with --input-shape N,C,H,W")


# --- the public entry point ----------------------------------------------------------------------

def capture_graph(target: Target) -> Capture:
    """Trace the target's model in train and eval mode, inline opaque leaves, propagate shapes."""
    root = target.model
    if not isinstance(root, nn.Module):
        raise DropcheckError("load", f"{target.spec} is a {type(root).__name__}, not an nn.Module",
                             "audit() takes an nn.Module")
    mode, example = _shape_mode(target)  # before tracing: a GraphModule keeps references to parameters
    train_gm, tracer, evaluated, method, extra = _trace_both_modes(root)
    _, fns = _zoo_tracer_config() if method == "zoo-aware" else ((), [])

    inlined: dict[str, fx.GraphModule] = {}
    sub_tracers: dict[str, DropcheckTracer] = {}
    opaque: list[OpaqueRegion] = []
    _inline_leaves(train_gm, "", extra, fns, inlined, sub_tracers, opaque, depth=0)
    shapes = _propagate_shapes(train_gm, example, mode, inlined)
    device = "meta" if mode == "meta" else "cpu"
    nodes, outputs = _flow_graph(train_gm, tracer, inlined, sub_tracers, shapes)
    live = _eval_live_dropouts(evaluated, root, inlined, extra, fns) if evaluated else []
    capture = Capture(root=root, graph_module=train_gm, eval_graph_module=evaluated[0] if evaluated else None,
                      nodes=nodes, outputs=outputs, eval_live_dropouts=live, method=method, device=device,
                      opaque=opaque, declared=dict(target.declared_at))
    if evaluated is None:
        capture.notes.append("the eval-mode trace failed, so always-on dropout (DC006) was not checked")
    return capture


def _inline_leaves(gm: fx.GraphModule, prefix: str, extra: tuple[type, ...], fns: list[Callable[..., Any]],
                   inlined: dict[str, fx.GraphModule], sub_tracers: dict[str, DropcheckTracer],
                   opaque: list[OpaqueRegion], depth: int) -> None:
    for n in gm.graph.nodes:
        if n.op != "call_module":
            continue
        m = gm.get_submodule(n.target)
        if not _hides_something(m):
            continue
        qual = prefix + n.target
        if qual in inlined or any(o.module == qual for o in opaque):
            continue  # the same module called twice
        if ops.is_attention_module(m):  # torch's fused attention: fx cannot look inside, p is all we need
            opaque.append(_opaque_region(qual, m, "torch.nn leaf"))
            continue
        result = _subtrace(m, extra, fns, training=True) if depth < _MAX_INLINE_DEPTH else "nested too deep"
        if isinstance(result, str):
            opaque.append(_opaque_region(qual, m, result))
            continue
        sub_gm, sub_tracer = result
        inlined[qual] = sub_gm
        sub_tracers[qual] = sub_tracer
        _inline_leaves(sub_gm, qual + ".", extra, fns, inlined, sub_tracers, opaque, depth + 1)


def _opaque_region(qual: str, m: nn.Module, reason: str) -> OpaqueRegion:
    bns = tuple(f"{qual}.{n}" if n else qual for n, s in m.named_modules() if ops.is_batchnorm_module(s))
    drops = tuple(f"{qual}.{n}" if n else qual for n, s in m.named_modules()
                  if ops.is_dropout_module(s) or (ops.is_attention_module(s) and ops.module_p(s) > 0))
    return OpaqueRegion(module=qual, type=type(m).__name__, batchnorms=bns, dropouts=drops, reason=reason)


# --- the analysed data-flow graph ----------------------------------------------------------------

def _flow_graph(gm: fx.GraphModule, tracer: DropcheckTracer, inlined: dict[str, fx.GraphModule],
                sub_tracers: dict[str, DropcheckTracer],
                shapes: dict[str, Any]) -> tuple[dict[str, FlowNode], list[str]]:
    nodes: dict[str, FlowNode] = {}
    outputs = _add_graph(gm, "", "", tracer, inlined, sub_tracers, shapes, nodes, arg_map={})
    for fn in nodes.values():
        for i in fn.inputs:
            nodes[i].users.append(fn.name)
    return nodes, outputs


def _add_graph(gm: fx.GraphModule, prefix: str, owner_prefix: str, tracer: DropcheckTracer,
               inlined: dict[str, fx.GraphModule], sub_tracers: dict[str, DropcheckTracer],
               shapes: dict[str, Any], nodes: dict[str, FlowNode], arg_map: dict[str, list[str]]) -> list[str]:
    """Add one (sub)graph's nodes; returns the names feeding its output."""
    rename: dict[str, str] = {}
    placeholders = 0
    result: list[str] = []

    def refs(value: Any) -> list[str]:
        found: list[str] = []
        fx.node.map_arg(value, lambda a: found.append(rename[a.name]) or a)
        return found

    def names_of(value: Any) -> Any:
        return fx.node.map_arg(value, lambda a: rename[a.name])

    for n in gm.graph.nodes:
        name = prefix + n.name
        if n.op == "output":
            result = refs(n.args)
            continue
        owner = tracer.owners.get(n.name, "")
        owner = (owner_prefix + "." + owner if owner else owner_prefix) if owner_prefix else owner
        if n.op == "placeholder" and prefix:
            inputs = arg_map.get(str(placeholders), [])
            placeholders += 1
            nodes[name] = FlowNode(name=name, op="alias", target=None, inputs=list(inputs), shape=shapes.get(name),
                                   owner=owner)
            rename[n.name] = name
            continue
        qual_target = (owner_prefix + "." + n.target if owner_prefix else n.target) \
            if n.op in ("call_module", "get_attr") else n.target
        if n.op == "call_module" and qual_target in inlined:
            sub_gm = inlined[qual_target]
            sub_args = {str(i): refs(a) for i, a in enumerate(list(n.args) + list(n.kwargs.values()))}
            sub_out = _add_graph(sub_gm, qual_target + "::", qual_target, sub_tracers[qual_target], inlined,
                                 sub_tracers, shapes, nodes, sub_args)
            nodes[name] = FlowNode(name=name, op="alias", target=qual_target, inputs=sub_out,
                                   shape=shapes.get(name), owner=owner)
            rename[n.name] = name
            continue
        module = gm.get_submodule(n.target) if n.op == "call_module" else None
        nodes[name] = FlowNode(name=name, op=n.op, target=qual_target, module=module, inputs=refs((n.args, n.kwargs)),
                               shape=shapes.get(name), owner=owner, source=tracer.sources.get(n.name),
                               args=names_of(n.args), kwargs=names_of(n.kwargs))
        rename[n.name] = name
    return result


def _eval_live_dropouts(evaluated: tuple[fx.GraphModule, DropcheckTracer], root: nn.Module,
                        inlined: dict[str, fx.GraphModule],
                        extra: tuple[type, ...], fns: list[Callable[..., Any]]
                        ) -> list[tuple[str, str, SourceLocation | None, float]]:
    """Functional dropouts (and attention dropout) that still drop in the eval-mode graph."""
    graphs = [("", *evaluated)]
    for qual in inlined:  # inlined leaves: trace them in eval mode too
        result = _subtrace(root.get_submodule(qual), extra, fns, training=False)
        if not isinstance(result, str):
            graphs.append((qual, *result))
    live = []
    for qual, gm, tracer in graphs:
        for n in gm.graph.nodes:
            if n.op != "call_function" or not (ops.is_dropout_function(n.target)
                                               or n.target in ops.ATTENTION_FUNCTIONS):
                continue
            p, training = ops.function_p_and_training(n.target, n.args, n.kwargs)
            if p > 0 and training:
                owner = tracer.owners.get(n.name, "")
                owner = ".".join(x for x in (qual, owner) if x)
                live.append((owner, getattr(n.target, "__name__", str(n.target)), tracer.sources.get(n.name), p))
    return live
