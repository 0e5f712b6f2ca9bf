"""The guarantees `dropcheck fix` checks before anything is written.

1. eval-mode outputs bit-identical (torch.equal) to the original's on several random inputs
   (for always-on dropout: to the original with it switched off, which is what the author meant);
2. identical state_dict keys and tensors, so a checkpoint of the original loads with strict=True;
3. a re-audit of the fixed model has no finding of a rule whose page says `fix-verifies: yes`
   (DC001-DC004);
4. fixing the fixed model changes nothing.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import fx, nn

from ..analysis import ops
from ..analysis.catalog import describe_codes, verified_by_fix
from ..records import Capture, Check, Report

_SEEDS = (0, 1, 2)


def verify_fix(capture: Capture, fixed: nn.Module, inputs: tuple[Any, ...], always_on: bool,
               reaudit: Callable[[nn.Module], tuple[Report, int]]) -> list[Check]:
    checks = [_same_eval_outputs(capture, fixed, inputs, always_on), _same_state_dict(capture.root, fixed)]
    report, changes = reaudit(fixed)
    verified = verified_by_fix()  # rules/*.md `fix-verifies: yes`
    left = sorted({f"{f.rule} on {f.dropout}" for f in report.findings if f.rule in verified})
    detail = f"no {describe_codes(verified)} findings" if not left else "; ".join(left)
    checks.append(Check("re-audit", not left, detail))
    checks.append(Check("idempotent", changes == 0, "fixing the fixed model changes nothing" if changes == 0
                        else f"a second fix would make {changes} more change(s)"))
    return checks


def _same_eval_outputs(capture: Capture, fixed: nn.Module, inputs: tuple[Any, ...], always_on: bool) -> Check:
    """Compare eval outputs on random inputs shaped like the example."""
    reference = eval_reference(capture, always_on)
    against = "the original with its always-on dropout switched off" if always_on else "the original"
    with eval_mode(capture.root), eval_mode(fixed), torch.no_grad():
        for seed in _SEEDS:
            args = _random_like(inputs, seed)
            expected, got = reference(*args), fixed(*args)
            if not same_outputs(expected, got):
                return Check("eval outputs", False, f"differ from {against} on random input #{seed}")
    return Check("eval outputs", True, f"bit-identical to {against} on {len(_SEEDS)} random inputs")


def eval_reference(capture: Capture, always_on: bool) -> Callable[..., Any]:
    """The original in eval mode; with always-on dropout, its eval graph with that dropout off."""
    if not always_on:
        return capture.root
    # the eval graph with every functional dropout made the identity: eval mode as the author meant it
    graph = copy.deepcopy(capture.eval_graph_module.graph)
    for n in list(graph.nodes):
        if n.op == "call_function" and ops.is_dropout_function(n.target):
            n.replace_all_uses_with(n.args[0] if n.args else n.kwargs["input"])
            graph.erase_node(n)
    return fx.GraphModule(capture.eval_graph_module, graph)


def _same_state_dict(original: nn.Module, fixed: nn.Module) -> Check:
    before, after = original.state_dict(), fixed.state_dict()
    if list(before) != list(after):
        missing = sorted(set(before) - set(after))[:3]
        extra = sorted(set(after) - set(before))[:3]
        return Check("state_dict", False, f"keys differ (missing {missing}, extra {extra})")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if changed:
        return Check("state_dict", False, f"tensors differ: {', '.join(changed[:3])}")
    probe = copy.deepcopy(fixed)
    probe.load_state_dict(before, strict=True)
    return Check("state_dict", True, f"same {len(before)} keys and tensors; the original's checkpoint "
                                     "loads with strict=True")


def _random_like(inputs: tuple[Any, ...], seed: int) -> tuple[Any, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
                 if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs)


def same_outputs(a: Any, b: Any) -> bool:
    """torch.equal through nested tuples, lists and dicts (and equal dtypes and shapes)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and \
            a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_outputs(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same_outputs(x, y) for x, y in zip(a, b))
    return a == b


class eval_mode:
    """Eval mode for the duration, every module's flag restored afterwards."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.flags = {m: m.training for m in self.module.modules()}
        self.module.eval()

    def __exit__(self, *exc: Any) -> None:
        for m, flag in self.flags.items():
            m.training = flag

