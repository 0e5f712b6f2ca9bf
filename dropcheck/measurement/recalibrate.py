"""Re-estimate BatchNorm population statistics with dropout off: the variance shift, removed.

Why this works (Kim et al. §2.1). During training a dropout that feeds a BatchNorm scales
the units it keeps by 1/p, so the BN sees a larger variance than it will at test time, and
its running_var is an estimate of that train-time variance. At test time dropout is off, the
input variance is smaller (the inconsistency ratio Δ = Var_test / Var_train < 1), but BN
still divides by the train-time estimate, so every later layer gets activations of the wrong
scale: the "variance shift". The learned weights are not the problem; the population
statistics are. Running data through the trained model with dropout (and everything else)
in test-time mode and each BN in train mode re-estimates running_mean/var from the variance
the BN will really see at test time, so the statistics it normalises with become
consistent (Δ = 1 after the recalibration, by construction). No weight changes, so no
retraining: a few hundred batches of unlabelled data are enough.

The estimator is fvcore's `fvcore.nn.precise_bn.update_bn_stats` (the population mean and
variance over all batches, weighted by batch size, rather than an exponential average), used
when fvcore is installed (`pip install 'dropcheck[measure]'`); otherwise a small fallback
computes the same quantity, in float64. The caller's training flags are restored afterwards,
parameters are never touched, and a failed run leaves the running statistics as they were.
"""
from __future__ import annotations

import itertools
import warnings
from typing import Any, Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..records import DropcheckError

def recalibrate_bn(model: nn.Module, data: Iterable[Any], num_iters: int) -> None:
    """Replace every BN's running_mean/var by its population statistics over `num_iters` batches.

    `data` yields model inputs, or `(inputs, targets)` pairs (targets are ignored), already on
    the model's device. Every module but the BNs runs in eval mode, so every dropout is off:
    nn.Dropout*, timm's DropPath/DropBlock, torchvision's StochasticDepth, and functional
    dropout that follows its owner's `training` flag (one hard-wired on, DC006, stays on).
    """
    if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 1:
        raise DropcheckError("usage", f"{num_iters!r} is not a positive number of batches", "e.g. --batches 200")
    bns = _bn_modules(model)
    if not bns:
        return
    flags = {m: m.training for m in model.modules()}
    saved = {bn: (bn.running_mean.detach().clone(), bn.running_var.detach().clone(), bn.momentum,
                  set(bn._forward_pre_hooks), set(bn._forward_hooks)) for bn in bns}
    feed = _Feed(data, num_iters)
    done = False
    try:
        model.eval()
        for bn in bns:
            bn.training = True  # the flag only: a child of a BN (timm's BatchNormAct2d.drop) stays in eval
        _run(model, bns, feed, num_iters)
        done = True
    finally:
        for m, flag in flags.items():
            m.training = flag
        for bn, (mean, var, momentum, pre_hooks, hooks) in saved.items():
            bn.momentum = momentum
            for key in set(bn._forward_pre_hooks) - pre_hooks:  # left behind if fvcore stopped early
                del bn._forward_pre_hooks[key]
            for key in set(bn._forward_hooks) - hooks:
                del bn._forward_hooks[key]
            if not done:
                with torch.no_grad():
                    bn.running_mean.copy_(mean)
                    bn.running_var.copy_(var)


def bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """`{qualname.running_mean: ..., qualname.running_var: ...}` for every BN, copied to the CPU."""
    state: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if _tracks_stats(module):
            state[f"{name}.running_mean"] = module.running_mean.detach().cpu().clone()
            state[f"{name}.running_var"] = module.running_var.detach().cpu().clone()
    return state


# --- helpers -------------------------------------------------------------------------------------

def _tracks_stats(module: nn.Module) -> bool:
    return isinstance(module, _BatchNorm) and module.track_running_stats and module.running_mean is not None


def _bn_modules(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if _tracks_stats(m)]


class _Feed:
    """The first `limit` inputs of `data` (tuples give their first item), counting what it gave."""

    def __init__(self, data: Iterable[Any], limit: int) -> None:
        self.data, self.limit, self.given = data, limit, 0

    def __iter__(self) -> Iterator[Any]:
        for item in itertools.islice(self.data, self.limit):
            self.given += 1
            yield item[0] if isinstance(item, (tuple, list)) else item


def _run(model: nn.Module, bns: list[_BatchNorm], feed: _Feed, num_iters: int) -> None:
    try:
        if _fvcore_covers(bns):
            from fvcore.nn.precise_bn import update_bn_stats

            update_bn_stats(model, feed, num_iters)
        else:
            _population_stats(model, bns, feed)
    except AssertionError as exc:  # fvcore checks its preconditions with assert
        if feed.given < num_iters:
            raise _short(feed.given, num_iters) from None
        raise DropcheckError("recalibrate", f"cannot re-estimate BatchNorm statistics: {exc}",
                             "every BatchNorm must be called once per forward") from None
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise DropcheckError("data", f"the model failed on the data: {type(exc).__name__}: {first}",
                             "check that --data and --input-shape match what the model takes") from exc
    if feed.given < num_iters:
        raise _short(feed.given, num_iters)


def _short(given: int, wanted: int) -> DropcheckError:
    return DropcheckError("data", f"the data gave {given} batches, {wanted} were asked for",
                          "ask for fewer batches, or give more data")


def _fvcore_covers(bns: list[_BatchNorm]) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # fvcore's import scripts with torch.jit
            from fvcore.nn.precise_bn import BN_MODULE_TYPES
    except ImportError:
        return False
    return all(isinstance(bn, BN_MODULE_TYPES) for bn in bns)


@torch.no_grad()
def _population_stats(model: nn.Module, bns: list[_BatchNorm], feed: _Feed) -> None:
    """fvcore's estimator without fvcore: the mean and biased variance over every element seen.

    With momentum 1 a BN's running stats after a call are that call's batch mean and unbiased
    variance; a forward hook weights them by the elements per channel (N, or N*H*W), so a BN
    called twice in one forward simply counts twice.
    """
    sums: dict[nn.Module, list[Any]] = {}

    def gather(bn: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        n = inputs[0].numel() // inputs[0].shape[1]
        dtype = torch.float32 if bn.running_mean.device.type == "mps" else torch.float64
        mean = bn.running_mean.to(dtype)
        square = mean.square() + bn.running_var.to(dtype) * ((n - 1) / n)
        total = sums.setdefault(bn, [0, torch.zeros_like(mean), torch.zeros_like(mean)])
        total[0] += n
        total[1] += mean * n
        total[2] += square * n

    handles = [bn.register_forward_hook(gather) for bn in bns]
    for bn in bns:
        bn.momentum = 1.0
    try:
        for inputs in feed:
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    for bn, (n, mean_sum, square_sum) in sums.items():
        mean = mean_sum / n
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(square_sum / n - mean.square())


# --- the recalibrate command: before/after consistency, and accuracy where labels exist -----------

def consistency(model: nn.Module, data: Iterable[Any]) -> dict[str, float]:
    """Per BatchNorm, mean over channels of Var(test-time input) / running_var.

    With dropout's shift this ratio reads like Δ (below 1); after recalibration it is 1: BatchNorm
    then normalises test-time inputs with test-time statistics.
    """
    from .stats import ChannelStats

    bns = [(name, m) for name, m in model.named_modules() if _tracks_stats(m)]
    stats = {name: ChannelStats() for name, _ in bns}
    handles = [m.register_forward_pre_hook(lambda mod, args, s=stats[name]: s.update(args[0])) for name, m in bns]
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            for batch in data:
                model(batch[0] if isinstance(batch, (tuple, list)) else batch)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
    out = {}
    for name, m in bns:
        if stats[name].count is None:
            continue
        running = m.running_var.detach().to(torch.float64)
        live = running > 0
        out[name] = float((stats[name].variance.to(running.device)[live] / running[live]).mean())
    return out


def accuracy(model: nn.Module, data: Iterable[Any]) -> float | None:
    """Top-1 accuracy in eval mode, or None when the outputs do not cover the labels."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    correct = total = 0
    try:
        with torch.no_grad():
            for x, y in data:
                logits = model(x)
                if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] <= int(y.max()):
                    return None
                correct += int((logits.argmax(1) == y).sum())
                total += int(y.numel())
    finally:
        for m, flag in flags.items():
            m.training = flag
    return correct / total if total else None
