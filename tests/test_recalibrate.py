"""recalibrate.py: BN statistics re-estimated with dropout off remove the variance shift."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import StochasticDepth

import dropcheck.measurement.recalibrate as recalibrate
from dropcheck.measurement.recalibrate import bn_state, recalibrate_bn
from dropcheck.records import DropcheckError


def _net() -> nn.Sequential:
    """Linear -> Dropout(0.5) -> BN: the BN's train-time input variance is about twice its test-time one."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.Dropout(0.5), nn.BatchNorm1d(32, momentum=None), nn.ReLU(),
                        nn.Linear(32, 4))
    with torch.no_grad():
        net[0].bias.zero_()
    return net


def _data(n: int = 20, size: int = 512, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 16, generator=gen) for _ in range(n)]


def _calibrated_with_dropout_on() -> nn.Sequential:
    net = _net().train()  # the usual calibration: train mode, dropout live
    with torch.no_grad():
        for x in _data(seed=2):
            net(x)
    return net


def _test_var(net: nn.Sequential, data: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return net[0](torch.cat(data)).var(0, unbiased=False)  # the BN's input with dropout off


def test_dropout_before_bn_inflates_running_var_and_recalibration_removes_it():
    net = _calibrated_with_dropout_on()
    fresh = _test_var(net, _data(seed=3))
    shifted = net[2].running_var / fresh
    assert shifted.mean() > 1.8 and shifted.min() > 1.5  # Var_train / Var_test ~ 1/p = 2
    data = _data()
    recalibrate_bn(net, data, num_iters=len(data))
    assert torch.allclose(net[2].running_var, _test_var(net, data), rtol=1e-4)  # the population variance
    ratio = net[2].running_var / fresh
    assert abs(ratio.mean().item() - 1) < 0.02 and (ratio - 1).abs().max() < 0.06
    with torch.no_grad():
        assert torch.allclose(net[2].running_mean, net[0](torch.cat(data)).mean(0), atol=1e-5)


def test_fallback_estimates_what_fvcore_does(monkeypatch):
    pytest.importorskip("fvcore")
    with_fvcore, without = _calibrated_with_dropout_on(), _calibrated_with_dropout_on()
    recalibrate_bn(with_fvcore, _data(), 20)
    monkeypatch.setattr(recalibrate, "_fvcore_covers", lambda bns: False)
    recalibrate_bn(without, _data(), 20)
    for key, value in bn_state(with_fvcore).items():
        assert torch.allclose(value, bn_state(without)[key], rtol=1e-5, atol=1e-6), key


def test_training_flags_restored_and_parameters_untouched():
    net = _calibrated_with_dropout_on()
    net[3].eval()  # a mix of flags must come back as it was
    flags = [m.training for m in net.modules()]
    params = {k: v.clone() for k, v in net.named_parameters()}
    before = bn_state(net)
    recalibrate_bn(net, [(x, torch.zeros(len(x))) for x in _data(4)], 4)  # (inputs, targets) pairs too
    assert [m.training for m in net.modules()] == flags
    assert all(torch.equal(v, params[k]) for k, v in net.named_parameters())
    assert set(bn_state(net)) == set(before) == {"2.running_mean", "2.running_var"}
    assert not torch.equal(bn_state(net)["2.running_var"], before["2.running_var"])
    assert net[2].momentum is None and not net[2]._forward_pre_hooks and not net[2]._forward_hooks


def test_stochastic_depth_is_off_too():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), StochasticDepth(0.5, "row"), nn.BatchNorm2d(4)).train()
    data = [torch.randn(16, 3, 8, 8) for _ in range(3)]
    recalibrate_bn(net, data, 3)
    with torch.no_grad():
        expected = net[0](torch.cat(data)).var((0, 2, 3), unbiased=False)
    assert torch.allclose(net[2].running_var, expected, rtol=1e-4)


@pytest.mark.parametrize("fvcore", [True, False], ids=["fvcore", "fallback"])
def test_short_data_is_an_error_that_leaves_the_statistics_alone(monkeypatch, fvcore):
    if not fvcore:
        monkeypatch.setattr(recalibrate, "_fvcore_covers", lambda bns: False)
    net = _calibrated_with_dropout_on()
    before = bn_state(net)
    with pytest.raises(DropcheckError, match="gave 3 batches, 5 were asked for") as info:
        recalibrate_bn(net, iter(_data(3)), 5)
    assert info.value.kind == "data"
    assert all(torch.equal(v, before[k]) for k, v in bn_state(net).items())
    assert net.training and not net[2]._forward_pre_hooks and not net[2]._forward_hooks


def test_wrong_input_is_a_data_error_and_model_without_bn_is_left_alone():
    net = _calibrated_with_dropout_on()
    with pytest.raises(DropcheckError) as info:
        recalibrate_bn(net, [torch.randn(8, 5)], 1)
    assert info.value.kind == "data" and net.training
    plain = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    recalibrate_bn(plain, [], 3)
    assert bn_state(plain) == {}
    with pytest.raises(DropcheckError):
        recalibrate_bn(net, _data(1), 0)
