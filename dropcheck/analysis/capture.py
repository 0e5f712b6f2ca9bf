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
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from torch import fx, nn

from . import ops
from .flow import build_flow_graph
from ..records import Capture, DropcheckError, OpaqueRegion, Target
from .shapes import Inlined, propagate_shapes, shape_mode
from .trace_errors import trace_error
from .tracer import DropcheckTracer, user_stochastic_functions

_MAX_INLINE_DEPTH = 4


# --- tracing -------------------------------------------------------------------------------------

def _zoo_tracer_config() -> tuple[tuple[type, ...], list[Callable[..., Any]]]:
    """timm's own notrace modules and functions, when timm is in use."""
    if "timm" not in sys.modules:
        return (), []
    from timm.layers import _fx as timm_fx
    return tuple(timm_fx.get_notrace_modules()), list(timm_fx.get_notrace_functions())


def _trace(root: nn.Module, tracer: DropcheckTracer, concrete: dict[str, Any] | None = None,
           n_inputs: int = 1) -> fx.GraphModule:
    concrete = _concrete_defaults(root, n_inputs) if concrete is None else concrete
    graph = tracer.trace(root, concrete_args=concrete or None)
    name = root.__class__.__name__ if isinstance(root, nn.Module) else "Model"
    return fx.GraphModule(tracer.root, graph, name)


def _concrete_defaults(root: nn.Module, n_inputs: int = 1) -> dict[str, Any]:
    """Optional forward arguments after the inputs keep their defaults (no proxies for None flags)."""
    try:
        params = list(inspect.signature(root.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    out = {}
    for p in params[n_inputs:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is not inspect.Parameter.empty:
            out[p.name] = p.default
    return out


@contextmanager
def _restored(root: nn.Module) -> Iterator[None]:
    """Tracing flips train/eval and fx parks tensor constants on the root: undo both afterwards."""
    flags = {m: m.training for m in root.modules()}
    attributes = set(root.__dict__)
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag
        for name in set(root.__dict__) - attributes:  # the GraphModules keep their own references
            delattr(root, name)


def _trace_train(root: nn.Module, inputs: tuple[Any, ...], mode: str) -> tuple[fx.GraphModule, DropcheckTracer, str,
                                                                              Callable[[], DropcheckTracer]]:
    """Trace in train mode with the plain tracer, then the zoo-aware one, then specialising on the
    example input (analysis.specialise); returns how to make the same tracer again (for eval mode)."""
    leaves, zoo_functions = _zoo_tracer_config()
    own = user_stochastic_functions(root)  # kept as calls by every attempt
    functions = [*zoo_functions, *own]
    attempts: list[tuple[str, Callable[[], DropcheckTracer]]] = [("symbolic_trace", lambda: DropcheckTracer((), own))]
    if leaves or zoo_functions:
        attempts.append(("zoo-aware", lambda: DropcheckTracer(leaves, functions)))
    attempts.append(("specialised", lambda: _specialising(root, inputs, mode, leaves, functions)))
    errors: list[DropcheckError] = []
    with _restored(root):
        for method, make in attempts:
            root.train()
            tracer = make()
            try:
                gm = _trace(root, tracer, n_inputs=len(inputs))
            except Exception as exc:  # noqa: BLE001 - any tracing failure is reported the same way
                errors.append(trace_error(root, exc))
                continue
            if method == "specialised":
                from .specialise import describe
                stopped = errors[0].message.partition(": cannot")[0] if ": cannot" in errors[0].message else "?"
                tracer.notes = [describe(tracer.decisions, inputs, stopped)]  # type: ignore[attr-defined]
            return gm, tracer, method, make
    raise errors[-1]  # the specialised trace's error: it got furthest


def _specialising(root: nn.Module, inputs: tuple[Any, ...], mode: str, leaves: tuple[type, ...],
                  functions: list[Callable[..., Any]]) -> DropcheckTracer:
    from .specialise import SpecialisingTracer
    return SpecialisingTracer(root, inputs, mode, leaves, functions)


def _trace_eval(root: nn.Module, n_inputs: int, make: Callable[[], DropcheckTracer]
                ) -> tuple[fx.GraphModule, DropcheckTracer] | None:
    """The eval-mode graph, traced the way the train graph was; None if only eval mode fails."""
    with _restored(root):
        root.eval()
        tracer = make()
        try:
            return _trace(root, tracer, n_inputs=n_inputs), tracer
        except Exception:  # noqa: BLE001 - eval-only failure: DC006 cannot be checked
            return None


def _calls_functional_dropout(gm: fx.GraphModule, inlined: dict[str, Inlined]) -> bool:
    """Whether any graph calls dropout as a function with p > 0: only those can stay on in eval mode
    (DC006). timm's attention passes dropout_p=0.0 unless attn_drop_rate is set."""
    return any(n.op == "call_function" and (ops.is_dropout_function(n.target) or n.target in ops.ATTENTION_FUNCTIONS)
               and ops.function_p_and_training(n.target, n.args, n.kwargs)[0] > 0
               for g in [gm, *(i.gm for i in inlined.values())] for n in g.graph.nodes)


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


def _subtrace(m: nn.Module, extra: tuple[type, ...], fns: list[Callable[..., Any]], training: bool,
              call: fx.Node | None = None) -> Inlined | str:
    """Trace a leaf on its own; arguments the call passes as constants stay constants."""
    try:
        signature = inspect.signature(m.forward)
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in signature.parameters.values()):
            return "forward takes *args or **kwargs"
        bound = signature.bind(*call.args, **call.kwargs).arguments if call is not None else {}
    except (TypeError, ValueError) as exc:
        return f"its call does not match forward: {exc}"
    concrete = {name: bound.get(name, p.default) for name, p in signature.parameters.items()
                if not _holds_node(bound.get(name)) and (name in bound or p.default is not p.empty)}
    flags = {s: s.training for s in m.modules()}
    try:
        m.train(training)
        tracer = DropcheckTracer(tuple(t for t in extra if t is not type(m)), fns)
        return Inlined(_trace(m, tracer, concrete), tracer, signature)
    except Exception as exc:  # noqa: BLE001 - reported as an opaque region
        return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}"
    finally:
        for s, flag in flags.items():
            s.training = flag


def _holds_node(value: Any) -> bool:
    found: list[fx.Node] = []
    fx.node.map_arg(value, lambda a: found.append(a) or a)
    return bool(found)


# --- the public entry point ----------------------------------------------------------------------

def capture_graph(target: Target, eval_graph: bool = True) -> Capture:
    """Trace the target's model in train and eval mode, inline opaque leaves, propagate shapes.

    With `eval_graph=False` (audit, measure) the eval-mode trace runs only where it can change a
    verdict: when some graph calls dropout as a function (DC006). fix needs it always.
    """
    root = target.model
    if not isinstance(root, nn.Module):
        raise DropcheckError("load", f"{target.spec} is a {type(root).__name__}, not an nn.Module",
                             "audit() takes an nn.Module")
    mode, inputs = shape_mode(target)  # before tracing: a GraphModule keeps references to parameters
    train_gm, tracer, method, make = _trace_train(root, inputs, mode)
    extra, fns = tracer.extra_leaves, tracer.autowrap_fns

    inlined: dict[str, Inlined] = {}
    opaque: list[OpaqueRegion] = []
    _inline_leaves(train_gm, "", extra, fns, inlined, opaque, depth=0)
    wanted = eval_graph or _calls_functional_dropout(train_gm, inlined)
    evaluated = _trace_eval(root, len(inputs), make) if wanted else None
    shapes = propagate_shapes(train_gm, inputs, mode, inlined)
    nodes, outputs = build_flow_graph(train_gm, tracer, inlined, shapes)
    live = _eval_live_dropouts(evaluated, root, train_gm, inlined, extra, fns) if evaluated else []
    capture = Capture(root=root, graph_module=train_gm, eval_graph_module=evaluated[0] if evaluated else None,
                      nodes=nodes, outputs=outputs, eval_live_dropouts=live, method=method,
                      device="meta" if mode == "meta" else "cpu", opaque=opaque, declared=dict(target.declared_at),
                      owners=dict(tracer.owners), eval_owners=dict(evaluated[1].owners) if evaluated else {})
    capture.notes.extend(getattr(tracer, "notes", []))
    if wanted and evaluated is None:
        capture.notes.append("the eval-mode trace failed, so always-on dropout (DC006) was not checked")
    return capture


def _inline_leaves(gm: fx.GraphModule, prefix: str, extra: tuple[type, ...], fns: list[Callable[..., Any]],
                   inlined: dict[str, Inlined], opaque: list[OpaqueRegion], depth: int) -> None:
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
        result = _subtrace(m, extra, fns, True, n) if depth < _MAX_INLINE_DEPTH else "nested too deep"
        if isinstance(result, str):
            opaque.append(_opaque_region(qual, m, result))
            continue
        inlined[qual] = result
        _inline_leaves(result.gm, qual + ".", extra, fns, inlined, opaque, depth + 1)


def _opaque_region(qual: str, m: nn.Module, reason: str) -> OpaqueRegion:
    bns = tuple(f"{qual}.{n}" if n else qual for n, s in m.named_modules() if ops.is_batchnorm_module(s))
    drops = tuple(f"{qual}.{n}" if n else qual for n, s in m.named_modules()
                  if ops.is_dropout_module(s) or (ops.is_attention_module(s) and ops.module_p(s) > 0))
    return OpaqueRegion(module=qual, type=type(m).__name__, batchnorms=bns, dropouts=drops, reason=reason)


def _eval_live_dropouts(evaluated: tuple[fx.GraphModule, DropcheckTracer], root: nn.Module,
                        train_gm: fx.GraphModule, inlined: dict[str, Inlined], extra: tuple[type, ...],
                        fns: list[Callable[..., Any]]) -> list[tuple[str, str, int, float]]:
    """Functional dropouts (and attention dropout) that still drop in the eval-mode graph.

    Each is named by (owner, function, occurrence within the owner): fx keeps a gated call in the
    eval graph with training=False, so occurrences line up with the train graph's.
    """
    graphs = [("", *evaluated)]
    for qual in inlined:  # inlined leaves: trace them in eval mode too, called the same way
        call = _call_of(train_gm, inlined, qual)
        result = _subtrace(root.get_submodule(qual), extra, fns, False, call)
        if not isinstance(result, str):
            graphs.append((qual, result.gm, result.tracer))
    live = []
    for qual, gm, tracer in graphs:
        seen: dict[tuple[str, str], int] = {}
        for n in gm.graph.nodes:
            if n.op != "call_function" or not (ops.is_dropout_function(n.target)
                                               or n.target in ops.ATTENTION_FUNCTIONS):
                continue
            owner = ".".join(x for x in (qual, tracer.owners.get(n.name, "")) if x)
            op = getattr(n.target, "__name__", str(n.target))
            occurrence = seen.get((owner, op), 0)
            seen[(owner, op)] = occurrence + 1
            p, training = ops.function_p_and_training(n.target, n.args, n.kwargs)
            if p > 0 and training:
                live.append((owner, op, occurrence, p))
    return live


def _call_of(gm: fx.GraphModule, inlined: dict[str, Inlined], qual: str) -> fx.Node | None:
    """The call_module node that calls `qual`, in the top graph or in an inlined leaf's graph."""
    for prefix, graph in [("", gm), *((q + ".", i.gm) for q, i in inlined.items())]:
        for n in graph.graph.nodes:
            if n.op == "call_module" and prefix + n.target == qual:
                return n
    return None
