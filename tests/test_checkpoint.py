"""checkpoint.py: state_dicts load strictly and safely; anything else is one clear error."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dropcheck.measurement.checkpoint import load_checkpoint
from dropcheck.records import DropcheckError


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    net[1].running_mean.uniform_()
    net[1].running_var.uniform_(1, 2)
    return net


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _fails(model, path, **kw) -> DropcheckError:
    with pytest.raises(DropcheckError) as info:
        load_checkpoint(model, path, **kw)
    assert info.value.kind == "checkpoint" and info.value.hint
    return info.value


def test_state_dict_round_trip(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(_net(1).state_dict(), path)
    model = _net(0)
    load_checkpoint(model, str(path))
    assert _same(model, _net(1))


@pytest.mark.parametrize("wrap", [
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
    lambda sd: {f"module.{k}": v for k, v in sd.items()},  # saved from DistributedDataParallel
    lambda sd: {"state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}},
], ids=["state_dict", "model", "ddp", "ddp-compiled"])
def test_common_wrappers_and_prefixes_load(tmp_path, wrap):
    path = tmp_path / "w.pt"
    torch.save(wrap(_net(1).state_dict()), path)
    model = _net(0)
    load_checkpoint(model, path)
    assert _same(model, _net(1))


def test_meta_model_gets_the_checkpoint_tensors(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(_net(1).state_dict(), path)
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    load_checkpoint(model, path)
    assert not any(t.is_meta for t in model.state_dict().values()) and _same(model, _net(1))


def test_mismatch_names_missing_unexpected_and_wrong_shaped_keys_and_changes_nothing(tmp_path):
    path = tmp_path / "w.pt"
    sd = _net(1).state_dict()
    sd["extra.weight"] = sd.pop("3.weight")
    sd["0.bias"] = torch.zeros(5)
    torch.save(sd, path)
    model = _net(0)
    error = _fails(model, path)
    assert "missing keys 3.weight" in error.message and "unexpected keys extra.weight" in error.message
    assert "0.bias: checkpoint (5,) vs model (3,)" in error.message
    assert _same(model, _net(0))


def test_checkpoint_without_batch_counters_still_loads(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({k: v for k, v in _net(1).state_dict().items() if "num_batches" not in k}, path)
    model = _net(0)
    load_checkpoint(model, path)
    assert torch.equal(model[1].running_var, _net(1)[1].running_var)


def test_truncated_text_empty_and_missing_files_are_checkpoint_errors(tmp_path):
    good = tmp_path / "w.pt"
    torch.save(_net(1).state_dict(), good)
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.pt").write_text("hello, these are not weights\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("cut.pt", "notes.pt", "empty.pt"):
        assert "not a readable PyTorch checkpoint" in _fails(_net(0), tmp_path / name).message
    assert _fails(_net(0), tmp_path / "empty.pt").message.endswith(": the file is empty")
    assert "zip archive" in _fails(_net(0), tmp_path / "cut.pt").message  # torch's reason, its first sentence only
    assert _fails(_net(0), tmp_path / "notes.pt").__cause__ is not None  # --verbose shows torch's traceback
    assert "no such file" in _fails(_net(0), tmp_path / "absent.pt").message
    assert "not a file" in _fails(_net(0), tmp_path).message


def test_non_state_dict_contents_are_refused(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    assert "without a state_dict" in _fails(_net(0), path).message
    torch.save([torch.zeros(1)], path)
    assert "holds a list" in _fails(_net(0), path).message


def test_pickled_whole_model_needs_trust_pickle(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(_net(1), path)
    model = _net(0)
    error = _fails(model, path)
    assert "is a pickled model" in error.message and "--trust-pickle" in error.hint
    assert _same(model, _net(0))
    load_checkpoint(model, path, trust_pickle=True)
    assert _same(model, _net(1))


def test_torchscript_archive_gives_its_state_dict(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(_net(1)), str(path))
    model = _net(0)
    load_checkpoint(model, path)
    assert _same(model, _net(1))
