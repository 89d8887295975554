"""Conformer encoder (Gulati et al. 2020): half FFN, self-attention, convolution module, half FFN, LayerNorm.

Batch-first ``(B, T, D)`` with a ``valid`` ``(B, T)`` mask. Padded frames never reach real ones: attention masks
them, the depthwise convolution sees them zeroed (exactly what a lone utterance sees past its end), and the
convolution module normalises with LayerNorm per frame instead of BatchNorm, whose batch statistics would mix
padding and other utterances into every frame.
"""
from __future__ import annotations

import torch
from torch import nn

from spkid.models.attention import build_attention
from spkid.models.masking import zero_pad
from spkid.models.registry import ENCODERS
from spkid.models.transformer import FeedForward


class ConvModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv, LayerNorm, SiLU, pointwise conv. ``(B, T, D)`` -> ``(B, T, D)``.

    Args:
        d_model (int): width D.
        kernel (int): depthwise kernel size, odd (for "same" padding).
        dropout (float): dropout on the output.
    """

    def __init__(self, d_model: int, kernel: int, dropout: float):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"conv kernel must be odd for same padding, got {kernel}")
        self.norm = nn.LayerNorm(d_model)
        self.pw1 = nn.Linear(d_model, 2 * d_model)
        self.dw = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        self.dw_norm = nn.LayerNorm(d_model)
        self.act = nn.SiLU()
        self.pw2 = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = nn.functional.glu(self.pw1(self.norm(x)), dim=-1)     # (B, T, D)
        x = zero_pad(x, valid).transpose(1, 2)                     # (B, D, T) for Conv1d
        x = self.dw(x).transpose(1, 2)                             # (B, T, D)
        x = self.pw2(self.act(self.dw_norm(x)))
        return self.drop(x)


class ConformerBlock(nn.Module):
    """One Conformer block (macaron FFNs as half steps). ``(B, T, D)`` -> ``(B, T, D)``.

    Args:
        d_model (int), n_heads (int), ffn_dim (int), conv_kernel (int), dropout (float): sizes and dropout.
        attention (str), attention_params (dict): attention variant (see ``attention.ATTENTION``).
        rope (bool): rotary positions in attention.
    """

    def __init__(self, *, d_model: int, n_heads: int, ffn_dim: int, conv_kernel: int, dropout: float,
                 attention: str = "full", attention_params: dict | None = None, rope: bool = True):
        super().__init__()
        self.ff1 = nn.Sequential(nn.LayerNorm(d_model), FeedForward(d_model, ffn_dim, dropout, nn.SiLU))
        self.attn_norm = nn.LayerNorm(d_model)
        self.attn = build_attention(attention, d_model=d_model, n_heads=n_heads, dropout=dropout, rope=rope,
                                    params=attention_params)
        self.attn_drop = nn.Dropout(dropout)
        self.conv = ConvModule(d_model, conv_kernel, dropout)
        self.ff2 = nn.Sequential(nn.LayerNorm(d_model), FeedForward(d_model, ffn_dim, dropout, nn.SiLU))
        self.final_norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ff1(x)
        x = x + self.attn_drop(self.attn(self.attn_norm(x), valid))
        x = x + self.conv(x, valid)
        x = x + 0.5 * self.ff2(x)
        return zero_pad(self.final_norm(x), valid)


class ConformerEncoder(nn.Module):
    """``n_layers`` ConformerBlocks. ``x`` ``(B, T, D)``, ``valid`` ``(B, T)`` -> ``(B, T, D)`` (padding zero)."""

    def __init__(self, *, d_model: int, n_heads: int, n_layers: int, ffn_dim: int, conv_kernel: int = 15,
                 dropout: float = 0.1, attention: str = "full", attention_params: dict | None = None,
                 rope: bool = True):
        super().__init__()
        self.out_dim = d_model
        self.blocks = nn.ModuleList(
            ConformerBlock(d_model=d_model, n_heads=n_heads, ffn_dim=ffn_dim, conv_kernel=conv_kernel,
                           dropout=dropout, attention=attention, attention_params=attention_params, rope=rope)
            for _ in range(n_layers))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = zero_pad(x, valid)
        for block in self.blocks:
            x = block(x, valid)
        return x


@ENCODERS.register("conformer", uses=("n_heads", "ffn_dim", "dropout", "pos_enc", "attention", "attention_params",
                                      "conv_kernel"))
def _build(m) -> ConformerEncoder:
    return ConformerEncoder(d_model=m.d_model, n_heads=m.n_heads, n_layers=m.n_layers, ffn_dim=m.ffn_dim,
                            conv_kernel=m.conv_kernel, dropout=m.dropout, attention=m.attention,
                            attention_params=m.attention_params, rope=m.pos_enc == "rope")
