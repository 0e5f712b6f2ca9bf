"""Fix, end to end: capture -> plan -> rewrite -> verify, as one FixResult."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..analysis.pipeline import api_target, audit_captured
from ..records import Check, DropcheckError, FixResult, Report, SourceFix, Target


def fix_loaded(target: Target, p: float | None = None, add: float | None = None,
               progress: Callable[[str], None] | None = None, remove: bool = False) -> FixResult:
    """Fix a loaded target (real weights), verify it, and say what changed. Never mutates the model.
    `remove`: dropout with no residual merge downstream that reaches a BatchNorm is removed, not moved."""
    from ..analysis.capture import capture_graph
    from ..analysis.check import repeated_in_branch
    from ..analysis.sites import find_sites
    from .fixed import graph_source
    from .plan import plan_fix
    from .rewrite import build_fixed
    from .verify import verify_fix

    capture = capture_graph(target)
    if capture.method.startswith("specialised"):
        shape = "x".join(str(d) for d in target.input_shape)
        raise DropcheckError("trace", f"{target.spec}: plain fx cannot trace it, and the graph specialised on "
                             f"{shape} holds that input's sizes: a model rebuilt from it would run on that shape only",
                             "fix your source file instead (dropcheck fix FILE --diff, then --in-place), or make "
                             "forward traceable")
    analysis = find_sites(capture)
    plan = plan_fix(capture, analysis, p, add, repeated_in_branch(analysis.sites), remove)
    fixed = build_fixed(capture, plan)

    def reaudit(model: Any) -> tuple[Report, int]:
        # one capture of the fixed model serves the re-audit and the second fix; no ignore comments
        # apply: the fix must leave nothing behind, silenced or not
        again = Target(spec=target.spec, model=model, example_input=target.example_input, origin="api")
        second = capture_graph(again, eval_graph=False)
        second_analysis, report = audit_captured(again, second, ignores=False)
        return report, len(plan_fix(second, second_analysis, None, None,
                                    repeated_in_branch(second_analysis.sites), remove).changes)

    if progress is not None:
        progress("verifying")
    checks = verify_fix(capture, fixed, target.inputs, any(s.always_on for s in analysis.sites), reaudit,
                        analysis.sites, plan.unfixable_ids, plan.after_pool)
    before = _code("train", graph_source(capture.graph_module.graph, "_forward_train")) + \
        _code("eval", graph_source(capture.eval_graph_module.graph, "_forward_eval"))
    after = _code("train", fixed.train_src) + _code("eval", fixed.eval_src)
    return FixResult(target=target.spec, model=fixed, changes=plan.changes, checks=checks,
                     unfixable=plan.unfixable, code_before=before, code_after=after, input_shape=target.input_shape)


def _code(mode: str, src: str) -> str:
    return f"# {mode} mode\n" + src.strip() + "\n\n"


def fix_target(spec: str, model_args: dict[str, Any] | None = None, input_shape: tuple[int, ...] | None = None,
               p: float | None = None, add: float | None = None,
               progress: Callable[[str], None] | None = None, remove: bool = False) -> FixResult:
    """Load with real weights and fix; raises DropcheckError for load, trace or shape failures."""
    from ..analysis.load import load_target

    return fix_loaded(load_target(spec, model_args, input_shape, weights=True), p, add, progress, remove)


def fix_source(spec: str, model_args: dict[str, Any] | None = None, input_shape: tuple[int, ...] | None = None,
               p: float | None = None, add: float | None = None,
               progress: Callable[[str], None] | None = None, checkpoint: Path | None = None,
               checkpoint_out: Path | None = None, remove: bool = False) -> FixResult:
    """Fix the user's own code (a file or module target) as a patch to their source files, checked in
    a fresh Python before anything is written; the FixResult's `source` holds the patches. With a
    `checkpoint` (checked against the model first), edits that rename state_dict keys are allowed and
    the source holds the key mapping and the checkpoint to convert."""
    from ..analysis.capture import capture_graph
    from ..analysis.check import repeated_in_branch
    from ..analysis.load import load_target, target_location
    from ..analysis.sites import find_sites
    from .checkpoint import read_checkpoint
    from .plan import plan_fix
    from .source_fix import plan_source_fix
    from .source_verify import Worker, verify_source

    worker = Worker()  # started now: its imports overlap the load, the trace and the plan
    try:
        target = load_target(spec, model_args, input_shape, weights=True)
        root, spec_in_copy = target_location(spec)
        loaded = read_checkpoint(checkpoint, target.model.state_dict().keys()) if checkpoint is not None else None
        capture = capture_graph(target)
        analysis = find_sites(capture)
        plan = plan_fix(capture, analysis, p, add, repeated_in_branch(analysis.sites), remove)
        edits = plan_source_fix(capture, analysis, plan, root, allow_renames=loaded is not None)
        checks: list[Check] = []
        if edits.patches:
            if progress is not None:
                progress("verifying the patched source of")
            checks = verify_source(target, capture, edits, root, spec_in_copy, dict(model_args or {}),
                                   any(s.always_on for s in analysis.sites), [s.id for s in analysis.sites], worker)
    finally:
        worker.close()
    source = SourceFix(files=[patch.path for patch in edits.patches], diff=edits.diff,
                       not_in_source=edits.not_in_source, patches=tuple(edits.patches), notes=edits.notes,
                       key_map=edits.key_map, checkpoint=loaded,
                       checkpoint_out=str(checkpoint_out) if checkpoint_out is not None else None)
    return FixResult(target=spec, model=target.model, changes=plan.changes, checks=checks, unfixable=plan.unfixable,
                     code_before="", code_after="", input_shape=target.input_shape, source=source)


def fix(model: Any, example_input: Any, p: float | None = None, add: float | None = None,
        remove: bool = False) -> FixResult:
    """Python API: the fixed model (a new module; `model` is left as it was), changes and checks."""
    return fix_loaded(api_target(model, example_input), p, add, remove=remove)
