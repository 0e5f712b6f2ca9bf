"""The audit pipeline: target -> capture -> sites -> findings, as one Report per target."""
from __future__ import annotations

import time
from typing import Any, Callable

from .records import CaptureInfo, DropcheckError, FixResult, Report, Target


def audit_target(spec: str, model_args: dict[str, Any] | None = None, input_shape: tuple[int, ...] | None = None,
                 enabled: frozenset[str] | None = None) -> Report:
    """Load and audit one target spec; a failure becomes an error Report, never an exception."""
    from .load import load_target  # imports torch: not part of this target's time

    started = time.perf_counter()
    try:
        target = load_target(spec, model_args, input_shape)
        report = audit_loaded(target, enabled)
    except DropcheckError as exc:
        report = Report(target=spec, status="error", error=exc, input_shape=list(input_shape) if input_shape else None)
    except Exception as exc:  # noqa: BLE001 - a bug of ours must not take the other targets down
        error = DropcheckError("internal", f"internal error while auditing {spec}: {type(exc).__name__}: "
                               f"{(str(exc).strip().splitlines() or [''])[0][:200]}",
                               "please report this; --verbose shows the traceback")
        error.__cause__ = exc
        report = Report(target=spec, status="error", error=error)
    report.seconds = time.perf_counter() - started
    return report


def audit_loaded(target: Target, enabled: frozenset[str] | None = None) -> Report:
    """Audit a loaded target; raises DropcheckError on trace or shape failures."""
    from .capture import capture_graph
    from .catalog import load_rules
    from .check import run_rules
    from .sites import find_sites

    started = time.perf_counter()
    capture = capture_graph(target)
    analysis = find_sites(capture)
    rules = {r.code: r for r in load_rules()}
    findings = run_rules(analysis.sites, rules, enabled)
    info = CaptureInfo(method=capture.method, nodes=len(capture.nodes), device=capture.device,
                       has_batchnorm=analysis.has_batchnorm)
    return Report(target=target.spec, model=type(target.model).__name__, input_shape=target.input_shape,
                  capture=info, dropouts=analysis.sites, stochastic_depth=analysis.stochastic_depth,
                  opaque_regions=list(capture.opaque), findings=findings, notes=analysis.notes,
                  seconds=time.perf_counter() - started)


def audit(model: Any, example_input: Any, enabled: frozenset[str] | None = None) -> Report:
    """Python API: audit a built model with an example input (a tensor, or a tuple of the forward's
    tensor inputs). The model is left as it was."""
    return audit_loaded(_api_target(model, example_input), enabled)


def _api_target(model: Any, example_input: Any) -> Target:
    import torch

    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise DropcheckError("input", f"example_input must be a tensor or a tuple of tensors, not "
                             f"{type(example_input).__name__}", "pass torch.randn(*shape) for each forward input")
    return Target(spec=type(model).__name__, model=model, example_input=example_input, origin="api")


def fix_loaded(target: Target, p: float | None = None, add: float | None = None,
               progress: Callable[[str], None] | None = None) -> FixResult:
    """Fix a loaded target (real weights), verify it, and say what changed. Never mutates the model."""
    from .capture import capture_graph
    from .check import repeated_in_branch
    from .fixed import graph_source
    from .rewrite import build_fixed, plan_fix
    from .sites import find_sites
    from .verify import verify_fix

    capture = capture_graph(target)
    analysis = find_sites(capture)
    plan = plan_fix(capture, analysis, p, add, repeated_in_branch(analysis.sites))
    fixed = build_fixed(capture, plan)

    def reaudit(model: Any) -> tuple[Report, int]:
        again = Target(spec=target.spec, model=model, example_input=target.example_input, origin="api")
        report = audit_loaded(again)
        second = capture_graph(again)
        second_analysis = find_sites(second)
        return report, len(plan_fix(second, second_analysis, None, None,
                                    repeated_in_branch(second_analysis.sites)).changes)

    if progress is not None:
        progress("verifying")
    checks = verify_fix(capture, fixed, target.inputs, any(s.always_on for s in analysis.sites), reaudit)
    before = _code("train", graph_source(capture.graph_module.graph, "_forward_train")) + \
        _code("eval", graph_source(capture.eval_graph_module.graph, "_forward_eval"))
    after = _code("train", fixed.train_src) + _code("eval", fixed.eval_src)
    return FixResult(target=target.spec, model=fixed, changes=plan.changes, checks=checks,
                     unfixable=plan.unfixable, code_before=before, code_after=after, input_shape=target.input_shape)


def _code(mode: str, src: str) -> str:
    return f"# {mode} mode\n" + src.strip() + "\n\n"


def fix_target(spec: str, model_args: dict[str, Any] | None = None, input_shape: tuple[int, ...] | None = None,
               p: float | None = None, add: float | None = None,
               progress: Callable[[str], None] | None = None) -> FixResult:
    """Load with real weights and fix; raises DropcheckError for load, trace or shape failures."""
    from .load import load_target

    return fix_loaded(load_target(spec, model_args, input_shape, weights=True), p, add, progress)


def fix(model: Any, example_input: Any, p: float | None = None, add: float | None = None) -> FixResult:
    """Python API: the fixed model (a new module; `model` is left as it was), changes and checks."""
    return fix_loaded(_api_target(model, example_input), p, add)
