"""Data spec -> reproducible input batches for measure and recalibrate.

Spec forms (the `--data` flag):

- `normal`: N(0, 1) noise of the model's input shape, as in the paper's module tests.
- `digits`: scikit-learn's bundled 8x8 handwritten digits (no download), with labels.
- `imagefolder:PATH`: images under PATH/CLASS/*.png|jpg (torchvision's ImageFolder), with labels.

`input_shape` is the model's input shape *with* its batch dimension, as in
`Target.example_input.shape`; the batch dimension is replaced by `batch_size`. The same spec,
shape, batch size, count, seed and device always give the same batches, so measure can run
one set of batches twice (dropout off, then on). scikit-learn and PIL are imported only for the
specs that need them. The argument checks, the seeded generator and the digits tensors are
public: train-compare's data (training/data.py) uses them too.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..records import DropcheckError

SPEC_FORMS = "normal, digits or imagefolder:PATH"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_GRAY_MEAN, _GRAY_STD = (0.449,), (0.226,)  # ImageNet's statistics averaged over channels
_CROP_RATIO = 0.875  # resize to crop/0.875, then centre-crop: ImageNet's 256 -> 224


def batches(spec: str, batch_size: int, count: int, input_shape: tuple[int, ...], device: torch.device | str,
            seed: int = 0, labels: bool = False) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """`count` batches of `batch_size` inputs for a model taking `input_shape` (batch dim first).

    Yields input tensors on `device`, or `(inputs, targets)` pairs with `labels`. The spec, the
    shape and labels are checked here, before the first batch is asked for.
    """
    kind, arg = _parse(spec)
    batch_size, count = check_positive("--batch-size", batch_size), check_positive("--batches", count)
    shape = check_shape(input_shape)
    device = torch.device(device)
    if labels and kind == "normal":
        raise DropcheckError("usage", "--data normal has no labels",
                             "use --data digits or imagefolder:PATH where accuracy is wanted")
    if kind == "normal":
        return _normal(batch_size, count, shape, device, seed)
    if kind == "digits":
        images, targets = digits_tensors()
        place = _image_placer(shape, "digits")
        return _indexed(len(targets), batch_size, count, seed, labels, device,
                        lambda idx: (place(images[idx].to(device)), targets[idx]))
    return _imagefolder(arg, batch_size, count, shape, device, seed, labels)


def describe(spec: str) -> str:
    """One sentence saying what a spec feeds the model (for reports and `--help`)."""
    kind, arg = _parse(spec)
    if kind == "normal":
        return "normal: N(0, 1) noise of the model's input shape, fixed by the seed (the paper's module tests)"
    if kind == "digits":
        return ("digits: scikit-learn's 1797 8x8 handwritten digits (10 classes), scaled to [0, 1] and "
                "normalised, bilinearly resized to the model's HxW and repeated to its C channels; "
                "shuffled by the seed")
    return (f"imagefolder:{arg}: images under {arg} (torchvision ImageFolder), resized to crop/0.875 and "
            "centre-cropped to the model's HxW, ImageNet-normalised; shuffled by the seed")


def has_labels(spec: str) -> bool:
    """Whether `batches(spec, ..., labels=True)` can give targets (for accuracy)."""
    return _parse(spec)[0] != "normal"


# --- spec and argument checks ------------------------------------------------------------------

def _parse(spec: str) -> tuple[str, str]:
    text = (spec or "").strip()
    if text in ("normal", "digits"):
        return text, ""
    if text.startswith("imagefolder:"):
        path = text.split(":", 1)[1]
        if not path:
            raise DropcheckError("usage", "--data imagefolder: needs a path",
                                 "write imagefolder:PATH, with images in PATH/CLASS/")
        return "imagefolder", path
    raise DropcheckError("usage", f"unknown --data '{spec}'", f"use {SPEC_FORMS}")


def check_positive(flag: str, value: int) -> int:
    """`value` if it is a positive whole number; else a usage error naming `flag`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DropcheckError("usage", f"{flag} {value!r} is not a positive whole number", f"e.g. {flag} 8")
    return value


def check_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """`input_shape` as ints, if it has a batch dimension and positive sizes; else a usage error."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise DropcheckError("usage", f"input shape {shape} needs a batch dimension and positive sizes",
                             "give the full shape, e.g. 1,3,224,224")
    return shape


def _image_placer(shape: tuple[int, ...], what: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """(N, 1, h, w) grayscale -> the model's (N, C, H, W), or (N, 64) for a flat 8x8 input."""
    if len(shape) == 2 and shape[1] == 64:
        return lambda x: x.flatten(1)
    if len(shape) != 4:
        raise DropcheckError("data", f"--data {what} gives images, but the model takes input of shape {shape}",
                             "use --data normal, or give an image shape such as 1,3,32,32")
    channels, size = shape[1], tuple(shape[2:])

    def place(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != size:
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x.expand(-1, channels, -1, -1).contiguous()

    return place


# --- the sources ---------------------------------------------------------------------------------

def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator seeded with `seed`, on `device` itself where that is a GPU (fast, deterministic per device)."""
    gen = torch.Generator(device=device) if device.type in ("cuda", "mps") else torch.Generator()
    gen.manual_seed(int(seed))
    return gen


def _normal(batch_size: int, count: int, shape: tuple[int, ...], device: torch.device,
            seed: int) -> Iterator[torch.Tensor]:
    gen = seeded_generator(seed, device)  # on the device itself: fast, and deterministic per device
    gen_device = device if device.type in ("cuda", "mps") else torch.device("cpu")
    for _ in range(count):
        yield torch.randn((batch_size, *shape[1:]), generator=gen, device=gen_device).to(device)


def _index_stream(n: int, seed: int) -> Iterator[int]:
    """Indices of successive seeded permutations of range(n): every item once per epoch."""
    gen = seeded_generator(seed, torch.device("cpu"))
    while True:
        yield from torch.randperm(n, generator=gen).tolist()


def _indexed(n: int, batch_size: int, count: int, seed: int, labels: bool, device: torch.device,
             fetch: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> Iterator[Any]:
    stream = _index_stream(n, seed)
    for _ in range(count):
        idx = torch.tensor([next(stream) for _ in range(batch_size)], dtype=torch.long)
        x, y = fetch(idx)
        yield (x, y.to(device)) if labels else x


@lru_cache(maxsize=1)
def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as normalised (N, 1, 8, 8) images and their labels (loaded once)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DropcheckError("data", "the digits data set needs scikit-learn, which is not installed",
                             "pip install scikit-learn") from exc
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32) / 16.0  # pixel values are 0..16
    images = (images - images.mean()) / images.std()
    return images.unsqueeze(1), torch.as_tensor(digits.target, dtype=torch.long)


def _imagefolder(path_text: str, batch_size: int, count: int, shape: tuple[int, ...], device: torch.device,
                 seed: int, labels: bool) -> Iterator[Any]:
    from torchvision import datasets, transforms

    hint = "imagefolder:PATH wants images in PATH/CLASS/, e.g. val/cat/1.png and val/dog/2.png"
    root = Path(path_text).expanduser()
    if not root.is_dir():
        raise DropcheckError("data", f"{path_text}: no such directory", hint)
    if len(shape) != 4 or shape[1] not in (1, 3):
        raise DropcheckError("data", f"--data imagefolder gives 1- or 3-channel images, but the model takes "
                             f"input of shape {shape}", "use --data normal, or give a shape such as 1,3,224,224")
    height, width = shape[2], shape[3]
    gray = shape[1] == 1
    steps = [transforms.Grayscale(1)] if gray else []
    steps += [transforms.Resize(round(max(height, width) / _CROP_RATIO)), transforms.CenterCrop((height, width)),
              transforms.ToTensor(),
              transforms.Normalize(_GRAY_MEAN if gray else IMAGENET_MEAN, _GRAY_STD if gray else IMAGENET_STD)]
    try:
        dataset = datasets.ImageFolder(str(root), transform=transforms.Compose(steps))
    except (FileNotFoundError, OSError) as exc:
        raise DropcheckError("data", f"{path_text} holds no images in class folders", hint) from exc

    def load(i: int) -> tuple[torch.Tensor, int]:
        try:
            return dataset[i]
        except Exception as exc:
            raise DropcheckError("data", f"cannot read image {dataset.samples[i][0]}: {type(exc).__name__}",
                                 "remove or replace the file") from exc

    def fetch(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        items = [load(i) for i in idx.tolist()]
        x = torch.stack([img for img, _ in items]).to(device)
        return x, torch.tensor([target for _, target in items], dtype=torch.long)

    return _indexed(len(dataset), batch_size, count, seed, labels, device, fetch)
