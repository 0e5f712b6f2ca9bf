"""Spread of `recalibrate`'s held-out consistency over initialisations: the numbers behind the
tolerance of tests/test_cli_measure.py::test_recalibrate_writes_new_weights_and_restores_consistency.

Same setup as the test (a small PreResNet with P3 dropout, BatchNorm statistics gathered in train
mode, then re-estimated with dropout off on 4x32 digits images and checked on 4x32 others), once per
seed. "after" is 1 only up to sampling; the test's tolerance must cover this spread.

    .venv/bin/python benchmarks/recalibrate_spread.py [--seeds 20]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dropcheck.analysis.load import load_target  # noqa: E402
from dropcheck.measurement.data import batches  # noqa: E402
from dropcheck.measurement.pipeline import recalibrate_target  # noqa: E402

SMALL = {"position": "P3", "p": 0.5, "blocks": (1, 1), "widths": (8, 16)}
MODEL = str(ROOT / "examples/preresnet.py")


def write_trained_checkpoint(seed: int, checkpoint: Path) -> None:
    """A "trained" checkpoint: BatchNorm statistics gathered in train mode, dropout on."""
    torch.manual_seed(seed)
    model = load_target(MODEL, SMALL, weights=True).model.train()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.momentum = None
        bn.reset_running_stats()
    with torch.no_grad():
        for x in batches("digits", 32, 6, (32, 3, 32, 32), "cpu", 5):
            model(x)
    torch.save(model.state_dict(), checkpoint)


def one(seed: int, folder: Path) -> tuple[float, float]:
    checkpoint = folder / "trained.pt"
    write_trained_checkpoint(seed, checkpoint)
    result = recalibrate_target(MODEL, SMALL, None, str(checkpoint), batches=4, batch_size=32)
    return result["consistency_before"]["stages.0.0.bn2"], result["consistency_after"]["stages.0.0.bn2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    seeds = parser.parse_args().seeds
    with tempfile.TemporaryDirectory() as folder:
        pairs = [one(seed, Path(folder)) for seed in range(seeds)]
    before, after = [b for b, _ in pairs], [a for _, a in pairs]
    print(f"{seeds} initialisations, stages.0.0.bn2: before {min(before):.3f}-{max(before):.3f}, "
          f"after {min(after):.3f}-{max(after):.3f} (test allows |after - 1| < 0.06, before < 0.8)")


if __name__ == "__main__":
    main()
