"""nn.MultiheadAttention is an fx leaf; its attention dropout is followed by its own out_proj.

Models written as people write them, labelled by reading the code:
- attention pooling whose output is the returned embedding: the dropout is on attention weights,
  out_proj follows, so it drops no predictions (no DC003);
- the same pooling with a Linear classifier after it: clean;
- attention output into a BatchNorm1d: the dropout's variance reaches that BatchNorm (DC001).
"""
from __future__ import annotations

import torch
from torch import nn

import dropcheck


class AttentionPoolEmbedding(nn.Module):
    """A learned query attends over a conv feature map; the attended vector is the embedding."""

    def __init__(self, dim: int = 16, classifier: bool = False, bn_after: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU())
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.attn = nn.MultiheadAttention(dim, 2, dropout=0.1, batch_first=True)
        self.norm = nn.BatchNorm1d(dim) if bn_after else nn.Identity()
        self.fc = nn.Linear(dim, 10) if classifier else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x).flatten(2).transpose(1, 2)
        pooled, _ = self.attn(self.query.expand(x.size(0), -1, -1), f, f)
        return self.fc(self.norm(pooled.squeeze(1)))


def _verdicts(model: nn.Module) -> dict[str, str]:
    report = dropcheck.audit(model, torch.randn(2, 3, 8, 8))
    found = {f.dropout: f.rule for f in report.findings}
    return {s.id: found.get(s.id, "ok") for s in report.dropouts}


def test_attention_output_as_embedding_drops_no_predictions() -> None:
    assert _verdicts(AttentionPoolEmbedding()) == {"attn": "ok"}


def test_attention_pooling_before_a_classifier_is_clean() -> None:
    assert _verdicts(AttentionPoolEmbedding(classifier=True)) == {"attn": "ok"}


def test_attention_output_into_batchnorm_is_a_variance_shift() -> None:
    assert _verdicts(AttentionPoolEmbedding(classifier=True, bn_after=True)) == {"attn": "DC001"}


def test_fix_says_per_site_that_it_cannot_rewrite_inside_multihead_attention() -> None:
    model = AttentionPoolEmbedding(classifier=True, bn_after=True)
    result = dropcheck.fix(model, torch.randn(2, 3, 8, 8))
    assert result.changes == [] and not result.ok
    assert len(result.unfixable) == 1 and result.unfixable[0].startswith("attn: the MultiheadAttention attn")
    assert "dropout=0" in result.unfixable[0]
