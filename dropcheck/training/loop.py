"""The train-compare stage: train every variant on paired seeds and keep what each run did.

Paired design (design §7): for one seed, every variant starts from the same initial weights
(`initial_state(seed)`, loaded into each variant: they share state_dict keys), sees the same
batches in the same order with the same augmentation (training.data draws both from the seed), and
uses the same recipe. Each run records hashes of its initial weights and of its batch order, so
the pairing is checked, not assumed. Dropout masks come from the global RNG, seeded per run.

Seed-major order (seed 0: every variant, then seed 1, ...) means an interrupted comparison still
holds complete pairs. The recipe is SGD with Nesterov momentum and a per-step cosine schedule;
on CUDA: autocast (bfloat16 where supported, else float16 with a gradient scaler), channels_last,
the data set resident on the GPU, optional torch.compile.
"""
from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .distributed import World, batch_order, broadcast_buffers, sum_across
from ..records import Comparison, DropcheckError, Listener, RunResult
from .data import TrainData, steps_per_epoch, test_batches, train_batches


@dataclass(frozen=True)
class Recipe:
    epochs: int
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    amp: bool = False  # autocast + gradient scaling; CUDA only
    channels_last: bool = False
    compile: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "optimizer": "SGD (Nesterov)", "schedule": "cosine per step"}


def compare_training(comparison: Comparison, models: dict[str, nn.Module],
                     initial_state: Callable[[int], dict[str, torch.Tensor]], data: TrainData, recipe: Recipe,
                     device: torch.device, world: World = World(), listener: Listener | None = None) -> Comparison:
    """Train the runs `comparison` does not hold yet (all of them, unless resumed); return it, filled."""
    listener = listener or Listener()
    listener.comparison_started(comparison, recipe.epochs, steps_per_epoch(data, recipe.batch_size))
    for seed in comparison.seeds:
        missing = [v for v in comparison.variant_names if comparison.run(v, seed) is None]
        if not missing:
            continue
        state = initial_state(seed)
        for name in missing:
            result = train_run(models[name], name, state, data, recipe, seed, device, world, listener)
            comparison.runs.append(result)
            listener.run_done(comparison, result)
    return comparison


def train_run(model: nn.Module, name: str, state: dict[str, torch.Tensor], data: TrainData, recipe: Recipe,
              seed: int, device: torch.device, world: World = World(), listener: Listener | None = None) -> RunResult:
    """One variant, one seed: a fresh copy of `model` with weights `state`, trained by the recipe."""
    listener = listener or Listener()
    model = copy.deepcopy(model)
    model.load_state_dict(state)
    init_sha = state_fingerprint(model.state_dict())  # what this variant really starts from
    model.to(device)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    # dropout masks: the same for every variant of a seed, different on every DDP rank
    torch.manual_seed(seed * 1_000_003 + world.rank)
    net = _wrap(model, device, world, recipe)
    per_epoch = steps_per_epoch(data, recipe.batch_size)
    step = _Optimiser(model, recipe, per_epoch * recipe.epochs, device)
    order = hashlib.sha256()
    records: list[dict[str, float]] = []
    status, train_seconds, started = "done", 0.0, time.perf_counter()
    listener.run_started(name, seed, recipe.epochs, per_epoch)
    for epoch in range(recipe.epochs):
        t0, lr = time.perf_counter(), step.lr
        loss_sum, correct, count = _train_epoch(net, step, data, recipe, seed, epoch, world, order, listener)
        train_seconds += time.perf_counter() - t0
        broadcast_buffers(world, model)  # BatchNorm running statistics: rank 0's, on every rank
        test_loss, test_acc = evaluate(model, data, recipe.batch_size, world, step.amp_dtype)
        record = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / count, "train_acc": 100.0 * correct / count,
                  "test_loss": test_loss, "test_acc": test_acc, "seconds": time.perf_counter() - t0}
        records.append(record)
        listener.epoch_done(name, seed, record)
        if not math.isfinite(record["train_loss"]):
            status = "diverged"
            break
    accs = [r["test_acc"] for r in records]
    best = max(range(len(accs)), key=lambda i: accs[i])
    images = per_epoch * recipe.batch_size * len(records)
    return RunResult(variant=name, seed=seed, status=status, epochs=tuple(records), final_acc=accs[-1],
                     best_acc=accs[best], best_epoch=best + 1, seconds=time.perf_counter() - started,
                     images_per_s=images / train_seconds if train_seconds > 0 else 0.0,
                     init_sha=init_sha, order_sha=order.hexdigest()[:16])


class _Optimiser:
    """SGD (Nesterov) with a per-step cosine schedule, and gradient scaling for float16 autocast."""

    def __init__(self, model: nn.Module, recipe: Recipe, total_steps: int, device: torch.device) -> None:
        self.opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                   nesterov=recipe.momentum > 0, weight_decay=recipe.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total_steps) / total_steps)))
        self.amp_dtype = _amp_dtype(device) if recipe.amp else None
        self.scaler = _grad_scaler(device, enabled=self.amp_dtype is torch.float16)

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def __call__(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()


def _train_epoch(net: nn.Module, step: _Optimiser, data: TrainData, recipe: Recipe, seed: int, epoch: int,
                 world: World, order: Any, listener: Listener) -> tuple[float, float, int]:
    """One epoch; returns (loss sum, correct, samples) over all ranks. Folds the batches into `order`."""
    net.train()
    device = data.device
    sums = torch.zeros(2, device=device, dtype=torch.float64)  # loss sum, correct
    inputs = torch.zeros(1, device=device, dtype=torch.int64)  # fingerprint of the augmented inputs
    count, seen = 0, []
    amp = step.amp_dtype
    for x, y, idx in train_batches(data, recipe.batch_size, seed, epoch, world.rank, world.size):
        inputs += input_fingerprint(x)
        if recipe.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = net(x)
            loss = nn.functional.cross_entropy(out, y)
        step(loss)
        with torch.no_grad():  # accumulated on the device: no host sync per step
            sums += torch.stack([loss.detach().double() * len(y), (out.argmax(1) == y).sum().double()])
        count += len(y)
        seen.append(idx)
        listener.step_done()
    loss_sum, correct = sum_across(world, sums).tolist()
    count_all, fingerprint = sum_across(world, torch.cat([inputs.new_tensor([count]), inputs])).tolist()
    # the batch order, and the augmented inputs: equal for every variant of a seed
    order.update(batch_order(world, seen).cpu().numpy().tobytes())
    order.update(str(fingerprint).encode())
    return loss_sum, correct, int(count_all)


_FINGERPRINT_STRIDE = 7  # every 7th value of each sample: a crop or flip moves them all, at 1/7 the cost


def input_fingerprint(x: torch.Tensor) -> torch.Tensor:
    """An exact, order-free checksum of a batch: bit patterns of a fixed sample of each input's
    values, weighted by position.

    Integer sums are associative, so DDP ranks' shares add up to the single-process value; the
    weights make a mirrored or shifted image count differently from the original."""
    picked = x.detach().reshape(len(x), -1)[:, ::_FINGERPRINT_STRIDE].float().contiguous()
    bits = picked.view(torch.int32).to(torch.int64)
    weights = torch.arange(1, bits.shape[1] + 1, device=x.device, dtype=torch.int64)
    return (bits * weights).sum().reshape(1)


@torch.no_grad()
def evaluate(model: nn.Module, data: TrainData, batch_size: int, world: World = World(),
             amp_dtype: torch.dtype | None = None) -> tuple[float, float]:
    """Test loss and accuracy (%) in eval mode: BatchNorm on its running statistics, dropout off."""
    was_training = model.training
    model.eval()
    device = data.test_x.device
    sums = torch.zeros(2, device=device, dtype=torch.float64)
    count = 0
    try:
        for x, y in test_batches(data, batch_size, world.rank, world.size):
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                out = model(x)
            loss = nn.functional.cross_entropy(out.float(), y, reduction="sum")
            sums += torch.stack([loss.double(), (out.argmax(1) == y).sum().double()])
            count += len(y)
    finally:
        model.train(was_training)
    totals = sum_across(world, torch.cat([sums, torch.tensor([count], device=device, dtype=torch.float64)]))
    loss_sum, correct, count = totals.tolist()
    return loss_sum / max(count, 1), 100.0 * correct / max(count, 1)


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """A short hash of a state_dict's names and values (pairing check: equal weights, equal hash)."""
    h = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            h.update(str(value.dtype).encode())
            h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _grad_scaler(device: torch.device, enabled: bool) -> Any:
    if hasattr(torch.amp, "GradScaler"):  # torch >= 2.3
        return torch.amp.GradScaler(device.type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled and device.type == "cuda")


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _wrap(model: nn.Module, device: torch.device, world: World, recipe: Recipe) -> nn.Module:
    net = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if recipe.compile:
        net = torch.compile(net)
    return net


def seeds_from(text: str | int) -> list[int]:
    """`--seeds 3` -> [0, 1, 2]; `--seeds 0,5,7` -> those seeds."""
    raw = str(text).strip()
    try:
        if "," in raw:
            seeds = [int(s) for s in raw.split(",") if s.strip()]
        else:
            seeds = list(range(int(raw)))
    except ValueError:
        raise DropcheckError("usage", f"--seeds '{raw}' is neither a count nor a list of seeds",
                             "e.g. --seeds 3, or --seeds 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise DropcheckError("usage", f"--seeds '{raw}' must give distinct non-negative seeds",
                             "e.g. --seeds 3, or --seeds 0,1,2")
    return seeds


def default_epochs(dataset: str) -> int:
    """Epochs when --epochs is not given: enough to converge on the small sets, a short run elsewhere."""
    return {"digits": 15, "fake": 3}.get(dataset.split(":", 1)[0], 30)


def validate_outputs(model: nn.Module, data: TrainData, device: torch.device) -> None:
    """The model must map a batch of the data to one logit per class, in train and in eval mode."""
    x = data.train_x[:2].to(device)
    model = copy.deepcopy(model).to(device)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for mode in ("train", "eval"):
            model.train(mode == "train")
            try:
                out = model(x)
            except Exception as exc:  # noqa: BLE001 - the user's forward; reported as one line
                raise DropcheckError("data", f"the model fails on {data.name} inputs of shape {tuple(x.shape)} "
                                     f"in {mode} mode: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                                     "check --input-shape against what the model expects") from exc
            _check_logits(out, data, mode)


def _check_logits(out: Any, data: TrainData, mode: str) -> None:
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] == data.num_classes:
        return
    if isinstance(out, torch.Tensor) and out.dim() == 2:
        raise DropcheckError("data", f"the model's output is {tuple(out.shape)}, but {data.name} has "
                             f"{data.num_classes} classes", f"build it with {data.num_classes} outputs, e.g. "
                             f"-a num_classes={data.num_classes}")
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    raise DropcheckError("data", f"the model returns {shape} in {mode} mode; train-compare needs (N, classes) logits",
                         "wrap the model so forward returns the class logits only (e.g. no auxiliary outputs)")
