"""Shape propagation: one run of the traced graph, recording each node's output shape.

Meta tensors cost no memory, but many meta kernels are Python refs whose first call imports
torch._dynamo (about 1.5 s). Shape-preserving ops (dropout, BatchNorm, activations, adds) are
therefore answered without running them, and a small model that dropcheck built itself on the
meta device is materialised (uninitialised) and run for real instead.
"""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import fx, nn

from . import ops
from ..records import DropcheckError, Target

REAL_RUN_MAX_PARAMS = 30_000_000


class Inlined:
    """A leaf traced on its own and inlined into the analysis, with its calling convention."""

    def __init__(self, gm: fx.GraphModule, tracer: Any, signature: Any) -> None:
        self.gm, self.tracer, self.signature = gm, tracer, signature

    def placeholder_values(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        """Values for the sub-graph's placeholders (one per forward parameter, in order)."""
        bound = self.signature.bind(*args, **kwargs)
        return [bound.arguments.get(name, p.default) for name, p in self.signature.parameters.items()]


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once and records each node's output shape under its flow-node name."""

    def __init__(self, gm: fx.GraphModule, shapes: dict[str, Any], module_prefix: str,
                 inlined: dict[str, Inlined]) -> None:
        super().__init__(gm)
        self.shapes = shapes
        self.module_prefix = module_prefix  # "" or "a.b." (qualname of the inlined leaf)
        self.prefix = module_prefix[:-1] + "::" if module_prefix else ""  # flow-node name prefix
        self.inlined = inlined
        self.node: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.node = n
        try:
            out = super().run_node(n)
        except DropcheckError:
            raise
        except Exception as exc:
            raise _ShapeFailure(n, exc) from exc
        self.shapes[self.prefix + n.name] = _shape_of(out)
        return out

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        key = self.module_prefix + target
        if key in self.inlined:
            sub = self.inlined[key]
            values = sub.placeholder_values(args, kwargs)
            return _ShapeRecorder(sub.gm, self.shapes, key + ".", self.inlined).run(*values)
        m = self.fetch_attr(target)
        if ops.is_dropout_module(m) or ops.is_stochastic_depth_module(m) or (
                ops.is_activation_module(m) and not isinstance(m, nn.GLU)):
            return args[0]
        if ops.is_batchnorm_module(m) and next(iter(m.children()), None) is None:
            _check_channels(m, args[0])
            return args[0]
        if _all_meta(args):
            known = _meta_module_output(m, args, kwargs)
            if known is not None:
                return known
        if isinstance(m, nn.RNNBase) and not kwargs:  # run for real, an LSTM costs ~100 ms a call
            known = _rnn_output(m, args)
            if known is not None:
                return known
        return super().call_module(target, args, kwargs)

    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        if target in ops.BATCHNORM_FUNCTIONS or ops.is_dropout_function(target) or \
                ops.is_stochastic_depth_function(target) or target in ops.ACTIVATION_FUNCTIONS:
            return args[0]
        if target in ops.ADD_FUNCTIONS and _all_meta(args):
            return _broadcast(args)
        if target in _SHAPE_PRESERVING_NORMS and _all_meta(args[:1]):
            return args[0]
        return super().call_function(target, args, kwargs)

    def call_method(self, target: Any, args: Any, kwargs: Any) -> Any:
        if target in ops.ACTIVATION_METHODS:
            return args[0]
        first = self.node.args[0] if self.node is not None and self.node.args else None
        if target.endswith("_") and isinstance(first, fx.Node) and first.op == "get_attr":
            return args[0]  # an in-place update of a buffer (num_batches_tracked.add_): never touch it
        return super().call_method(target, args, kwargs)


# --- meta shortcuts: torch's meta kernels for these are Python refs (ms per call); shapes are known --

_SHAPE_PRESERVING_NORMS = {F.layer_norm, F.group_norm, F.local_response_norm, *(
    [F.rms_norm] if hasattr(F, "rms_norm") else [])}
_NORM_FORWARDS = {c.forward for c in (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, getattr(nn, "RMSNorm", None))
                  if c is not None}


def _meta_module_output(m: nn.Module, args: Any, kwargs: Any) -> Any:
    """The output of a Linear, a normalisation or an attention module on meta inputs, or None to run it.

    Only exact matches are answered (the right feature size, plain arguments); anything else runs,
    so a wrong input still fails where it would."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        return None
    if type(m) is nn.Linear and x.shape[-1] == m.in_features and not kwargs:
        return torch.empty((*x.shape[:-1], m.out_features), dtype=x.dtype, device="meta")
    if type(m).forward in _NORM_FORWARDS and not kwargs:  # torch's own norms, not subclasses that add steps
        shape = getattr(m, "normalized_shape", None)
        if shape is None or tuple(x.shape[-len(shape):]) == tuple(shape):
            return x
    if type(m) is nn.MultiheadAttention:
        return _attention_output(m, args, kwargs)
    return None


def _attention_output(m: nn.MultiheadAttention, args: Any, kwargs: Any) -> Any:
    """(output, weights) of nn.MultiheadAttention from its query and key shapes."""
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights")
    bound = {**dict(zip(names, args)), **kwargs}
    query, key = bound.get("query"), bound.get("key")
    if not (isinstance(query, torch.Tensor) and isinstance(key, torch.Tensor)) or query.dim() not in (2, 3) \
            or query.shape[-1] != m.embed_dim or set(bound) - set(names):
        return None
    output = torch.empty((*query.shape[:-1], m.embed_dim), dtype=query.dtype, device="meta")
    if not bound.get("need_weights", True):
        return output, None
    batched = query.dim() == 3
    length = query.shape[1 if m.batch_first else 0] if batched else query.shape[0]
    source = key.shape[1 if m.batch_first else 0] if batched else key.shape[0]
    heads = () if bound.get("average_attn_weights", True) else (m.num_heads,)
    batch = (query.shape[0 if m.batch_first else 1],) if batched else ()
    return output, torch.empty((*batch, *heads, length, source), dtype=query.dtype, device="meta")


def _rnn_output(m: nn.RNNBase, args: Any) -> Any:
    """(output, h_n) — or (output, (h_n, c_n)) for an LSTM — as zeros of the right shapes."""
    x = args[0] if args else None
    if type(m) not in (nn.LSTM, nn.GRU, nn.RNN) or not isinstance(x, torch.Tensor) or x.dim() not in (2, 3) \
            or x.shape[-1] != m.input_size:
        return None
    directions = 2 if m.bidirectional else 1
    out_size = getattr(m, "proj_size", 0) or m.hidden_size
    batch = () if x.dim() == 2 else (x.shape[0 if m.batch_first else 1],)
    make = lambda *shape: torch.zeros(shape, dtype=x.dtype, device=x.device)  # noqa: E731
    output = make(*x.shape[:-1], directions * out_size)
    h_n = make(directions * m.num_layers, *batch, out_size)
    if type(m) is nn.LSTM:
        return output, (h_n, make(directions * m.num_layers, *batch, m.hidden_size))
    return output, h_n


class _ShapeFailure(Exception):
    def __init__(self, node: fx.Node, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.node, self.exc = node, exc


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


def _shape_of(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, torch.Tensor):
        return tuple(int(d) for d in value.shape)
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return tuple(int(d) for d in value[0].shape)
    return None


def shape_mode(target: Target) -> tuple[str, tuple[Any, ...]]:
    """How shapes are found ("meta", "real" or "fake") and the inputs to run with.

    Called before tracing: a GraphModule keeps references to the parameters it saw.
    """
    root, inputs = target.model, target.inputs
    params = sum(p.numel() for p in root.parameters())
    on_meta = any(isinstance(x, torch.Tensor) and x.device.type == "meta" for x in inputs)
    if on_meta:
        if target.origin != "api" and params <= REAL_RUN_MAX_PARAMS and "torch._dynamo" not in sys.modules:
            materialise_on_cpu(root)
            return "real", tuple(torch.randn(*x.shape) if isinstance(x, torch.Tensor) else x for x in inputs)
        return "meta", inputs
    return ("real" if params <= REAL_RUN_MAX_PARAMS else "fake"), inputs


def materialise_on_cpu(model: nn.Module) -> None:
    """`model.to_empty(device="cpu")` without its cost: to_empty calls empty_like on meta tensors, a
    Python ref whose first use imports torch's primitives (about 0.9 s); a plain factory does not."""
    model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device="cpu") if t.device.type == "meta" else t)


def propagate_shapes(gm: fx.GraphModule, inputs: tuple[Any, ...], mode: str,
                     inlined: dict[str, Inlined]) -> dict[str, Any]:
    """Shapes per flow-node name. Modules run in eval mode, so no buffer changes."""
    flags = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        attempts = [(mode, inputs)]
        if mode == "real":  # uninitialised buffers (index tables) can break a real run: fake tensors next
            attempts.append(("fake", inputs))
        if _batch(inputs) == 1:  # batch 1 trips train-mode batch_norm on 1x1 maps (Inception's aux head)
            attempts += [(m, tuple(_twice(x) for x in xs)) for m, xs in list(attempts)]
        first: _ShapeFailure | None = None
        for how, xs in attempts:
            try:
                return _run_recorder(gm, xs, how, inlined)
            except _ShapeFailure as fail:
                first = first or fail
        assert first is not None
        raise _shape_error(gm, first, inputs) from first.exc
    finally:
        for m, flag in flags.items():
            m.training = flag


def _batch(inputs: tuple[Any, ...]) -> int | None:
    first = inputs[0] if inputs else None
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else None


def _twice(x: Any) -> Any:
    return x.expand(2, *x.shape[1:]) if isinstance(x, torch.Tensor) and x.dim() and x.shape[0] == 1 else x


def _run_recorder(gm: fx.GraphModule, inputs: tuple[Any, ...], mode: str,
                  inlined: dict[str, Inlined]) -> dict[str, Any]:
    shapes: dict[str, Any] = {}
    recorder = _ShapeRecorder(gm, shapes, "", inlined)
    if mode in ("meta", "real"):
        with torch.no_grad():
            recorder.run(*inputs)
        return shapes
    from torch._subclasses.fake_tensor import FakeTensorMode

    with torch.no_grad(), _quiet("torch._subclasses"), FakeTensorMode(allow_non_fake_inputs=True) as fake:
        recorder.run(*(fake.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in inputs))
    return shapes


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Fake-tensor failures are expected on some fallbacks; their logs are not for the user."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _shape_error(gm: fx.GraphModule, fail: _ShapeFailure, inputs: tuple[Any, ...]) -> DropcheckError:
    n = fail.node
    what = n.target if n.op == "call_module" else getattr(n.target, "__name__", str(n.target))
    text = (str(fail.exc).strip().splitlines() or [type(fail.exc).__name__])[0][:200]
    dims = "; ".join(",".join(str(d) for d in x.shape) for x in inputs if isinstance(x, torch.Tensor))
    return DropcheckError("shape", f"input shape {dims} does not fit {type(gm).__name__} at {what}: {text}",
                          "pass the shape the model expects with --input-shape N,C,H,W")
