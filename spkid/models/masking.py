"""Helpers that turn ``lengths`` into masks and keep padded frames out of every computation."""
from __future__ import annotations

import torch


def valid_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """``lengths`` ``(B,)`` -> ``(B, T)`` bool, True on real frames."""
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


def zero_pad(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Zero the padded frames of ``x`` ``(B, T, D)`` so convolutions see the same zeros as for a lone utterance."""
    return x * valid[..., None].to(x.dtype)


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over real frames: ``(B, T, D)`` -> ``(B, D)``."""
    w = valid[..., None].to(x.dtype)
    return (x * w).sum(1) / w.sum(1).clamp(min=1)
