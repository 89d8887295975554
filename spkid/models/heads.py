"""Classifier heads: one linear layer over the embedding, plain or with an angular margin.

``head(emb (B, E), labels (B,) | None) -> logits (B, N)``. The margin is applied only when labels are given
(training); at inference the logits are the plain (scaled cosine) scores, so ``argmax`` is the prediction.
``head.margin`` can be changed during training (margin warm-up).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spkid.models.registry import HEADS


class SoftmaxHead(nn.Module):
    """Plain linear classifier (cross-entropy, optional label smoothing in the loss)."""

    def __init__(self, embed_dim: int, n_speakers: int):
        super().__init__()
        self.fc = nn.Linear(embed_dim, n_speakers)
        self.margin = 0.0

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, E)`` -> ``(B, N)``."""
        return self.fc(emb)


class CosineMarginHead(nn.Module):
    """AM-softmax (additive cosine margin, Wang et al. 2018) or AAM-softmax (ArcFace, Deng et al. 2019).

    Args:
        embed_dim (int): embedding size E.
        n_speakers (int): classes N.
        margin (float): m; AM: ``s (cos θ - m)``, AAM: ``s cos(θ + m)`` on the target class.
        scale (float): s.
        angular (bool): AAM when True, AM when False.
    """

    def __init__(self, embed_dim: int, n_speakers: int, *, margin: float = 0.2, scale: float = 30.0,
                 angular: bool = False):
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.weight = nn.Parameter(torch.empty(n_speakers, embed_dim))
        nn.init.xavier_uniform_(self.weight)
        self.margin, self.scale, self.angular = margin, scale, angular

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, E)`` -> ``(B, N)`` scaled cosines (margin on the target class when labels are given)."""
        cos = F.linear(F.normalize(emb.float(), dim=-1), F.normalize(self.weight.float(), dim=-1))  # (B, N)
        if labels is None or self.margin == 0:
            return self.scale * cos
        target = cos.gather(1, labels[:, None])                               # (B, 1)
        if self.angular:
            sin = (1 - target * target).clamp(min=1e-7).sqrt()
            m = self.margin
            shifted = target * math.cos(m) - sin * math.sin(m)
            # past θ + m > π, cos(θ + m) would rise again: fall back to the linear penalty cos θ - m sin m
            # (ArcFace's reference code, the branch used when easy_margin is off)
            shifted = torch.where(target > math.cos(math.pi - m), shifted, target - math.sin(math.pi - m) * m)
        else:
            shifted = target - self.margin
        return self.scale * cos.scatter(1, labels[:, None], shifted)


@HEADS.register("softmax")
def _softmax(m, embed_dim: int, n_speakers: int) -> nn.Module:
    return SoftmaxHead(embed_dim, n_speakers)


@HEADS.register("am", uses=("margin", "scale"))
def _am(m, embed_dim: int, n_speakers: int) -> nn.Module:
    return CosineMarginHead(embed_dim, n_speakers, margin=m.margin, scale=m.scale, angular=False)


@HEADS.register("aam", uses=("margin", "scale"))
def _aam(m, embed_dim: int, n_speakers: int) -> nn.Module:
    return CosineMarginHead(embed_dim, n_speakers, margin=m.margin, scale=m.scale, angular=True)
