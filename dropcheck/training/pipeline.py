"""train-compare, end to end: build the variants of a target, then train them on paired seeds."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..measurement.device import resolve_device
from ..records import DropcheckError


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

    from ..records import Comparison
    from .distributed import World
    from ..analysis.load import load_target
    from .loop import compare_training, validate_outputs
    from .data import load_train_data
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
    from ..records.training import same_settings

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
