"""How fast does `dropcheck train-compare` train, against a minimal hand-written PyTorch loop?

Run:  .venv/bin/python benchmarks/train_speed.py [--repeat N] [--epochs E] [--device cpu|cuda]
      .venv/bin/python benchmarks/train_speed.py --device cuda --cifar-sized   (the GPU check)

Issue 6: train-compare's training images/s (train.train_run: seeded batch order, on-device
crop augmentation, per-step cosine schedule, on-device metric sums, batch-order hashing) against
the smallest loop that trains the same model on the same tensors with the same batch size:
a randperm per epoch, index the resident tensors, forward, cross-entropy, backward, SGD (Nesterov) step. No
augmentation, no schedule, no metrics in the baseline, so the ratio is the whole overhead.
Target >= 0.9x. Evaluation is outside both timings (train_run reports training time apart).

Model: the bundled examples/preresnet.py (dropout at P6, ~78k parameters). Data: digits at 16x16
(the train-compare default for this model), or with --cifar-sized 50,000 synthetic 3x32x32 images
in 10 classes (CIFAR-10's size; nothing downloaded). On CUDA both loops use autocast (bfloat16
where supported) and channels_last, like train-compare. Runs alternate between the baseline and
train-compare so both share the machine's noise; medians over --repeat. Exit status 0 unless a
run fails: read the ratio.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from dropcheck.training.loop import Recipe, train_run  # noqa: E402
from dropcheck.training.data import TrainData, load_train_data, steps_per_epoch  # noqa: E402

TARGET = 0.9


def _model() -> nn.Module:
    sys.path.insert(0, str(REPO / "examples"))
    from preresnet import PreResNet

    return PreResNet(position="P6")


def _cifar_sized(device: torch.device) -> TrainData:
    gen = torch.Generator().manual_seed(0)
    n, classes = 50_000, 10
    y = torch.randint(0, classes, (n,), generator=gen)
    x = torch.randn(n, 3, 32, 32, generator=gen) + y.view(-1, 1, 1, 1) * 0.1
    return TrainData(name="synthetic", description="50,000 synthetic 3x32x32 images, 10 classes",
                     train_x=x, train_y=y, test_x=x[:2000], test_y=y[:2000], num_classes=classes,
                     augment="crop+flip").to(device)


def hand_loop(model: nn.Module, data: TrainData, recipe: Recipe, device: torch.device) -> float:
    """Images per second of the plainest loop over resident tensors."""
    model = copy.deepcopy(model).to(device)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, nesterov=True,
                          weight_decay=recipe.weight_decay)
    amp = torch.bfloat16 if recipe.amp and device.type == "cuda" else None
    steps, n = steps_per_epoch(data, recipe.batch_size), 0
    model.train()
    _sync(device)
    start = time.perf_counter()
    for _ in range(recipe.epochs):
        perm = torch.randperm(len(data.train_y), device=device)
        for i in range(steps):
            idx = perm[i * recipe.batch_size:(i + 1) * recipe.batch_size]
            x, y = data.train_x[idx], data.train_y[idx]
            if recipe.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(y)
    _sync(device)
    return n / (time.perf_counter() - start)


def ours(model: nn.Module, data: TrainData, recipe: Recipe, device: torch.device) -> float:
    state = model.state_dict()
    return train_run(model, "bench", state, data, recipe, seed=0, device=device).images_per_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cifar-sized", action="store_true", help="50,000 synthetic 3x32x32 images instead of digits")
    args = ap.parse_args()
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    data = _cifar_sized(device) if args.cifar_sized else load_train_data("digits", (1, 3, 16, 16)).to(device)
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, amp=on_cuda, channels_last=on_cuda)
    model = _model()
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; {data.description}; "
          f"batch {args.batch_size}, {args.epochs} epoch(s) per run, {args.repeat} alternating runs each"
          + (", AMP + channels_last" if on_cuda else ""))
    hand_loop(model, data, Recipe(epochs=1, batch_size=args.batch_size, amp=on_cuda, channels_last=on_cuda), device)
    base, mine = [], []
    for _ in range(args.repeat):
        base.append(hand_loop(model, data, recipe, device))
        mine.append(ours(model, data, recipe, device))
    b, m = statistics.median(base), statistics.median(mine)
    print(f"hand-written loop : {b:9.0f} img/s  (runs: {', '.join(f'{v:.0f}' for v in base)})")
    print(f"train-compare     : {m:9.0f} img/s  (runs: {', '.join(f'{v:.0f}' for v in mine)})")
    print(f"ratio             : {m / b:.2f}x  (target >= {TARGET}x)  {'PASS' if m / b >= TARGET else 'FAIL'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
