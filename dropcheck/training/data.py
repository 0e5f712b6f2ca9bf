"""Data sets for train-compare: the whole set as tensors, and paired, reproducible batches.

`load_train_data(spec, input_shape)` loads a labelled train/test split once, resized to the model's
C, H, W and normalised (`TrainData`); `TrainData.to(device)` makes it resident on the GPU.
`train_batches(data, batch_size, seed, epoch)` serves one epoch: the order is a permutation drawn
from a generator seeded by (seed, epoch) alone, and the augmentation is drawn per epoch position from
a second (seed, epoch) generator and applied to a whole batch by one gather. So every variant trained
with one seed sees the same images, in the same order, with the same crops and flips, whatever model
consumes them; and the ranks of a data-parallel run each take a contiguous share of one global batch.

Choices:
- Tensors are float32 at the model's size, whole: CIFAR at 3x32x32 is 737 MB (train + test). Raw
  images stay uint8 until that conversion, which runs in chunks; a set over `_MAX_BYTES` is refused
  with a hint instead of running out of memory.
- Augmentation pads by reflection (no artificial border; zeros in normalised space would be the mean
  colour, not black), max(1, min(H, W) // 8) pixels: 4 at 32x32, as in the usual CIFAR recipe.
- The order is drawn on the CPU (the same on every device); the augmentation on the data's device,
  so it repeats exactly on one kind of device, but differs between a CPU and a GPU run.
- Splits never depend on the training seed: digits 1437/360 and an imagefolder without train/test
  folders 80/20, both stratified (largest remainder per class) with a fixed generator.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from ..measurement.data import (IMAGENET_MEAN, IMAGENET_STD, check_positive, check_shape, digits_tensors,
                                seeded_generator)
from ..records import DropcheckError

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder:PATH", "fake")
DEFAULT_DATA_DIR = "~/.cache/dropcheck/data"
CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
_LUMA = (0.299, 0.587, 0.114)  # RGB -> gray for a one-channel model
_MAX_BYTES = 24 * 2**30
_CHUNK = 4096
_FOLDER_HINT = "imagefolder:PATH wants PATH/train/CLASS/* and PATH/test/CLASS/* (or PATH/val), or PATH/CLASS/*"


@dataclass
class TrainData:
    """A labelled train/test split as tensors at the model's input size (load -> train)."""

    name: str
    description: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    augment: str  # "crop+flip", "crop" or "none"

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def to(self, device: torch.device | str) -> TrainData:
        return replace(self, train_x=self.train_x.to(device), train_y=self.train_y.to(device),
                       test_x=self.test_x.to(device), test_y=self.test_y.to(device))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "train_size": len(self.train_y),
                "test_size": len(self.test_y), "input_shape": list(self.train_x.shape[1:]),
                "num_classes": self.num_classes, "augment": self.augment}


def load_train_data(spec: str, input_shape: tuple[int, ...], data_dir: str | None = None,
                    download: bool = False) -> TrainData:
    """The data set named by `--dataset`, fitted to a model taking `input_shape` (batch dim first)."""
    text = (spec or "").strip()
    shape = check_shape(input_shape)
    if text == "fake":
        return _fake(shape)
    if text == "digits":
        return _digits(shape)
    if text in CIFAR_STATS:
        return _cifar(text, shape, Path(data_dir or DEFAULT_DATA_DIR).expanduser(), download)
    if text.startswith("imagefolder:") and text.split(":", 1)[1]:
        return _imagefolder(text.split(":", 1)[1], shape)
    raise DropcheckError("usage", f"unknown --dataset '{spec}'",
                         "use digits, cifar10, cifar100, imagefolder:PATH or fake")


def steps_per_epoch(data: TrainData, batch_size: int) -> int:
    """Full global batches per epoch (the last incomplete one is dropped)."""
    n = len(data.train_y)
    if check_positive("--batch-size", batch_size) > n:
        raise DropcheckError("usage", f"--batch-size {batch_size} is larger than the {n}-image train set of "
                             f"{data.name}", f"use --batch-size {n} or less")
    return n // batch_size


def train_batches(data: TrainData, batch_size: int, seed: int, epoch: int, rank: int = 0,
                  world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(x, y, train indices) of one epoch for this rank, augmented, on the data's device.

    Each global batch of `batch_size` is split into `world` contiguous shares; this rank takes share
    `rank`, so the ranks' shares concatenate to the single-process batch. Arguments are checked here.
    """
    steps = steps_per_epoch(data, batch_size)
    share = _share(batch_size, rank, world)
    return _epoch(data, steps, batch_size, share, rank * share, seed, epoch)


def test_batches(data: TrainData, batch_size: int, rank: int = 0,
                 world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) of the test set in a fixed order, unaugmented, nothing dropped.

    The test set is cut into `world` contiguous parts (sizes differ by at most one) and this rank
    serves its part in batches of at most `batch_size` (per process: evaluation has no batch
    statistics), so summed counts over ranks cover every test image exactly once.
    """
    check_positive("--batch-size", batch_size)
    _check_rank(rank, world)
    part = torch.arange(len(data.test_y), device=data.device).tensor_split(world)[rank]
    return ((data.test_x[idx], data.test_y[idx]) for idx in part.split(batch_size))


test_batches.__test__ = False  # not collected by pytest where a test module imports it by name


def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Each image of x (B, C, H, W) cropped at (dy[i], dx[i]) from its reflect-padded copy, mirrored where flip[i].

    Vectorised and without the padded copy: each output pixel's source row and column are computed
    (reflected at the border, the flip folded into the columns) and fetched with one gather.
    """
    (b, c, h, w), device = x.shape, x.device
    cols = torch.arange(w, device=device)
    rows = _reflect(dy[:, None] - pad + torch.arange(h, device=device), h)  # (B, H)
    cols = _reflect(dx[:, None] - pad + torch.where(flip[:, None], cols.flip(0), cols), w)  # (B, W)
    source = (rows[:, :, None] * w + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return x.reshape(b, c, h * w).gather(2, source).view(b, c, h, w)


def _reflect(i: torch.Tensor, size: int) -> torch.Tensor:
    """Index i of a reflect-padded axis (-size < i < 2 size - 1) -> the source index in [0, size)."""
    return (size - 1) - ((size - 1) - i.abs()).abs()


def _pad(shape: tuple[int, ...]) -> int:
    """Padding of the random crop: 4 pixels at 32x32, scaled with the image."""
    return max(1, min(shape[-2:]) // 8)


# --- epochs ------------------------------------------------------------------------------------------

def _check_rank(rank: int, world: int) -> None:
    if not 0 <= rank < check_positive("--nproc-per-node", world):
        raise DropcheckError("usage", f"rank {rank} is outside a world of {world} processes",
                             "launch with torchrun, which sets RANK and WORLD_SIZE")


def _share(batch_size: int, rank: int, world: int) -> int:
    _check_rank(rank, world)
    if batch_size % world:
        raise DropcheckError("usage", f"--batch-size {batch_size} does not divide among {world} processes",
                             f"use a multiple of {world}, e.g. {world * max(1, batch_size // world)}")
    return batch_size // world


def _seed(seed: int, epoch: int, stream: str) -> int:
    """One 63-bit seed per (seed, epoch, stream), the same in every process and Python run."""
    digest = hashlib.blake2b(f"dropcheck:{stream}:{int(seed)}:{int(epoch)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _epoch(data: TrainData, steps: int, batch_size: int, share: int, offset: int, seed: int,
           epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    n, device = len(data.train_y), data.device
    order_gen = seeded_generator(_seed(seed, epoch, "order"), torch.device("cpu"))
    order = torch.randperm(n, generator=order_gen).to(device)
    pad = _pad(data.train_x.shape) if data.augment != "none" else 0
    if pad:  # one draw per epoch position, so a rank's share of a batch is a slice of the draws
        gen = seeded_generator(_seed(seed, epoch, "augment"), device)
        on = device if device.type in ("cuda", "mps") else torch.device("cpu")
        dy, dx = (torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=on).to(device) for _ in range(2))
        flip = (torch.rand(n, generator=gen, device=on).to(device) < 0.5) & (data.augment == "crop+flip")
    for step in range(steps):
        at = slice(step * batch_size + offset, step * batch_size + offset + share)
        idx = order[at]
        x = data.train_x[idx]
        if pad:
            x = crop_flip(x, dy[at], dx[at], flip[at], pad)
        yield x, data.train_y[idx], idx


# --- the sources -------------------------------------------------------------------------------------

def _fit(raw: torch.Tensor, shape: tuple[int, ...], mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(N, 1|3, h, w) uint8 (0..255) or float images -> float32 (N, C, H, W), resized and normalised.

    Gray images are repeated to C channels; RGB becomes gray for a one-channel model.
    """
    (n, c), (channels, height, width) = raw.shape[:2], shape[1:]
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    luma = torch.tensor(_LUMA).view(1, 3, 1, 1)
    if c == 3 and channels == 1:
        m, s = (m * luma).sum(1, keepdim=True), (s * luma).sum(1, keepdim=True)
    out = torch.empty((n, channels, height, width))
    for lo in range(0, n, _CHUNK):
        x = raw[lo:lo + _CHUNK].float()
        x = x / 255 if raw.dtype == torch.uint8 else x
        x = (x * luma).sum(1, keepdim=True) if c == 3 and channels == 1 else x
        if tuple(x.shape[2:]) != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        out[lo:lo + _CHUNK] = ((x - m) / s).expand(-1, channels, -1, -1)
    return out


def _check_images(what: str, shape: tuple[int, ...], n: int, rgb: bool) -> None:
    if len(shape) != 4 or (rgb and shape[1] not in (1, 3)):
        raise DropcheckError("data", f"--dataset {what} gives {'RGB ' if rgb else ''}images, but the model takes "
                             f"input of shape {shape}", "use --dataset fake, or a model taking e.g. 1,3,32,32")
    size = n * shape[1] * shape[2] * shape[3] * 4
    if size > _MAX_BYTES:
        raise DropcheckError("data", f"--dataset {what} would take {size / 2**30:.1f} GiB as float32 at "
                             f"{'x'.join(map(str, shape[1:]))}", "train at a smaller input size, or on a smaller set")


def _stratified_split(y: torch.Tensor, n_test: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices; each class gives its share of n_test (largest remainder), fixed seed."""
    gen, counts = torch.Generator().manual_seed(0), torch.bincount(y)
    quota = counts.double() * n_test / len(y)
    take = quota.floor().long()
    take[torch.argsort(quota - take, descending=True, stable=True)[:n_test - int(take.sum())]] += 1
    test = torch.cat([(y == c).nonzero().flatten()[torch.randperm(int(counts[c]), generator=gen)[:int(take[c])]]
                      for c in range(len(counts))]).sort().values
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[test] = False
    return keep.nonzero().flatten(), test


def _data(name: str, what: str, how: str, shape: tuple[int, ...], kind: str, train: tuple[torch.Tensor, ...],
          test: tuple[torch.Tensor, ...], classes: int) -> TrainData:
    """TrainData with its one-sentence description; augmentation only for images of 8x8 or more."""
    augment = kind if len(shape) == 4 and min(shape[2:]) >= 8 else "none"
    words = "no augmentation" if augment == "none" else (
        f"augmented by a random crop after {_pad(shape)}-pixel reflect padding"
        + (" and a random horizontal flip" if augment == "crop+flip" else ", no flip"))
    return TrainData(name, f"{name}: {len(train[1])} train / {len(test[1])} test {what}, {classes} classes, {how} "
                     f"{'x'.join(map(str, shape[1:]))}, {words}", *train, *test, classes, augment)


def _split_normalised(x: torch.Tensor, y: torch.Tensor, n_test: int) -> tuple[tuple[torch.Tensor, ...], ...]:
    train, test = _stratified_split(y, n_test)
    x = (x - x[train].mean()) / x[train].std()
    return (x[train], y[train]), (x[test], y[test])


def _digits(shape: tuple[int, ...]) -> TrainData:
    images, y = digits_tensors()
    if shape[1:] != (64,):
        _check_images("digits", shape, len(y), rgb=False)
    x = images.flatten(1) if shape[1:] == (64,) else _fit(images, shape, (0.0,), (1.0,))
    return _data("digits", "8x8 handwritten digits from scikit-learn (a fixed stratified split)",
                 "normalised with the train set's mean/std, as", shape, "crop", *_split_normalised(x, y, 360), 10)


def _fake(shape: tuple[int, ...]) -> TrainData:
    gen, sample = torch.Generator().manual_seed(0), shape[1:]
    if len(sample) == 3:  # smooth class patterns: they survive the crop's small shifts
        low = torch.randn(10, sample[0], min(4, sample[1]), min(4, sample[2]), generator=gen)
        templates = F.interpolate(low, size=sample[1:], mode="bilinear", align_corners=False)
    else:
        templates = torch.randn(10, *sample, generator=gen)
    y = torch.arange(640) % 10
    x = templates[y] + torch.randn(640, *sample, generator=gen)
    return _data("fake", "synthetic samples (a fixed smooth pattern per class plus Gaussian noise, seed 0)",
                 "normalised, as", shape, "crop", *_split_normalised(x, y, 128), 10)


def _cifar(name: str, shape: tuple[int, ...], root: Path, download: bool) -> TrainData:
    from torchvision import datasets

    _check_images(name, shape, 60000, rgb=True)
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        parts = [cls(str(root), train=train, download=download) for train in (True, False)]
    except RuntimeError as exc:
        raise DropcheckError("data", f"{name} not found (or corrupt) in {root}",
                             "pass --download, or --data-dir where it is") from exc
    except OSError as exc:
        raise DropcheckError("data", f"cannot download {name} into {root}: {' '.join(str(exc).split())}",
                             "check the network, or fetch it elsewhere and pass --data-dir") from exc
    pairs = [(_fit(torch.from_numpy(p.data).permute(0, 3, 1, 2), shape, *CIFAR_STATS[name]),
              torch.as_tensor(p.targets, dtype=torch.long)) for p in parts]
    return _data(name, "32x32 colour images", "normalised with the usual CIFAR per-channel mean/std, as", shape,
                 "crop+flip", *pairs, len(parts[0].classes))


def _folder(path: Path, transform: Any) -> Any:
    from torchvision import datasets

    try:
        return datasets.ImageFolder(str(path), transform=transform)
    except (FileNotFoundError, OSError) as exc:
        raise DropcheckError("data", f"{path} holds no images in class folders", _FOLDER_HINT) from exc


def _read(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    images = []
    for path, _ in dataset.samples:
        try:
            images.append(dataset.transform(dataset.loader(path)))
        except Exception as exc:
            raise DropcheckError("data", f"cannot read image {path}: {type(exc).__name__}",
                                 "remove or replace the file") from exc
    return torch.stack(images), torch.as_tensor(dataset.targets, dtype=torch.long)


def _imagefolder(path_text: str, shape: tuple[int, ...]) -> TrainData:
    from torchvision import transforms

    root = Path(path_text).expanduser()
    if not root.is_dir():
        raise DropcheckError("data", f"{path_text}: no such directory", _FOLDER_HINT)
    _check_images(f"imagefolder:{path_text}", shape, 0, rgb=True)
    height, width = shape[2:]
    transform = transforms.Compose([transforms.Resize(max(height, width)), transforms.CenterCrop((height, width)),
                                    transforms.PILToTensor()])
    train_dir, test_dir = root / "train", next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if train_dir.is_dir() != (test_dir is not None):
        raise DropcheckError("data", f"{path_text} has a train or a test/val folder but not both", _FOLDER_HINT)
    if test_dir is not None:
        parts = [_folder(train_dir, transform), _folder(test_dir, transform)]
        if parts[0].classes != parts[1].classes:
            only = [sorted(set(a.classes) - set(b.classes)) for a, b in (parts, parts[::-1])]
            raise DropcheckError("data", f"{train_dir} and {test_dir} have different classes (only in train: "
                                 f"{', '.join(only[0]) or '-'}; only in {test_dir.name}: {', '.join(only[1]) or '-'})",
                                 "give both the same CLASS folders")
        _check_images(f"imagefolder:{path_text}", shape, sum(len(p.samples) for p in parts), rgb=True)
        (train_x, train_y), (test_x, test_y) = (_read(p) for p in parts)
        classes, split = parts[0].classes, f"its {test_dir.name} folder"
    else:
        whole = _folder(root, transform)
        _check_images(f"imagefolder:{path_text}", shape, len(whole.samples), rgb=True)
        x, y = _read(whole)
        train, test = _stratified_split(y, round(0.2 * len(y)))
        if not len(test) or not len(train):
            raise DropcheckError("data", f"{path_text} holds too few images ({len(y)}) to split 80/20", _FOLDER_HINT)
        (train_x, train_y), (test_x, test_y) = (x[train], y[train]), (x[test], y[test])
        classes, split = whole.classes, "a fixed stratified 80/20 split"
    train_x, test_x = (_fit(t, shape, IMAGENET_MEAN, IMAGENET_STD) for t in (train_x, test_x))
    return _data(f"imagefolder:{path_text}", f"images ({split})", "shorter side resized, centre-cropped and "
                 "ImageNet-normalised to", shape, "crop+flip", (train_x, train_y), (test_x, test_y), len(classes))
