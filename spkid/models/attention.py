"""Multi-head self-attention variants behind one signature.

Every variant is an ``nn.Module`` built as ``cls(d_model=..., n_heads=..., dropout=..., rope=..., **params)``
and called as ``attn(x, valid)``:

- ``x``: ``(B, T, D)`` input frames.
- ``valid``: ``(B, T)`` bool, True for real frames, False for padding.
- returns ``(B, T, D)``. Outputs at padded positions are unspecified (callers zero them);
  outputs at real positions never depend on padded positions.

The shared part (q/k/v projections, rotary positions, output projection) lives in
``SelfAttention``; a variant only overrides ``_attend``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rotary_tables(t: int, dim: int, device, dtype=torch.float32, base: float = 10000.0):
    """cos/sin tables ``(T, dim)`` for rotary position embedding (any length T)."""
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    pos = torch.arange(t, device=device, dtype=torch.float32)
    ang = torch.outer(pos, inv)                      # (T, dim/2)
    ang = torch.cat([ang, ang], dim=-1)              # (T, dim)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, H, T, Dh)`` by position; cos/sin ``(T, Dh)``."""
    x1, x2 = x.chunk(2, dim=-1)
    rot = torch.cat([-x2, x1], dim=-1)
    return x * cos + rot * sin


class SelfAttention(nn.Module):
    """Full multi-head self-attention with ``F.scaled_dot_product_attention``.

    Args:
        d_model (int): model width D.
        n_heads (int): number of heads H; ``d_model % n_heads == 0``.
        dropout (float): dropout on attention weights (training only).
        rope (bool): rotary position embedding on q and k (relative positions, any length).
    """

    def __init__(self, *, d_model: int, n_heads: int, dropout: float = 0.0, rope: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if rope and (d_model // n_heads) % 2:
            raise ValueError(f"rotary positions need an even head size, got {d_model // n_heads}")
        self.d_model, self.n_heads, self.dropout, self.rope = d_model, n_heads, dropout, rope
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, T, D)``, ``valid`` ``(B, T)`` bool -> ``(B, T, D)``."""
        B, T, D = x.shape
        H = self.n_heads
        q, k, v = self.qkv(x).view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, Dh)
        if self.rope:
            cos, sin = rotary_tables(T, D // H, x.device, q.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = self._attend(q, k, v, valid)                 # (B, H, T, Dh)
        y = y.transpose(1, 2).reshape(B, T, D)           # (B, T, D)
        return self.out(y)

    def _attend(self, q, k, v, valid):
        """q, k, v ``(B, H, T, Dh)``; valid ``(B, T)`` -> ``(B, H, T, Dh)``."""
        mask = valid[:, None, None, :]                   # (B, 1, 1, T): keys a query may see
        p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)


# name -> class; every class takes the keyword arguments of SelfAttention plus its own extras.
ATTENTION: dict[str, type[SelfAttention]] = {"full": SelfAttention}


def build_attention(name: str, *, d_model: int, n_heads: int, dropout: float, rope: bool,
                    params: dict | None = None) -> SelfAttention:
    """Build attention variant ``name`` with variant-specific ``params`` (e.g. ``{"window": 64}``)."""
    from ..errors import ConfigError
    if name not in ATTENTION:
        raise ConfigError(f"unknown attention {name!r}; choose one of {sorted(ATTENTION)}")
    try:
        return ATTENTION[name](d_model=d_model, n_heads=n_heads, dropout=dropout, rope=rope, **(params or {}))
    except TypeError as e:
        raise ConfigError(f"attention {name!r}: bad parameters {params}: {e}") from None
