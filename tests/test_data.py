"""data.py: each --data spec gives batches of the model's shape, the same ones for the same seed."""
from __future__ import annotations

import pytest
import torch

from dropcheck.measurement.data import batches, describe, has_labels
from dropcheck.records import DropcheckError

CPU = torch.device("cpu")


def _all(spec, seed=0, labels=False, shape=(1, 3, 32, 32), batch_size=2, count=3):
    return list(batches(spec, batch_size, count, shape, CPU, seed=seed, labels=labels))


@pytest.mark.parametrize("spec", ["normal", "digits"])
def test_same_seed_gives_the_same_batches_and_another_seed_others(spec):
    first, again, other = _all(spec), _all(spec), _all(spec, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_normal_has_the_model_input_shape_with_the_batch_size():
    out = _all("normal", shape=(1, 64), batch_size=5, count=4)
    assert len(out) == 4 and all(x.shape == (5, 64) and x.dtype == torch.float32 for x in out)
    big = torch.cat(list(batches("normal", 4096, 1, (1, 8), CPU)))
    assert abs(big.mean().item()) < 0.05 and abs(big.std().item() - 1) < 0.05


def test_digits_are_resized_to_the_image_shape_and_repeated_over_channels_with_labels():
    out = _all("digits", labels=True)
    assert len(out) == 3
    for x, y in out:
        assert x.shape == (2, 3, 32, 32) and y.shape == (2,) and y.dtype == torch.long
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
        assert 0 <= int(y.min()) and int(y.max()) <= 9
    assert torch.equal(out[0][0], _all("digits")[0])  # labels change the yield, not the inputs


def test_digits_are_normalised_and_a_long_run_visits_every_image_once_per_epoch():
    (x, y), = batches("digits", 1797, 1, (1, 1, 8, 8), CPU, labels=True)
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3
    assert torch.bincount(y, minlength=10).min() > 150  # every class, nothing repeated
    flat = next(batches("digits", 4, 1, (1, 64), CPU))
    assert flat.shape == (4, 64)


def test_digits_need_an_image_or_flat_8x8_input():
    with pytest.raises(DropcheckError) as info:
        batches("digits", 2, 1, (1, 10), CPU)
    assert info.value.kind == "data" and "normal" in info.value.hint


def test_unknown_spec_is_a_usage_error_naming_the_forms():
    for spec in ("mnist", "", "imagefolder:"):
        with pytest.raises(DropcheckError) as info:
            batches(spec, 2, 1, (1, 3, 8, 8), CPU)
        assert info.value.kind == "usage" and "imagefolder:PATH" in info.value.hint
    with pytest.raises(DropcheckError):
        describe("mnist")


def test_bad_counts_and_labels_for_noise_are_usage_errors():
    with pytest.raises(DropcheckError, match="batch-size"):
        batches("normal", 0, 1, (1, 4), CPU)
    with pytest.raises(DropcheckError, match="no labels"):
        batches("normal", 2, 1, (1, 4), CPU, labels=True)
    assert not has_labels("normal") and has_labels("digits") and has_labels("imagefolder:x")


def test_describe_says_what_each_spec_feeds():
    assert "N(0, 1)" in describe("normal")
    assert "resized" in describe("digits") and "channels" in describe("digits")
    assert "ImageNet" in describe("imagefolder:val") and "val" in describe("imagefolder:val")


def _image_folder(root, per_class=3):
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (20 + i, 30, 3), generator=gen, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def test_imagefolder_is_cropped_to_the_input_shape_with_labels(tmp_path):
    root = _image_folder(tmp_path / "val")
    out = list(batches(f"imagefolder:{root}", 4, 3, (1, 3, 16, 16), CPU, seed=3, labels=True))
    assert [x.shape for x, _ in out] == [(4, 3, 16, 16)] * 3
    assert sorted(set(torch.cat([y for _, y in out]).tolist())) == [0, 1]
    again = list(batches(f"imagefolder:{root}", 4, 3, (1, 3, 16, 16), CPU, seed=3))
    assert all(torch.equal(a, x) for a, (x, _) in zip(again, out))
    gray = next(batches(f"imagefolder:{root}", 2, 1, (1, 1, 8, 12), CPU))
    assert gray.shape == (2, 1, 8, 12)


def test_imagefolder_missing_or_empty_is_a_data_error_with_a_hint(tmp_path):
    for path in (tmp_path / "nope", tmp_path):
        with pytest.raises(DropcheckError) as info:
            batches(f"imagefolder:{path}", 2, 1, (1, 3, 8, 8), CPU)
        assert info.value.kind == "data" and "PATH/CLASS" in info.value.hint


def test_imagefolder_unreadable_image_names_the_file(tmp_path):
    root = _image_folder(tmp_path / "val", per_class=1)
    (root / "cat" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DropcheckError, match="0.png"):
        list(batches(f"imagefolder:{root}", 2, 2, (1, 3, 8, 8), CPU))
