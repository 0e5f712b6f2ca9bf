"""train-compare, end to end: build the variants of a target, then train them on paired seeds.

`run_train_compare` is the command's entry: it takes the flags as one `TrainOptions` record and
makes the choices that depend on the machine (threads, device, AMP, channels_last) before
`train_compare_target` builds and trains.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..measurement.device import resolve_device
from ..records import DropcheckError


@dataclass(frozen=True)
class TrainOptions:
    """What train-compare was asked for, flag by flag. None leaves the choice to the data or the device."""

    variants: tuple[str, ...] = ("original", "fixed")
    seeds: tuple[int, ...] = (0, 1, 2)
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    epochs: int | None = None  # default: loop.default_epochs(dataset)
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    p: float | None = None
    baseline: str | None = None
    device: str = "auto"
    amp: bool | None = None  # default: on with CUDA (never without it)
    channels_last: bool | None = None  # default: on with CUDA
    compile: bool = False
    threads: int | None = None  # default: torch's, or the resumed run's

    def recipe(self, run_on: Any) -> Any:
        """The training recipe on the device `run_on` (a torch.device)."""
        from .loop import Recipe, default_epochs

        on_cuda = run_on.type == "cuda"
        return Recipe(epochs=self.epochs or default_epochs(self.dataset), batch_size=self.batch_size, lr=self.lr,
                      weight_decay=self.weight_decay, amp=on_cuda if self.amp is None else self.amp and on_cuda,
                      channels_last=on_cuda if self.channels_last is None else self.channels_last,
                      compile=self.compile)


def variant_names(variants: str, sweep: str | None) -> list[str]:
    """--variants, or --sweep (which replaces it): the sweep is `none` plus one variant per position."""
    from .variants import SWEEP_POSITIONS, parse_variants

    if sweep is None:
        return parse_variants(variants)
    positions = parse_variants(sweep)
    wrong = [name for name in positions if name not in SWEEP_POSITIONS]
    if wrong:
        raise DropcheckError("usage", f"--sweep takes positions, not {', '.join(wrong)}",
                             f"choose from {', '.join(SWEEP_POSITIONS)}; the sweep adds 'none' itself")
    return ["none", *positions]


def run_train_compare(spec: str, model_args: dict[str, Any] | None, input_shape: tuple[int, ...] | None,
                      options: TrainOptions, *, resume: Any = None, world: Any = None, listener: Any = None,
                      progress: Callable[[str], None] | None = None) -> Any:
    """train-compare with the command's options. Pins the CPU threads (a resumed run keeps its own, so
    its numbers stay paired), takes this process's device (its own GPU under torchrun) and joins the
    process group for the run. Returns the Comparison."""
    import torch

    from . import distributed

    world = world or distributed.World()
    threads = options.threads
    if threads is None and resume is not None:
        threads = resume.settings.get("threads")  # same threads, same numbers: a resumed run stays paired
    if threads:
        torch.set_num_threads(threads)
    run_on = distributed.start(world, resolve_device(options.device))
    try:
        return train_compare_target(spec, model_args, input_shape, variants=options.variants, seeds=options.seeds,
                                    dataset=options.dataset, data_dir=options.data_dir, download=options.download,
                                    recipe=options.recipe(run_on), device=str(run_on), p=options.p,
                                    baseline=options.baseline, resume=resume, world=world, listener=listener,
                                    progress=progress)
    finally:
        distributed.stop(world)


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
