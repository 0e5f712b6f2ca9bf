"""Shape propagation's meta shortcuts give exactly what torch's own meta run gives."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dropcheck.analysis.shapes import _meta_module_output


def _meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


def _shapes(value: object) -> list[object]:
    items = value if isinstance(value, tuple) else (value,)
    return [t.shape if isinstance(t, torch.Tensor) else t for t in items]


CASES = [
    (nn.Linear(8, 5), (_meta(2, 3, 8),), {}),
    (nn.Linear(8, 5), (_meta(8),), {}),
    (nn.LayerNorm(8), (_meta(2, 3, 8),), {}),
    (nn.LayerNorm((3, 8)), (_meta(2, 3, 8),), {}),
    (nn.GroupNorm(2, 4), (_meta(2, 4, 5, 5),), {}),
    *[(nn.MultiheadAttention(8, 2, batch_first=bf), (q, k, k), {"need_weights": nw, "average_attn_weights": avg})
      for bf in (True, False) for nw in (True, False) for avg in (True, False)
      for q, k in [((_meta(2, 5, 8), _meta(2, 7, 8)) if bf else (_meta(5, 2, 8), _meta(7, 2, 8)))]],
    (nn.MultiheadAttention(8, 2), (_meta(5, 8), _meta(7, 8), _meta(7, 8)), {}),  # unbatched
]


@pytest.mark.parametrize("module, args, kwargs", CASES)
def test_meta_shortcut_equals_torch(module: nn.Module, args: tuple, kwargs: dict) -> None:
    module = module.to("meta")
    got = _meta_module_output(module, args, kwargs)
    assert got is not None
    assert _shapes(got) == _shapes(module(*args, **kwargs))


def test_a_wrong_input_is_not_answered_so_it_fails_where_torch_fails() -> None:
    assert _meta_module_output(nn.Linear(8, 5).to("meta"), (_meta(2, 7),), {}) is None
    assert _meta_module_output(nn.LayerNorm(8).to("meta"), (_meta(2, 7),), {}) is None


def test_a_norm_subclass_with_its_own_forward_is_run() -> None:
    class Shifted(nn.LayerNorm):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x)[..., :-1]

    assert _meta_module_output(Shifted(8).to("meta"), (_meta(2, 8),), {}) is None


@pytest.mark.parametrize("module", [
    nn.LSTM(6, 5), nn.LSTM(6, 5, batch_first=True, bidirectional=True, num_layers=2),
    nn.LSTM(6, 5, proj_size=3, batch_first=True), nn.GRU(6, 5, bidirectional=True), nn.RNN(6, 5, num_layers=3),
])
@pytest.mark.parametrize("shape", [(4, 7, 6), (7, 6)])
def test_recurrent_shapes_equal_torch(module: nn.Module, shape: tuple[int, ...]) -> None:
    from dropcheck.analysis.shapes import _rnn_output

    x = torch.randn(*shape)
    want, got = module(x), _rnn_output(module, (x,))

    def flat(v: object) -> list[object]:
        return [s for item in v for s in flat(item)] if isinstance(v, tuple) else [v.shape]

    assert flat(got) == flat(want)
