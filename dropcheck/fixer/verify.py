"""The guarantees `dropcheck fix` checks before anything is written.

1. eval-mode outputs bit-identical (torch.equal) to the original's on several random inputs
   (for always-on dropout: to the original with it switched off, which is what the author meant);
2. identical state_dict keys and tensors, so a checkpoint of the original loads with strict=True;
3. a re-audit of the fixed model has no finding of a rule whose page says `fix-verifies: yes`
   (DC001-DC004);
4. fixing the fixed model changes nothing;
5. train mode still drops: one train-mode forward (BatchNorm held in eval mode, buffers and RNG
   restored) reaches a dropout wherever the original had one, and every dropout it reaches with
   p > 0 is in training mode and drops.

The checks run their forwards on one intra-op thread (restored afterwards): they are a few forwards
of the example's size, where more threads buy little on an idle machine and, on a shared one,
cost several times the work itself (OpenMP workers spin waiting for cores that others hold).
Reference and fixed model always run at the same thread count, so bit-identity is not at stake.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Callable, Collection, Iterator, Sequence

import torch
from torch import fx, nn

from ..analysis import ops
from ..analysis.catalog import describe_codes, verified_by_fix
from ..analysis.modes import eval_mode
from ..records import Capture, Check, Report, Site

_SEEDS = (0, 1, 2)
VERIFY_THREADS = 1  # the checks' forwards: one intra-op thread (a busy machine's spinning threads cost more)


def verify_fix(capture: Capture, fixed: nn.Module, inputs: tuple[Any, ...], always_on: bool,
               reaudit: Callable[[nn.Module], tuple[Report, int]], sites: Sequence[Site] = (),
               unfixable: Collection[str] = (), after_pool: Collection[str] = ()) -> list[Check]:
    """The checks; the re-audit passes over the `unfixable` sites (left as they were, and reported) and
    DC002 on the `after_pool` dropouts (placed after the head's last BatchNorm, on purpose)."""
    with capped_threads(VERIFY_THREADS):
        checks = [_same_eval_outputs(capture, fixed, inputs, always_on), _same_state_dict(capture.root, fixed),
                  _train_mode_drops(fixed, inputs, sites)]
        report, changes = reaudit(fixed)
    checks.append(_reaudit_check(report, set(unfixable), set(after_pool)))
    checks.append(Check("idempotent", changes == 0, "fixing the fixed model changes nothing" if changes == 0
                        else f"a second fix would make {changes} more change(s)"))
    return checks


def _reaudit_check(report: Report, unfixable: set[str], after_pool: set[str]) -> Check:
    verified = verified_by_fix()  # rules/*.md `fix-verifies: yes`
    left = sorted({f"{f.rule} on {f.dropout}" + (f" ({f.source})" if f.source else "") for f in report.findings
                   if f.rule in verified and f.dropout not in unfixable
                   and not (f.rule == "DC002" and f.dropout in after_pool)})
    if left:
        return Check("re-audit", False, "the fixed model still has " + "; ".join(left))
    detail = f"no {describe_codes(verified)} findings"
    if unfixable:
        detail += f" on the fixed sites ({len(unfixable)} left as they were, reported above)"
    if after_pool:
        detail += f"; DC002 stays on {', '.join(sorted(after_pool))}, after the head's last BatchNorm"
    return Check("re-audit", True, detail)


def _same_eval_outputs(capture: Capture, fixed: nn.Module, inputs: tuple[Any, ...], always_on: bool) -> Check:
    """Compare eval outputs on random inputs shaped like the example, with the original's weights and
    again with a probe state (probe_state) loaded into both."""
    reference = eval_reference(capture, always_on)
    against = "the original with its always-on dropout switched off" if always_on else "the original"
    probe = probe_state(capture.root)
    with eval_mode(capture.root), eval_mode(fixed), torch.no_grad():
        for weights in ("its own weights", "randomised BatchNorm statistics"):
            with loaded(capture.root, probe if weights != "its own weights" else None), \
                    loaded(fixed, probe if weights != "its own weights" else None):
                for seed in _SEEDS:
                    args = _random_like(inputs, seed)
                    expected, got = reference(*args), fixed(*args)
                    if not same_outputs(expected, got):
                        where = first_difference(expected, got)
                        return Check("eval outputs", False, f"{where or 'the output'} differs from {against} on "
                                     f"random input #{seed} ({weights})")
    return Check("eval outputs", True, f"bit-identical to {against} on {len(_SEEDS)} random inputs ({PROBED})")


PROBED = "with its own weights, and with randomised BatchNorm statistics"


def probe_state(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """The model's state with every BatchNorm's statistics and affine terms drawn at random, and every
    all-zero floating tensor filled. Untrained, a network's eval outputs can be all but constant
    across inputs (BatchNorm at mean 0, var 1; zero-initialised last gammas or heads), and then
    equal outputs would prove little; the same state in both models makes the comparison bite."""
    generator = torch.Generator().manual_seed(seed)
    norms = {name for name, m in model.named_modules() if ops.is_batchnorm_module(m)}
    state = {}
    for key, value in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if not value.is_floating_point() or value.device.type == "meta":
            state[key] = value
            continue
        noise = torch.randn(value.shape, generator=generator)
        if owner in norms and leaf == "running_var":
            new = 0.5 + 1.5 * torch.rand(value.shape, generator=generator)
        elif owner in norms and leaf in ("running_mean", "bias"):
            new = 0.5 * noise
        elif owner in norms and leaf == "weight":
            new = 1.0 + 0.3 * noise
        elif value.numel() and not bool(value.any()):
            new = 0.1 * noise
        else:
            new = value
        state[key] = new.to(device=value.device, dtype=value.dtype)
    return state


@contextmanager
def loaded(model: nn.Module, state: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """`state` loaded into `model` meanwhile (None: nothing changes); its own state restored after."""
    if state is None:
        yield
        return
    own = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state, strict=True)
    try:
        yield
    finally:
        model.load_state_dict(own, strict=True)


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
    # the tensors are equal (above), so loading them into the fixed model itself changes no value and
    # proves what a copy would, without copying the model (pickled by source: slow to deepcopy)
    fixed.load_state_dict(before, strict=True)
    return Check("state_dict", True, f"same {len(before)} keys and tensors; the original's checkpoint "
                                     "loads with strict=True")


_ATTENTION_OPS = {f.__name__ for f in ops.ATTENTION_FUNCTIONS} | {nn.MultiheadAttention.__name__}
_MASKING = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)  # zero elements (or channels) with prob. p
_DECIDABLE = 1e-9  # a dropout must have dropped something unless (1 - p) ** draws is above this


def _train_mode_drops(fixed: nn.Module, inputs: tuple[Any, ...], sites: Sequence[Site]) -> Check:
    """One train-mode forward with every BatchNorm in eval mode (nothing normalises by batch statistics)."""
    expected = any(s.active and s.p > 0 and s.op not in _ATTENTION_OPS for s in sites)
    seen: dict[str, str | None] = {}  # reached dropout -> what is wrong with it, or None

    def hook(name: str) -> Callable[..., None]:
        def record(m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            seen[name] = seen.get(name) or _not_dropping(m, args, out)
        return record

    flags = {m: m.training for m in fixed.modules()}
    buffers = {name: b.clone() for name, b in fixed.named_buffers()}
    handles = [m.register_forward_hook(hook(name)) for name, m in fixed.named_modules() if ops.is_dropout_module(m)]
    try:
        fixed.train()
        for m in fixed.modules():
            if ops.is_batchnorm_module(m):
                m.eval()
        error = _train_forward(fixed, _random_like(inputs, 0))
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
        with torch.no_grad():
            for name, b in fixed.named_buffers():
                b.copy_(buffers[name])
    if error:
        return Check("train mode", False, f"the train-mode forward raised {error}")
    wrong = [f"{name} {why}" for name, why in seen.items() if why]
    if wrong:
        return Check("train mode", False, "; ".join(wrong[:3]))
    functional = sum(n.op == "call_function" and ops.is_dropout_function(n.target)
                     and all(v for v in ops.function_p_and_training(n.target, n.args, n.kwargs))
                     for n in getattr(getattr(fixed, "train_graph", None), "nodes", ()))
    if expected and not seen and not functional:
        return Check("train mode", False, "no dropout runs in train mode, though the original has one")
    if not seen and not functional:
        return Check("train mode", True, "no dropout, as in the original")
    return Check("train mode", True, f"{len(seen) + functional} dropout(s) run and drop in train mode")


def _train_forward(model: nn.Module, args: tuple[Any, ...]) -> str | None:
    """Run once in train mode, seeded, the caller's RNG restored; a batch of one is retried as two (batch
    statistics of a functional batch_norm need two values per channel). The error, if it still fails."""
    attempts = [args]
    first = args[0] if args else None
    if isinstance(first, torch.Tensor) and first.dim() and first.shape[0] == 1:
        attempts.append((torch.cat([first, first]), *args[1:]))
    error = None
    for xs in attempts:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)
            try:
                model(*xs)
                return None
            except Exception as exc:  # noqa: BLE001 - reported as a failed check
                error = error or f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}"
    return error


def _not_dropping(m: nn.Module, args: tuple[Any, ...], out: Any) -> str | None:
    p = ops.module_p(m)
    if p <= 0:
        return None
    if not m.training:
        return "is in eval mode when the model is in train mode"
    x = args[0] if args else None
    if type(m) not in _MASKING or not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor) \
            or out.data_ptr() == x.data_ptr():
        return None  # other dropout layers (DropBlock, ...), in place: running in training mode is what we can check
    draws = x.numel() if type(m) is nn.Dropout or x.dim() < 2 else x.shape[0] * x.shape[1]
    if (1 - p) ** draws > _DECIDABLE or not torch.equal(x, out):
        return None
    return f"(p={p:g}) left its input unchanged in train mode"


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


def first_difference(a: Any, b: Any, path: str = "") -> str:
    """Where two model outputs first differ, as `output[0]` or `output["logits"]` ("" for a bare tensor)."""
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return next((first_difference(a[k], b[k], f"{path}[{k!r}]") for k in a if not same_outputs(a[k], b[k])), path)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return next((first_difference(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b))
                     if not same_outputs(x, y)), path)
    return f"output{path}" if path else ""


@contextmanager
def capped_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count capped at `n` for the duration, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(n, before))
    try:
        yield
    finally:
        torch.set_num_threads(before)

