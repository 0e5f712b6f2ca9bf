"""measure and recalibrate, end to end: load (real weights, a checkpoint) -> audit -> Δ, or BN re-estimation."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..analysis.pipeline import api_target, audit_captured, internal_error
from ..records import DropcheckError, Report, Target
from .device import resolve_device


def measure_loaded(target: Target, *, batches: int = 4, batch_size: int = 32, data: str = "normal",
                   device: str = "auto", pretrained: bool = False, seed: int = 0,
                   progress: Callable[[str], None] | None = None, enabled: frozenset[str] | None = None,
                   ignores: bool = True) -> Report:
    """Audit a loaded target (real weights) and measure Δ at every BatchNorm and residual merge."""
    from ..analysis.capture import capture_graph
    from .data import batches as data_batches
    from .data import describe
    from .deltas import measure_model

    started = time.perf_counter()
    run_on = resolve_device(device)
    capture = capture_graph(target, eval_graph=False)
    if capture.method.startswith("specialised") and target.input_shape[:1] != [batch_size]:
        # a specialised graph holds the example's sizes: capture it again at the batch size measured with
        target = _with_batch(target, batch_size)
        capture = capture_graph(target, eval_graph=False)
    analysis, report = audit_captured(target, capture, enabled, ignores)
    shape = tuple(target.input_shape)[1:]

    def stream() -> Any:
        return data_batches(data, batch_size, batches, (batch_size, *shape), run_on, seed)

    import torch

    # the dropout masks are drawn from `seed` too, so one seed gives one answer; the caller's RNG is restored
    with torch.random.fork_rng(devices=[run_on] if run_on.type == "cuda" else []):
        torch.manual_seed(seed)
        report.measurements = measure_model(capture, analysis, stream, run_on, calibrate=not pretrained,
                                            progress=progress, copy_model=target.origin == "api")
    report.measure_settings = {"batches": batches, "batch_size": batch_size, "data": describe(data),
                               "device": str(run_on), "calibrated": not pretrained, "seed": seed}
    report.seconds = time.perf_counter() - started
    return report


def _with_batch(target: Target, batch_size: int) -> Target:
    import dataclasses

    import torch

    x = target.inputs[0]
    if len(target.inputs) != 1 or not isinstance(x, torch.Tensor):
        raise DropcheckError("trace", f"{target.spec}: the graph was specialised on its example input and the model "
                             "takes several inputs", "measure with --batch-size equal to the input's batch")
    example = torch.randn(batch_size, *x.shape[1:], dtype=x.dtype, device=x.device)
    return dataclasses.replace(target, example_input=example)


def measure_target(spec: str, model_args: dict[str, Any] | None = None, input_shape: tuple[int, ...] | None = None,
                   checkpoint: str | None = None, trust_pickle: bool = False, **options: Any) -> Report:
    """Load with real weights (and a checkpoint), then audit and measure; errors become an error Report."""
    started = time.perf_counter()
    try:
        target = _seeded_build(spec, model_args, input_shape, options.get("seed", 0))
        if checkpoint:
            from .checkpoint import load_checkpoint

            load_checkpoint(target.model, checkpoint, trust_pickle)
            options.setdefault("pretrained", True)
        report = measure_loaded(target, **options)
    except DropcheckError as exc:
        report = Report(target=spec, status="error", error=exc)
    except Exception as exc:  # noqa: BLE001 - a bug of ours must not take the other targets down
        report = Report(target=spec, status="error", error=internal_error(spec, exc))
    report.seconds = time.perf_counter() - started
    return report


def _seeded_build(spec: str, model_args: dict[str, Any] | None, input_shape: tuple[int, ...] | None,
                  seed: int) -> Target:
    """The model's own initialisation drawn from `seed`: without a checkpoint, Δ depends on it."""
    import torch

    from ..analysis.load import load_target

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return load_target(spec, model_args, input_shape, weights=True)


def measure(model: Any, example_input: Any, **options: Any) -> Report:
    """Python API: audit + Δ per BatchNorm and merge (`report.measurements`). The model is left as it was."""
    return measure_loaded(api_target(model, example_input), **options)


def recalibrate_target(spec: str, model_args: dict[str, Any] | None, input_shape: tuple[int, ...] | None,
                       checkpoint: str, trust_pickle: bool = False, *, data: str = "digits", batches: int = 20,
                       batch_size: int = 64, device: str = "auto", seed: int = 0,
                       progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Load a trained model, re-estimate its BatchNorm statistics with dropout off, and report the
    test-time consistency (and accuracy, where the data has labels) before and after."""
    from ..analysis.load import load_target
    from .checkpoint import load_checkpoint
    from .data import batches as data_batches
    from .data import describe, has_labels
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
