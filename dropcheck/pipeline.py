"""The audit pipeline: target -> capture -> sites -> findings, as one Report per target."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

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
        report = Report(target=spec, status="error", error=_internal(spec, exc))
    report.seconds = time.perf_counter() - started
    return report


def _internal(spec: str, exc: BaseException) -> DropcheckError:
    error = DropcheckError("internal", f"internal error while auditing {spec}: {type(exc).__name__}: "
                           f"{(str(exc).strip().splitlines() or [''])[0][:200]}",
                           "please report this; --verbose shows the traceback")
    error.__cause__ = exc
    return error


def audit_loaded(target: Target, enabled: frozenset[str] | None = None, ignores: bool = True) -> Report:
    """Audit a loaded target; raises DropcheckError on trace or shape failures.

    With `ignores`, findings silenced by `# dropcheck: ignore` comments move to `report.suppressed`."""
    from .capture import capture_graph
    from .catalog import load_rules
    from .check import run_rules
    from .sites import find_sites
    from .suppress import apply_ignores

    started = time.perf_counter()
    capture = capture_graph(target, eval_graph=False)
    analysis = find_sites(capture)
    rules = {r.code: r for r in load_rules()}
    report = _report(target, capture, analysis, run_rules(analysis.sites, rules, enabled))
    if ignores:
        apply_ignores(report)
    report.seconds = time.perf_counter() - started
    return report


def _report(target: Target, capture: Any, analysis: Any, findings: list[Any]) -> Report:
    info = CaptureInfo(method=capture.method, nodes=len(capture.nodes), device=capture.device,
                       has_batchnorm=analysis.has_batchnorm)
    return Report(target=target.spec, model=type(target.model).__name__, input_shape=target.input_shape,
                  capture=info, dropouts=analysis.sites, stochastic_depth=analysis.stochastic_depth,
                  opaque_regions=list(capture.opaque), findings=findings, notes=analysis.notes)


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
    from .catalog import load_rules
    from .check import repeated_in_branch, run_rules
    from .fixed import graph_source
    from .rewrite import build_fixed, plan_fix
    from .sites import find_sites
    from .verify import verify_fix

    capture = capture_graph(target)
    analysis = find_sites(capture)
    plan = plan_fix(capture, analysis, p, add, repeated_in_branch(analysis.sites))
    fixed = build_fixed(capture, plan)

    def reaudit(model: Any) -> tuple[Report, int]:
        # one capture of the fixed model serves the re-audit and the second fix; no ignore comments
        # apply: the fix must leave nothing behind, silenced or not
        again = Target(spec=target.spec, model=model, example_input=target.example_input, origin="api")
        second = capture_graph(again, eval_graph=False)
        second_analysis = find_sites(second)
        rules = {r.code: r for r in load_rules()}
        report = _report(again, second, second_analysis, run_rules(second_analysis.sites, rules))
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


def measure_loaded(target: Target, *, batches: int = 4, batch_size: int = 32, data: str = "normal",
                   device: str = "auto", pretrained: bool = False, seed: int = 0,
                   progress: Callable[[str], None] | None = None, enabled: frozenset[str] | None = None,
                   ignores: bool = True) -> Report:
    """Audit a loaded target (real weights) and measure Δ at every BatchNorm and residual merge."""
    from .capture import capture_graph
    from .check import run_rules
    from .data import batches as data_batches
    from .data import describe
    from .measure import measure_model
    from .sites import find_sites

    started = time.perf_counter()
    run_on = resolve_device(device)
    capture = capture_graph(target, eval_graph=False)
    analysis = find_sites(capture)
    shape = tuple(target.input_shape)[1:]

    def stream() -> Any:
        return data_batches(data, batch_size, batches, (batch_size, *shape), run_on, seed)

    measurements = measure_model(capture, analysis, stream, run_on, calibrate=not pretrained, progress=progress,
                                 copy_model=target.origin == "api")
    from .catalog import load_rules

    report = _report(target, capture, analysis, run_rules(analysis.sites, {r.code: r for r in load_rules()}, enabled))
    if ignores:
        from .suppress import apply_ignores

        apply_ignores(report)
    report.measurements = measurements
    report.measure_settings = {"batches": batches, "batch_size": batch_size, "data": describe(data),
                               "device": str(run_on), "calibrated": not pretrained, "seed": seed}
    report.seconds = time.perf_counter() - started
    return report


def measure_target(spec: str, model_args: dict[str, Any] | None = None, input_shape: tuple[int, ...] | None = None,
                   checkpoint: str | None = None, trust_pickle: bool = False, **options: Any) -> Report:
    """Load with real weights (and a checkpoint), then audit and measure; errors become an error Report."""
    from .load import load_target

    started = time.perf_counter()
    try:
        target = load_target(spec, model_args, input_shape, weights=True)
        if checkpoint:
            from .checkpoint import load_checkpoint

            load_checkpoint(target.model, checkpoint, trust_pickle)
            options.setdefault("pretrained", True)
        report = measure_loaded(target, **options)
    except DropcheckError as exc:
        report = Report(target=spec, status="error", error=exc)
    except Exception as exc:  # noqa: BLE001 - a bug of ours must not take the other targets down
        report = Report(target=spec, status="error", error=_internal(spec, exc))
    report.seconds = time.perf_counter() - started
    return report


def measure(model: Any, example_input: Any, **options: Any) -> Report:
    """Python API: audit + Δ per BatchNorm and merge (`report.measurements`). The model is left as it was."""
    return measure_loaded(_api_target(model, example_input), **options)


def recalibrate_target(spec: str, model_args: dict[str, Any] | None, input_shape: tuple[int, ...] | None,
                       checkpoint: str, trust_pickle: bool = False, *, data: str = "digits", batches: int = 20,
                       batch_size: int = 64, device: str = "auto", seed: int = 0,
                       progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Load a trained model, re-estimate its BatchNorm statistics with dropout off, and report the
    test-time consistency (and accuracy, where the data has labels) before and after."""
    from .checkpoint import load_checkpoint
    from .data import batches as data_batches
    from .data import describe, has_labels
    from .load import load_target
    from .recalibrate import accuracy, consistency, recalibrate_bn

    target = load_target(spec, model_args, input_shape, weights=True)
    load_checkpoint(target.model, checkpoint, trust_pickle)
    run_on = resolve_device(device)
    model = target.model.to(run_on)
    shape = (batch_size, *target.input_shape[1:])

    def stream(labels: bool = False, offset: int = 0) -> Any:
        return data_batches(data, batch_size, batches, shape, run_on, seed + offset, labels=labels)

    def evaluate(stage: str) -> tuple[dict[str, float], float | None]:
        if progress:
            progress(f"{stage}: measuring")
        held_out = 1  # statistics are re-estimated on seed, checked on seed + 1
        return consistency(model, stream(offset=held_out)), (
            accuracy(model, stream(labels=True, offset=held_out)) if has_labels(data) else None)

    before, acc_before = evaluate("before")
    if progress:
        progress("re-estimating BatchNorm statistics with dropout off")
    recalibrate_bn(model, stream(), batches)
    after, acc_after = evaluate("after")
    return {"target": spec, "checkpoint": checkpoint, "data": describe(data), "batches": batches,
            "batch_size": batch_size, "device": str(run_on), "consistency_before": before,
            "consistency_after": after, "accuracy_before": acc_before, "accuracy_after": acc_after,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def train_compare_target(spec: str, model_args: dict[str, Any] | None, input_shape: tuple[int, ...] | None, *,
                         variants: Sequence[str], seeds: Sequence[int], dataset: str = "digits",
                         data_dir: str | None = None, download: bool = False, recipe: Any = None,
                         device: str = "auto", p: float | None = None, baseline: str | None = None,
                         resume: Any = None, world: Any = None, listener: Any = None,
                         progress: Callable[[str], None] | None = None) -> Any:
    """Build the variants of a target and train them on paired seeds (design §7). Returns a Comparison.

    `resume` is a Comparison read back from an earlier --output: its finished runs are kept.
    """
    import torch

    from .comparison import Comparison
    from .distributed import World
    from .load import load_target
    from .train import compare_training, validate_outputs
    from .train_data import load_train_data
    from .variants import build_variants

    world = world or World()
    step = progress or (lambda what: None)
    run_on = resolve_device(device)
    step(f"building {spec}")
    torch.manual_seed(seeds[0])  # the first seed's initial weights are the ones the variants are built from
    target = load_target(spec, model_args, input_shape, weights=True)
    shape = tuple(target.input_shape)
    step(f"loading {dataset}")
    data = load_train_data(dataset, _data_shape(dataset, shape, input_shape is not None), data_dir, download)
    try:
        validate_outputs(target.model, data, torch.device("cpu"))
    except DropcheckError:
        if tuple(data.train_x.shape[1:]) == shape[1:]:
            raise
        data = load_train_data(dataset, shape, data_dir, download)  # the model needs its own input size
        validate_outputs(target.model, data, torch.device("cpu"))
    step("building the variants (fix, sweep insertions) and auditing them")
    built, notes = _distinct(build_variants(target, list(variants), p))
    names = [v.name for v in built]
    base = baseline or ("original" if "original" in names else ("none" if "none" in names else names[0]))
    if base not in names:
        raise DropcheckError("usage", f"--baseline {base} is not one of the variants ({', '.join(names)})",
                             f"add it to --variants, or pick one of {', '.join(names)}")
    settings = {"dataset": data.to_dict(), "recipe": recipe.to_dict(), "seeds": list(seeds),
                "device": str(run_on), "threads": torch.get_num_threads(), "world_size": world.size,
                "input_shape": [1, *data.train_x.shape[1:]], "model_args": model_args or {}, "p": p}
    comparison = Comparison(target=spec, settings=settings, baseline=base, notes=notes,
                            variants=[{**v.to_dict(), "guideline": v.name in GUIDELINE_VARIANTS} for v in built])
    if resume is not None:
        comparison.runs = _resumed_runs(resume, comparison)
    models = {v.name: v.model for v in built}
    states = {seeds[0]: {k: v.clone() for k, v in target.model.state_dict().items()}}

    def initial_state(seed: int) -> dict[str, torch.Tensor]:
        if seed not in states:  # the model's own initialisation, drawn from this seed
            torch.manual_seed(seed)
            states[seed] = load_target(spec, model_args, input_shape, weights=True).model.state_dict()
        return states.pop(seed)  # asked for once per seed: no need to keep every seed's weights

    step("training")
    return compare_training(comparison, models, initial_state, data.to(run_on), recipe, run_on, world, listener)


def _distinct(built: list[Any]) -> tuple[list[Any], list[str]]:
    """Leave out a variant that would train the very same model as `original` (and say so)."""
    by_name = {v.name: v for v in built}
    original = by_name.get("original")
    reasons, keep = [], []
    for v in built:
        if original is not None and v.name == "fixed" and all(c.startswith("cannot fix") for c in v.changes):
            reasons.append(("fixed", "dropcheck fix changes nothing in this model (it follows the guidelines)"))
        elif original is not None and v.name == "none" and not original.positions:
            reasons.append(("none", "the model has no active dropout, so removing it changes nothing"))
        else:
            keep.append(v)
    if len(keep) < 2 <= len(built):
        raise DropcheckError("usage", "nothing to compare: " + "; ".join(why for _, why in reasons),
                             "compare dropout positions with --sweep P3,P6,H4,H5, or add dropout to the model")
    notes = [f"{name}: not trained: {why}" for name, why in reasons]
    return keep, notes


def _resumed_runs(resume: Any, comparison: Any) -> list[Any]:
    """The finished runs of an earlier --output that belong to this comparison; refuse other settings."""
    from .comparison import same_settings

    differ = same_settings(resume.settings, comparison.settings)
    if resume.settings.get("device", "cpu").split(":")[0] != comparison.settings["device"].split(":")[0]:
        differ.append("device")  # augmentation is drawn on the device: CPU and GPU runs would not pair
    if differ or resume.target != comparison.target or resume.variant_names != comparison.variant_names \
            or resume.baseline != comparison.baseline:
        what = ", ".join(differ) or "target, variants or baseline"
        raise DropcheckError("usage", f"--resume: the results file was made with other settings ({what})",
                             "run with the same options, or write to a new --output")
    return [r for r in resume.runs if r.seed in comparison.seeds]


GUIDELINE_VARIANTS = ("fixed", "P5", "P6", "H3", "H4")
DIGITS_SIDE = 16  # digits are 8x8: 16x16 keeps every pixel and trains 4x faster than a 32x32 model input


def _data_shape(dataset: str, shape: tuple[int, ...], given: bool) -> tuple[int, ...]:
    """The input size the data is served at: the model's, except digits on a larger image model."""
    if dataset == "digits" and not given and len(shape) == 4 and min(shape[2:]) > DIGITS_SIDE:
        return (shape[0], shape[1], DIGITS_SIDE, DIGITS_SIDE)
    return shape


def resolve_device(device: str) -> Any:
    import torch

    run_on = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          ("cpu" if device == "auto" else device))
    if run_on.type == "cuda" and not torch.cuda.is_available():
        raise DropcheckError("usage", "--device cuda but no CUDA device is available", "use --device auto or cpu")
    return run_on
