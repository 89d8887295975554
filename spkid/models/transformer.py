"""Transformer encoder: a stack of self-attention + feed-forward blocks, batch-first ``(B, T, D)``."""
from __future__ import annotations

import torch
from torch import nn

from spkid.models.attention import build_attention
from spkid.models.masking import zero_pad
from spkid.models.registry import ENCODERS


class FeedForward(nn.Module):
    """Position-wise ``Linear -> act -> dropout -> Linear -> dropout``: ``(*, D) -> (*, D)``."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, ffn_dim), act(), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, d_model), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Self-attention and feed-forward sub-layers with residuals, pre-norm or post-norm.

    Args:
        d_model (int), n_heads (int), ffn_dim (int), dropout (float): sizes and dropout rate.
        norm_first (bool): pre-norm (stable for deep stacks) or post-norm (the original / HW4 sample).
        attention (str), attention_params (dict): attention variant (see ``attention.ATTENTION``).
        rope (bool): rotary positions in attention.
    """

    def __init__(self, *, d_model: int, n_heads: int, ffn_dim: int, dropout: float, norm_first: bool,
                 attention: str = "full", attention_params: dict | None = None, rope: bool = True):
        super().__init__()
        self.attn = build_attention(attention, d_model=d_model, n_heads=n_heads, dropout=dropout, rope=rope,
                                    params=attention_params)
        self.ff = FeedForward(d_model, ffn_dim, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``(B, T, D)``, ``valid`` ``(B, T)`` -> ``(B, T, D)``."""
        if self.norm_first:
            x = x + self.drop(self.attn(self.norm1(x), valid))
            x = x + self.ff(self.norm2(x))
        else:
            x = self.norm1(x + self.drop(self.attn(x, valid)))
            x = self.norm2(x + self.ff(x))
        return zero_pad(x, valid)


class TransformerEncoder(nn.Module):
    """``n_layers`` TransformerBlocks (final LayerNorm when pre-norm). ``(B, T, D)`` -> ``(B, T, D)``."""

    def __init__(self, *, d_model: int, n_heads: int, n_layers: int, ffn_dim: int, dropout: float = 0.1,
                 norm_first: bool = True, attention: str = "full", attention_params: dict | None = None,
                 rope: bool = True):
        super().__init__()
        self.out_dim = d_model
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model=d_model, n_heads=n_heads, ffn_dim=ffn_dim, dropout=dropout,
                             norm_first=norm_first, attention=attention, attention_params=attention_params,
                             rope=rope)
            for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(d_model) if norm_first else nn.Identity()

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, T, D)``, ``valid`` ``(B, T)`` bool -> ``(B, T, D)`` (padded frames zero)."""
        for block in self.blocks:
            x = block(x, valid)
        return zero_pad(self.final_norm(x), valid)


@ENCODERS.register("transformer", uses=("n_heads", "ffn_dim", "dropout", "pos_enc", "attention", "attention_params",
                                        "norm_first"))
def _build(m) -> TransformerEncoder:
    return TransformerEncoder(d_model=m.d_model, n_heads=m.n_heads, n_layers=m.n_layers, ffn_dim=m.ffn_dim,
                              dropout=m.dropout, norm_first=m.norm_first, attention=m.attention,
                              attention_params=m.attention_params, rope=m.pos_enc == "rope")
