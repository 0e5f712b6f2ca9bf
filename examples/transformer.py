"""A tiny Vision Transformer: dropout in a network with no BatchNorm at all.

Patch embedding (8x8 patches, dim 64), class token and position embedding, two pre-LayerNorm
blocks, final LayerNorm, class token, `head_drop`, Linear `head`. Attention is written by
hand with `F.scaled_dot_product_attention(..., dropout_p=self.attn_p if self.training else
0.0)`, so attention dropout is off in eval mode.

Dropout modules (p = `p`): `blocks.<i>.proj_drop` (after the attention projection),
`blocks.<i>.drop1` (after GELU, before fc2), `blocks.<i>.drop2` (after fc2), `head_drop`
(class token, before the head); plus each block's attention dropout (`attn_p`).

Expected verdicts, for all parameter values:

    DC001  never: there is no BatchNorm, so no dropout can disturb BN statistics
           (the report says that DC001 does not apply)
    DC006  never: the attention dropout is gated on self.training
    DC002  not on head_drop: selecting the class token is not global average pooling
    DC003  not on head_drop: the Linear head lies between it and the output
    DC007  never: every dropout module is called

In a model with no BatchNorm at all every site is `other`: the BatchNorm rules (DC001,
DC004 repeated dropout in a branch, DC005 post-weight dropout) do not apply, since
Guideline 1 is about BatchNorm's running statistics. The audit lists every site, says
that the model has no BatchNorm, and reports no finding.

Audit it:

    dropcheck audit examples/transformer.py
    dropcheck audit examples/transformer.py -a p=0.0 -a attn_p=0.0
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _check_p(name: str, p: float) -> float:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p!r}")
    return float(p)


class _Block(nn.Module):
    """Pre-LN transformer block: x + proj(attn(LN(x))), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, p: float, attn_p: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.attn_p = _check_p("attn_p", attn_p)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(_check_p("p", p))
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(p)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.drop2 = nn.Dropout(p)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        # (B, N, 3*dim) -> 3 x (B, heads, N, head_dim) with constant-only reshapes (fx-safe).
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        # Gated on training: this attention dropout is off in eval (no DC006).
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_p if self.training else 0.0)
        return out.transpose(1, 2).flatten(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.proj_drop(self.proj(self._attention(self.norm1(x))))
        h = self.drop1(self.act(self.fc1(self.norm2(x))))
        return x + self.drop2(self.fc2(h))


class TinyViT(nn.Module):
    """ViT for 32x32 inputs: 16 patches + class token, 2 blocks, dim 64."""

    input_shape = (2, 3, 32, 32)

    def __init__(self, p: float = 0.1, attn_p: float = 0.1, dim: int = 64, depth: int = 2,
                 heads: int = 4, patch: int = 8, img_size: int = 32,
                 num_classes: int = 10) -> None:
        super().__init__()
        if img_size % patch:
            raise ValueError(f"img_size {img_size} must be divisible by patch {patch}")
        n_patches = (img_size // patch) ** 2
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n_patches + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[_Block(dim, heads, p, attn_p) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head_drop = nn.Dropout(_check_p("p", p))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(self.head_drop(x[:, 0]))
