"""train_data.py: for one (seed, epoch), every variant and every rank sees the same batches and augmentation."""
from __future__ import annotations

import pytest
import torch

from dropcheck.records import DropcheckError
from dropcheck.training.data import (DATASETS, TrainData, crop_flip, load_train_data, steps_per_epoch, test_batches, train_batches)

IMAGE = (1, 3, 32, 32)


@pytest.fixture(scope="module")
def digits():
    return load_train_data("digits", IMAGE)


@pytest.fixture(scope="module")
def small_digits():  # a whole epoch is cheaper at 1x16x16
    return load_train_data("digits", (1, 1, 16, 16))


@pytest.fixture(scope="module")
def fake():
    return load_train_data("fake", IMAGE)


def _epoch(data, batch_size=64, seed=0, epoch=0, rank=0, world=1):
    return list(train_batches(data, batch_size, seed, epoch, rank, world))


def _noise_data(augment, n=48, size=16):
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 2, size, size, generator=gen), torch.arange(n) % 4
    return TrainData("noise", "noise", x, y, x[:8], y[:8], 4, augment)


def _shift_of(original, augmented, pad):
    """(dy, dx, flipped) such that augmented[r, c] == original[r + dy, c + dx] where both exist, else None."""
    h, w = original.shape[-2:]
    for flipped in (False, True):
        source = original.flip(-1) if flipped else original
        for dy in range(-pad, pad + 1):
            for dx in range(-pad, pad + 1):
                out = augmented[..., max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
                src = source[..., max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)]
                if torch.equal(out, src):
                    return dy, dx, flipped
    return None


def test_same_seed_and_epoch_give_identical_order_and_augmentation(small_digits):
    first, again = _epoch(small_digits), _epoch(small_digits)
    assert len(first) == len(again) == steps_per_epoch(small_digits, 64) == 1437 // 64
    for (x, y, i), (x2, y2, i2) in zip(first, again):
        assert torch.equal(i, i2) and torch.equal(x, x2) and torch.equal(y, y2)
        assert torch.equal(y, small_digits.train_y[i])


def test_another_seed_or_epoch_gives_another_order(small_digits):
    base = _epoch(small_digits)[0][2]
    assert not torch.equal(base, _epoch(small_digits, seed=1)[0][2])
    assert not torch.equal(base, _epoch(small_digits, epoch=1)[0][2])


def test_an_epoch_visits_each_image_at_most_once_and_drops_only_the_last_partial_batch(small_digits):
    for batch_size in (64, 100, 1437):
        seen = torch.cat([i for _, _, i in _epoch(small_digits, batch_size=batch_size)])
        assert len(seen) == 1437 - 1437 % batch_size
        assert len(torch.unique(seen)) == len(seen)
        assert all(len(i) == batch_size for _, _, i in _epoch(small_digits, batch_size=batch_size))


@pytest.mark.parametrize("augment", ["crop+flip", "crop", "none"])
def test_rank_shares_concatenate_to_the_single_process_batch(augment):
    data = _noise_data(augment)
    whole = _epoch(data, batch_size=8, seed=3, epoch=2)
    shards = [_epoch(data, batch_size=8, seed=3, epoch=2, rank=r, world=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(whole) == 6
    for step, (x, y, i) in enumerate(whole):
        parts = [shard[step] for shard in shards]
        assert all(len(p[2]) == 4 for p in parts)
        for k, full in enumerate((x, y, i)):
            assert torch.equal(torch.cat([p[k] for p in parts]), full)


def test_batch_size_must_divide_among_ranks_and_fit_the_train_set(digits):
    with pytest.raises(DropcheckError, match="divide among 4") as info:
        train_batches(digits, 10, 0, 0, rank=0, world=4)
    assert info.value.kind == "usage" and "multiple of 4" in info.value.hint
    for bad in (0, 2000):
        with pytest.raises(DropcheckError, match="batch-size"):
            train_batches(digits, bad, 0, 0)
    with pytest.raises(DropcheckError, match="rank 2"):
        train_batches(digits, 8, 0, 0, rank=2, world=2)


def test_crop_flip_picks_the_offset_window_of_the_reflect_padded_image_by_hand():
    image = torch.arange(16.0).view(1, 1, 4, 4)  # rows 0..3, 4..7, 8..11, 12..15
    shifted = crop_flip(image, torch.tensor([0]), torch.tensor([2]), torch.tensor([False]), pad=1)
    # padded by reflection, row -1 is row 1; the window starting at padded (0, 2) begins at (-1, 1)
    assert shifted[0, 0].tolist() == [[5, 6, 7, 6], [1, 2, 3, 2], [5, 6, 7, 6], [9, 10, 11, 10]]
    flipped = crop_flip(image, torch.tensor([1]), torch.tensor([1]), torch.tensor([True]), pad=1)
    assert torch.equal(flipped, image.flip(-1))


def test_crop_keeps_the_shape_and_is_a_shift_of_the_original_without_flips(digits):
    x, _, idx = _epoch(digits)[0]
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32
    shifts = [_shift_of(digits.train_x[j], x[k], 4) for k, j in enumerate(idx.tolist())]
    assert all(s is not None and not s[2] for s in shifts)
    assert len({s[:2] for s in shifts}) > 5 and any(s[:2] != (0, 0) for s in shifts)


def test_crop_and_flip_flips_about_half_the_images_and_none_flips_nothing():
    data = _noise_data("crop+flip")
    shifts = [_shift_of(data.train_x[j], x[k], 2) for x, _, idx in _epoch(data, batch_size=48)
              for k, j in enumerate(idx.tolist())]
    flips = sum(s[2] for s in shifts)
    assert all(s is not None for s in shifts) and 8 < flips < 40
    plain = _noise_data("none")
    x, _, idx = _epoch(plain, batch_size=16)[0]
    assert torch.equal(x, plain.train_x[idx])


def test_digits_split_is_fixed_stratified_and_normalised_on_the_train_set(digits):
    assert (len(digits.train_y), len(digits.test_y), digits.num_classes) == (1437, 360, 10)
    assert digits.augment == "crop" and digits.train_x.shape[1:] == (3, 32, 32)
    assert abs(digits.train_x.mean().item()) < 1e-4 and abs(digits.train_x.std().item() - 1) < 1e-3
    assert torch.equal(digits.train_x[:, 0], digits.train_x[:, 2])
    everything = torch.bincount(torch.cat([digits.train_y, digits.test_y]))
    assert ((torch.bincount(digits.test_y) - 0.2 * everything).abs() <= 1).all()
    _epoch(digits, seed=5)  # training with another seed must not move the split
    again = load_train_data("digits", (1, 1, 8, 8))
    assert torch.equal(again.test_y, digits.test_y) and again.test_x.shape == (360, 1, 8, 8)
    assert not torch.equal(digits.test_x[:, 0], digits.train_x[:360, 0])  # test images are not train images


def test_flat_digits_are_64_vectors_without_augmentation():
    flat = load_train_data("digits", (1, 64))
    assert flat.train_x.shape == (1437, 64) and flat.augment == "none"
    x, _, idx = _epoch(flat, batch_size=32)[0]
    assert torch.equal(x, flat.train_x[idx])


def test_fake_data_is_learnable_by_nearest_class_mean(fake):
    assert (len(fake.train_y), len(fake.test_y), fake.num_classes) == (512, 128, 10)
    means = torch.stack([fake.train_x[fake.train_y == c].mean(0) for c in range(10)]).flatten(1)
    guess = torch.cdist(fake.test_x.flatten(1), means).argmin(1)
    assert (guess == fake.test_y).float().mean() > 0.5  # chance is 0.1
    assert torch.equal(load_train_data("fake", IMAGE).train_x, fake.train_x)


def test_test_batches_are_fixed_unaugmented_and_shard_every_image_once(fake):
    whole = list(test_batches(fake, 50))
    assert [len(y) for _, y in whole] == [50, 50, 28]
    assert torch.equal(torch.cat([x for x, _ in whole]), fake.test_x)
    shards = [list(test_batches(fake, 50, rank=r, world=3)) for r in range(3)]
    assert torch.equal(torch.cat([y for shard in shards for _, y in shard]), fake.test_y)


def test_to_dict_has_no_tensors_and_to_moves_everything(fake):
    info = fake.to_dict()
    assert info["train_size"] == 512 and info["test_size"] == 128 and info["augment"] == "crop"
    assert info["input_shape"] == [3, 32, 32] and "512 train / 128 test" in info["description"]
    assert not any(isinstance(v, torch.Tensor) for v in info.values())
    moved = fake.to("cpu")
    assert moved.device == torch.device("cpu") and torch.equal(moved.test_y, fake.test_y)


def test_unknown_spec_is_a_usage_error_naming_every_dataset():
    for spec in ("mnist", "", "imagefolder:"):
        with pytest.raises(DropcheckError) as info:
            load_train_data(spec, IMAGE)
        assert info.value.kind == "usage" and "--dataset" in info.value.message
        assert all(name in info.value.hint for name in DATASETS)


def test_images_need_an_image_shaped_model():
    with pytest.raises(DropcheckError) as info:
        load_train_data("digits", (1, 10))
    assert info.value.kind == "data" and "fake" in info.value.hint


def test_missing_cifar_files_say_where_they_were_looked_for(tmp_path):
    for name in ("cifar10", "cifar100"):
        with pytest.raises(DropcheckError) as info:
            load_train_data(name, IMAGE, data_dir=str(tmp_path))
        assert info.value.kind == "data" and str(tmp_path) in info.value.message
        assert "--download" in info.value.hint and "--data-dir" in info.value.hint
    assert list(tmp_path.iterdir()) == []  # nothing downloaded


def test_cifar_arrays_become_normalised_tensors_at_the_model_size(monkeypatch, tmp_path):
    import numpy as np
    import torchvision

    class TinyCifar:
        def __init__(self, root, train, download):
            assert root == str(tmp_path) and not download
            count = 10 if train else 4
            self.data = np.full((count, 32, 32, 3), 128, dtype=np.uint8)
            self.targets, self.classes = [i % 10 for i in range(count)], [str(i) for i in range(10)]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", TinyCifar)
    data = load_train_data("cifar10", (1, 3, 16, 16), data_dir=str(tmp_path))
    assert data.train_x.shape == (10, 3, 16, 16) and data.test_x.shape == (4, 3, 16, 16)
    assert data.augment == "crop+flip" and data.num_classes == 10
    expected = (128 / 255 - torch.tensor([0.4914, 0.4822, 0.4465])) / torch.tensor([0.2470, 0.2435, 0.2616])
    assert torch.allclose(data.train_x[0, :, 5, 5], expected, atol=1e-5)
    gray = load_train_data("cifar10", (1, 1, 32, 32), data_dir=str(tmp_path))
    assert gray.train_x.shape == (10, 1, 32, 32)


def _pngs(root, classes=("cat", "dog"), per_class=5):
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for label in classes:
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (12 + i, 20, 3), generator=gen, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def test_imagefolder_with_train_and_val_folders(tmp_path):
    _pngs(tmp_path / "train", per_class=3)
    _pngs(tmp_path / "val", per_class=2)
    data = load_train_data(f"imagefolder:{tmp_path}", (1, 3, 8, 8))
    assert data.train_x.shape == (6, 3, 8, 8) and data.test_x.shape == (4, 3, 8, 8)
    assert data.num_classes == 2 and data.augment == "crop+flip" and "val" in data.description
    assert data.test_y.tolist() == [0, 0, 1, 1]


def test_imagefolder_of_class_folders_only_is_split_80_20_by_class(tmp_path):
    _pngs(tmp_path, per_class=5)
    data = load_train_data(f"imagefolder:{tmp_path}", (1, 3, 8, 8))
    assert sorted(data.test_y.tolist()) == [0, 1] and len(data.train_y) == 8
    again = load_train_data(f"imagefolder:{tmp_path}", (1, 3, 8, 8))
    assert torch.equal(again.test_x, data.test_x)


def test_bad_imagefolders_are_one_line_data_errors(tmp_path):
    _pngs(tmp_path / "mismatch" / "train", classes=("cat", "dog"), per_class=1)
    _pngs(tmp_path / "mismatch" / "test", classes=("cat", "cow"), per_class=1)
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    _pngs(tmp_path / "lonely" / "train", per_class=1)
    cases = {"nope": "no such directory", "empty": "no images", "mismatch": "only in train: dog; only in test: cow",
             "lonely": "not both"}
    for folder, words in cases.items():
        with pytest.raises(DropcheckError) as info:
            load_train_data(f"imagefolder:{tmp_path / folder}", (1, 3, 8, 8))
        assert info.value.kind == "data" and words in info.value.message and "\n" not in info.value.one_line()
