"""The op vocabulary: which modules and functions are dropout, BatchNorm, weights, pools, merges.

Shared by capture (what must stay a leaf), the graph view (what each node is), and fix and
measure (the module that replaces a functional dropout). timm and torchvision types are
looked up only when those packages are already imported, so a user's own model never pays
for importing them.
"""
from __future__ import annotations

import inspect
import operator
import re
import types
import sys
from functools import lru_cache
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

DROPOUT_FUNCTIONS: dict[Callable[..., Any], tuple[str, int, str, int]] = {
    # function -> (p keyword, p position, training keyword, training position)
    F.dropout: ("p", 1, "training", 2),
    F.dropout1d: ("p", 1, "training", 2),
    F.dropout2d: ("p", 1, "training", 2),
    F.dropout3d: ("p", 1, "training", 2),
    F.alpha_dropout: ("p", 1, "training", 2),
    F.feature_alpha_dropout: ("p", 1, "training", 2),
    torch.dropout: ("p", 1, "train", 2),
    torch.feature_dropout: ("p", 1, "train", 2),
    torch.alpha_dropout: ("p", 1, "train", 2),
    torch.feature_alpha_dropout: ("p", 1, "train", 2),
}
# a functional dropout's name (a site's op) -> the module that does the same and that train()/eval() switch
MODULE_FOR_DROPOUT_FUNCTION: dict[str, type[nn.Module]] = {
    "dropout": nn.Dropout, "dropout1d": nn.Dropout1d, "dropout2d": nn.Dropout2d, "dropout3d": nn.Dropout3d,
    "alpha_dropout": nn.AlphaDropout, "feature_alpha_dropout": nn.FeatureAlphaDropout,
    "feature_dropout": nn.Dropout2d,
}
# dropouts that zero whole channels (feature maps) rather than single elements
CHANNELWISE_DROPOUT_MODULES = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.FeatureAlphaDropout)
CHANNELWISE_DROPOUT_FUNCTIONS = {F.dropout1d, F.dropout2d, F.dropout3d, F.feature_alpha_dropout,
                                 torch.feature_dropout, torch.feature_alpha_dropout}
ATTENTION_FUNCTIONS = {F.scaled_dot_product_attention}
BATCHNORM_FUNCTIONS = {F.batch_norm, torch.batch_norm}
WEIGHT_FUNCTIONS = {F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
                    F.conv_transpose3d, torch.conv1d, torch.conv2d, torch.conv3d, F.bilinear}
MATMUL_FUNCTIONS = {torch.matmul, operator.matmul, torch.bmm, torch.mm, torch.einsum, torch.addmm}
ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
ADD_METHODS = {"add", "add_", "__add__", "__iadd__"}
SOFTMAX_FUNCTIONS = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, torch.sigmoid, F.sigmoid}
SOFTMAX_METHODS = {"softmax", "log_softmax", "sigmoid"}
# average pooling only: Prop. 5 is about GAP (max pooling is not a global average)
POOL_FUNCTIONS = {F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.avg_pool1d, F.avg_pool2d,
                  F.avg_pool3d, torch.mean, torch.sum}
POOL_METHODS = {"mean", "sum"}
POOL_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AvgPool1d, nn.AvgPool2d,
                nn.AvgPool3d)
WEIGHT_MODULES = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd, nn.modules.linear.LazyLinear)
ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.PReLU, nn.Hardswish,
                      nn.Mish, nn.Tanh, nn.Softplus, nn.SELU, nn.CELU, nn.GLU, nn.Hardtanh)
ACTIVATION_FUNCTIONS = {F.relu, F.relu6, F.gelu, F.silu, F.elu, F.leaky_relu, F.hardswish, F.mish, F.selu,
                        torch.relu, torch.tanh, F.tanh, F.hardtanh, F.softplus, F.celu, F.prelu}
ACTIVATION_METHODS = {"relu", "relu_", "tanh", "gelu"}

_DROPOUT_NAME = re.compile(r"drop_?out|drop_?block|dropchannel", re.IGNORECASE)
_STOCHASTIC_NAME = re.compile(r"drop_?path|stochastic_?depth|drop_?connect", re.IGNORECASE)


@lru_cache(maxsize=None)
def _zoo_types(timm_loaded: bool, tv_loaded: bool) -> dict[str, tuple[type, ...]]:
    dropout: list[type] = []
    stochastic: list[type] = []
    batchnorm: list[type] = []
    if tv_loaded:
        from torchvision.ops import FrozenBatchNorm2d, StochasticDepth
        stochastic.append(StochasticDepth)
        batchnorm.append(FrozenBatchNorm2d)
    if timm_loaded:
        from timm.layers import DropBlock2d, DropPath
        dropout.append(DropBlock2d)
        stochastic.append(DropPath)
    return {"dropout": tuple(dropout), "stochastic": tuple(stochastic), "batchnorm": tuple(batchnorm)}


def zoo_types() -> dict[str, tuple[type, ...]]:
    return _zoo_types("timm.layers" in sys.modules, "torchvision.ops" in sys.modules)


@lru_cache(maxsize=None)
def _zoo_functions(timm_loaded: bool, tv_loaded: bool) -> dict[str, set[Callable[..., Any]]]:
    dropout: set[Callable[..., Any]] = set()
    stochastic: set[Callable[..., Any]] = set()
    if tv_loaded:
        from torchvision.ops import stochastic_depth
        stochastic.add(stochastic_depth)
    if timm_loaded:
        from timm.layers import drop as timm_drop
        dropout.update(f for f in (getattr(timm_drop, "drop_block_2d", None),
                                   getattr(timm_drop, "drop_block_fast_2d", None)) if f)
        stochastic.add(timm_drop.drop_path)
    return {"dropout": dropout, "stochastic": stochastic}


def zoo_functions() -> dict[str, set[Callable[..., Any]]]:
    return _zoo_functions("timm.layers" in sys.modules, "torchvision.ops" in sys.modules)


# --- modules -------------------------------------------------------------------------------------

def is_stochastic_depth_module(m: nn.Module) -> bool:
    return isinstance(m, zoo_types()["stochastic"]) or (
        not _has_children(m) and bool(_STOCHASTIC_NAME.search(type(m).__name__)))


def is_dropout_module(m: nn.Module) -> bool:
    if isinstance(m, nn.modules.dropout._DropoutNd) or isinstance(m, zoo_types()["dropout"]):
        return True
    # other libraries' dropout layers (SpatialDropout, ...) by name, when they are leaves
    return (not _has_children(m) and not is_stochastic_depth_module(m)
            and bool(_DROPOUT_NAME.search(type(m).__name__)))


def is_batchnorm_module(m: nn.Module) -> bool:
    """A normalisation that keeps running statistics: it uses training statistics at test time.

    BatchNorm with track_running_stats=False normalises with batch statistics in both phases
    (no shift); InstanceNorm with track_running_stats=True has the same shift as BatchNorm.
    """
    if isinstance(m, zoo_types()["batchnorm"]):
        return True
    return isinstance(m, nn.modules.batchnorm._NormBase) and bool(m.track_running_stats)


def is_batchnorm_call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """F.batch_norm with running statistics (running_mean None means batch statistics always)."""
    if fn not in BATCHNORM_FUNCTIONS:
        return False
    running_mean = kwargs.get("running_mean", args[1] if len(args) > 1 else None)
    return running_mean is not None


def is_weight_module(m: nn.Module) -> bool:
    """Convolutions and linear layers, and any other layer holding a weight matrix (LSTM, GRU, ...)."""
    if isinstance(m, WEIGHT_MODULES):
        return True
    return any(p.dim() >= 2 for p in m.parameters())


def is_activation_module(m: nn.Module) -> bool:
    return isinstance(m, ACTIVATION_MODULES)


def is_attention_module(m: nn.Module) -> bool:
    return isinstance(m, nn.MultiheadAttention)


def masks_channels(module: nn.Module | None, fn: Any = None) -> bool:
    """A channel-wise dropout (Dropout1d/2d/3d, FeatureAlphaDropout, their functions): one mask per channel."""
    if module is not None:
        return isinstance(module, CHANNELWISE_DROPOUT_MODULES)
    return fn in CHANNELWISE_DROPOUT_FUNCTIONS


def module_p(m: nn.Module) -> float:
    """The drop probability a dropout-family module uses (0.0 if it keeps none)."""
    if isinstance(m, nn.MultiheadAttention):
        return float(m.dropout)
    for attr in ("p", "drop_prob", "drop_rate", "rate", "prob"):
        value = getattr(m, attr, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return 0.0


def _has_children(m: nn.Module) -> bool:
    return next(iter(m.children()), None) is not None


# --- functions -----------------------------------------------------------------------------------

def is_dropout_function(fn: Any) -> bool:
    return fn in DROPOUT_FUNCTIONS or fn in zoo_functions()["dropout"]


def is_stochastic_depth_function(fn: Any) -> bool:
    return fn in zoo_functions()["stochastic"] or is_user_stochastic_function(fn)


def is_user_stochastic_function(fn: Any) -> bool:
    """A Python function named like stochastic depth (`drop_connect`, `drop_path`) outside torch: the
    user's own, which the tracer keeps as one call (it would otherwise inline it into rand and floor)."""
    return (isinstance(fn, types.FunctionType) and bool(_STOCHASTIC_NAME.search(fn.__name__))
            and not (fn.__module__ or "").startswith("torch"))


def function_p_and_training(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[float, bool]:
    """Drop probability and training flag of a functional dropout or attention call."""
    if fn in ATTENTION_FUNCTIONS:
        p = kwargs.get("dropout_p", args[4] if len(args) > 4 else 0.0)
        return _as_float(p), True
    if fn in DROPOUT_FUNCTIONS:
        p_kw, p_pos, t_kw, t_pos = DROPOUT_FUNCTIONS[fn]
        p = kwargs.get(p_kw, args[p_pos] if len(args) > p_pos else 0.5)
        training = kwargs.get(t_kw, args[t_pos] if len(args) > t_pos else True)
        return _as_float(p), bool(training) if isinstance(training, bool) else True
    bound = _bind(fn, args, kwargs)  # timm drop_block_2d & co, users' drop_connect: p under some name
    training = bound.get("training", True)
    training = training if isinstance(training, bool) else True
    for name in ("drop_prob", "p", "drop_rate", "drop_connect_rate", "drop_path_rate", "rate", "prob"):
        if name in bound:
            return _as_float(bound[name]), training
    for name in ("keep_prob", "survival_prob", "survival_rate"):  # written as what is kept
        if isinstance(bound.get(name), (int, float)) and not isinstance(bound[name], bool):
            return 1.0 - float(bound[name]), training
    return 0.0, True


def _bind(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        sig = inspect.signature(fn)
        bound = sig.bind_partial(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)
    except (TypeError, ValueError):
        return dict(kwargs)


def _as_float(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
