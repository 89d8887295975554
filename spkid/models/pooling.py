"""Temporal pooling over real frames: ``(B, T, D)`` + ``valid`` ``(B, T)`` -> ``(B, out_dim)``.

Each class takes ``in_dim`` and exposes ``out_dim``, so the network sizes its next layer without knowing which.
"""
from __future__ import annotations

import torch
from torch import nn

from spkid.models.masking import masked_mean
from spkid.models.registry import POOLING


class MeanPool(nn.Module):
    """Masked mean over time. ``out_dim = in_dim``."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``(B, T, D)``, ``(B, T)`` -> ``(B, D)``."""
        return masked_mean(x, valid)


def _attention_weights(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Softmax over real frames only: scores ``(B, T, K)`` -> weights ``(B, T, K)``."""
    scores = scores.float().masked_fill(~valid[..., None], float("-inf"))
    return torch.softmax(scores, dim=1)


class SelfAttentivePool(nn.Module):
    """SAP (Cai et al. 2018): weights ``softmax_t(v^T tanh(W h_t))``; weighted mean. ``out_dim = in_dim``.

    Args:
        in_dim (int): frame width D.
        hidden (int): attention hidden size. (Default: 128)
    """

    def __init__(self, in_dim: int, hidden: int = 128):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``(B, T, D)``, ``(B, T)`` -> ``(B, D)``."""
        w = _attention_weights(self.score(x), valid).to(x.dtype)   # (B, T, 1)
        return (w * x).sum(1)


class AttentiveStatsPool(nn.Module):
    """ASP (Okabe et al. 2018) with per-channel weights and global context (as in ECAPA-TDNN).

    Weighted mean and standard deviation per channel: ``out_dim = 2 * in_dim``.

    Args:
        in_dim (int): frame width D.
        hidden (int): attention hidden size. (Default: 128)
    """

    def __init__(self, in_dim: int, hidden: int = 128):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(3 * in_dim, hidden), nn.Tanh(), nn.Linear(hidden, in_dim))
        self.out_dim = 2 * in_dim

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``(B, T, D)``, ``(B, T)`` -> ``(B, 2D)``."""
        mu = masked_mean(x, valid)                                   # (B, D)
        sd = (masked_mean(x * x, valid) - mu * mu).clamp(min=1e-5).sqrt()
        ctx = torch.cat([x, mu[:, None].expand_as(x), sd[:, None].expand_as(x)], dim=-1)  # (B, T, 3D)
        w = _attention_weights(self.score(ctx), valid).to(x.dtype)  # (B, T, D)
        mean = (w * x).sum(1)
        std = ((w * x * x).sum(1) - mean * mean).clamp(min=1e-5).sqrt()
        return torch.cat([mean, std], dim=-1)


POOLING.register("mean")(MeanPool)
POOLING.register("sap")(SelfAttentivePool)
POOLING.register("asp")(AttentiveStatsPool)
