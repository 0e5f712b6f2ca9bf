"""The audit, end to end: target spec -> load -> capture -> sites -> findings -> one Report.

The other stages (fix, measure, train-compare) start from `audit_captured` so the audit steps are
written once."""
from __future__ import annotations

import time
from typing import Any

from ..records import Analysis, Capture, CaptureInfo, DropcheckError, Report, Target


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
        report = Report(target=spec, status="error", error=internal_error(spec, exc))
    report.seconds = time.perf_counter() - started
    return report


def internal_error(spec: str, exc: BaseException, what: str = "auditing") -> DropcheckError:
    """A bug of ours as a DropcheckError: one line, the cause kept for --verbose."""
    error = DropcheckError("internal", f"internal error while {what} {spec}: {type(exc).__name__}: "
                           f"{(str(exc).strip().splitlines() or [''])[0][:200]}",
                           "please report this; --verbose shows the traceback")
    error.__cause__ = exc
    return error


def audit_loaded(target: Target, enabled: frozenset[str] | None = None, ignores: bool = True) -> Report:
    """Audit a loaded target; raises DropcheckError on trace or shape failures.

    With `ignores`, findings silenced by `# dropcheck: ignore` comments move to `report.suppressed`."""
    from .capture import capture_graph

    started = time.perf_counter()
    _, report = audit_captured(target, capture_graph(target, eval_graph=False), enabled, ignores)
    report.seconds = time.perf_counter() - started
    return report


def audit_captured(target: Target, capture: Capture, enabled: frozenset[str] | None = None,
                   ignores: bool = True) -> tuple[Analysis, Report]:
    """Sites and findings of a captured target: the analysis (for fix and measure) and its Report."""
    from .catalog import load_rules
    from .check import run_rules
    from .sites import find_sites
    from .suppress import apply_ignores

    analysis = find_sites(capture)
    rules = {r.code: r for r in load_rules()}
    info = CaptureInfo(method=capture.method, nodes=len(capture.nodes), device=capture.device,
                       has_batchnorm=analysis.has_batchnorm)
    report = Report(target=target.spec, model=type(target.model).__name__, input_shape=target.input_shape,
                    capture=info, dropouts=analysis.sites, stochastic_depth=analysis.stochastic_depth,
                    opaque_regions=list(capture.opaque), findings=run_rules(analysis.sites, rules, enabled),
                    notes=list(target.notes) + analysis.notes)
    if ignores:
        apply_ignores(report)
    return analysis, report


def audit(model: Any, example_input: Any, enabled: frozenset[str] | None = None) -> Report:
    """Python API: audit a built model with an example input (a tensor, or a tuple of the forward's
    tensor inputs). The model is left as it was."""
    return audit_loaded(api_target(model, example_input), enabled)


def api_target(model: Any, example_input: Any) -> Target:
    """A Target for a model built in Python (the API functions' entry)."""
    import torch

    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise DropcheckError("input", f"example_input must be a tensor or a tuple of tensors, not "
                             f"{type(example_input).__name__}", "pass torch.randn(*shape) for each forward input")
    return Target(spec=type(model).__name__, model=model, example_input=example_input, origin="api")
